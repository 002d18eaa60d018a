"""glibc malloc settings for processes that load big records over ZEO.

Why
---
ZEO's client thread receives every record into new buffers: the socket
chunks, the message they are joined into, the record unpickled from it -
about three allocations of a block's size per 2 MiB block.  glibc sizes
such allocations by a threshold it adjusts as the program runs, and gives
free memory at the top of a heap back to the kernel (trims it) once more
than twice that threshold is free.  How those two interact depends on the
order in which threads allocate and free, and in a scan - where the pager
copies each record into its page while the next ones arrive - most of that
memory went back to the kernel block after block and was faulted in afresh
for the next one, many times more minor page faults on the ZEO client thread
than a loop that only loads the same records.

With allocations of up to 4 MiB served from the heap
(``M_MMAP_THRESHOLD``) and up to 16 MiB of free heap kept per arena before
trimming (``M_TRIM_THRESHOLD``) those faults are gone, at the price of a few
MiB of resident memory (the measured figures are in ``docs/scale-out.md``).

The price grows with the threads, though: glibc gives each thread that
allocates an arena of its own (up to 8 per core), and each keeps up to
``TRIM_THRESHOLD`` free.  In benchmarks/soak.py (4 threads over ZEO and
ZEO's own) the resident memory beside the pager's budget grew to about
80 MiB over 30 minutes.  So a tuned process also gives its free heap memory
back at transaction boundaries (``trim()``: ``malloc_trim(0)``, at most once
per ``TRIM_INTERVAL`` seconds): a scan inside one transaction keeps its
pages, and what stays resident between transactions is what is in use.

What
----
``tune()`` sets those two values with ``mallopt``, once per process.
``dbopen('zeo://...')`` calls it, and calls ``trim()`` when a transaction
begins on the storage (ZODB syncs it) and when a commit or abort of it ends.  It does nothing - and says so by
returning False - when the C library is not glibc, when the user chose
(``$WENDELIN_CY_MALLOC=default``), or when the process already has settings
of its own (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or malloc tunables in
``GLIBC_TUNABLES``): those are kept.  The cost is bounded: at most
``TRIM_THRESHOLD`` bytes of freed memory stay resident per malloc arena.
"""

import os

import time

__all__ = ['tune', 'trim', 'MMAP_THRESHOLD', 'TRIM_THRESHOLD', 'TRIM_INTERVAL', 'ENV']

MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20
TRIM_INTERVAL = 1.0             # seconds: at most one trim() this often
ARENA_MAX = 1                   # every thread allocates from the main arena
ENV = 'WENDELIN_CY_MALLOC'

_M_TRIM_THRESHOLD = -1          # <malloc.h>
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_USER_ENV = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_',
             'MALLOC_MMAP_MAX_', 'MALLOC_ARENA_MAX')
_USER_TUNABLES = ('glibc.malloc.mmap_threshold', 'glibc.malloc.trim_threshold',
                  'glibc.malloc.top_pad', 'glibc.malloc.mmap_max', 'glibc.malloc.arena_max')

_applied = None                 # the result of the first call
_malloc_trim = None             # libc's, once tune() applied
_last_trim = 0.0


def _why_not():
    """None if tune() may set the values, else why not."""
    choice = os.environ.get(ENV, '').strip().lower()
    if choice in ('default', '0', 'off', 'no'):
        return '$%s=%s' % (ENV, choice)
    for name in _USER_ENV:
        if name in os.environ:
            return '$%s is set' % name
    tunables = os.environ.get('GLIBC_TUNABLES', '')
    for name in _USER_TUNABLES:
        if name in tunables:
            return '%s is set in $GLIBC_TUNABLES' % name
    import platform
    if platform.libc_ver()[0] != 'glibc':
        return 'the C library is not glibc'
    return None


def tune(mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD, arena_max=ARENA_MAX):
    """Set glibc's mmap and trim thresholds for this process (see the module
    docstring), the first time it is called.  True if they were set."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if _why_not() is None:
        import ctypes
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
        _applied = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
                        and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
                        and (arena_max is None or mallopt(_M_ARENA_MAX, int(arena_max))))
        if _applied:
            global _malloc_trim
            try:
                _malloc_trim = ctypes.CDLL(None).malloc_trim
                _malloc_trim.argtypes = (ctypes.c_size_t,)
                _malloc_trim.restype = ctypes.c_int
            except AttributeError:
                pass
    return _applied


def trim():
    """Give the free memory of every malloc arena back to the kernel, if
    tune() set the thresholds and the last trim is TRIM_INTERVAL seconds ago
    or more (cheap otherwise: a time check).  True if it trimmed."""
    global _last_trim
    if _malloc_trim is None:
        return False
    now = time.monotonic()
    if now - _last_trim < TRIM_INTERVAL:
        return False
    _last_trim = now
    _malloc_trim(0)     # (the GIL is released: ctypes)
    return True
