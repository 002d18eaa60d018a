"""Prefetch of the blocks ahead of a sequential scan, for network storages.

Why
---
A page fault loads one block, and ``loadblk`` asks the storage for its object
and waits for it: over a network that is one round trip per block, in series.
With 2 MiB blocks and a round trip of r seconds, a scan cannot go faster than
2 MiB / (r + transfer time), however fast the link.  When the faults walk
the file in order, the blocks that come next are known: we ask the storage
for them before they are needed, so that the round trips overlap each other
and the work of the process.

How
---
ZODB has the call for it: ``Connection.prefetch(oids)`` hands the oids to the
storage, at the connection's own snapshot (the MVCC adapter passes its start
tid).  ZEO's ClientStorage sends one ``loadBefore(oid, tid)`` per oid without
waiting (asynchronously, on its I/O thread); when ``loadblk`` then loads the
same (oid, tid), it finds the answer in the client cache, or joins the
request still in flight (ZEO collapses equal outstanding loads): no second
round trip, and never data of another snapshot.

The window is small (``WINDOW`` blocks, by default 4 = 8 MiB ahead) because
what is prefetched lands in ZEO's client cache, whose default size is 20 MB:
a window larger than the cache would push out blocks before we use them.

Only storages for which prefetch is asynchronous are asked (ZEO).  RelStorage
implements ``prefetch`` as one synchronous query whose results go to its local
cache, which does not keep objects bigger than ``cache_local_object_max``
(16 KiB by default): for 2 MiB blocks it would read everything twice.  Local
storages (FileStorage) have no round trip to hide.

Use (from ``_ZBigFileIO``)::

    self._prefetch = Prefetcher()               # in __init__
    self._prefetch.loading(self._zfile, blk)    # first thing in loadblk

Sequential means: the block loaded just before was blk - 1 (per file).  The
first window is asked for at the second block of a run; then, whenever the
blocks already asked for ahead fall below half a window, the next half.
Random access asks for nothing.  ``ZBlk1`` blocks get their own record
prefetched (their chunks are only known once it is loaded).

``$WENDELIN_CY_PREFETCH`` sets the window in blocks (0 turns prefetch off).
"""

import os

__all__ = ['Prefetcher', 'WINDOW', 'PREFETCH_ENV', 'storage_prefetches']

PREFETCH_ENV = 'WENDELIN_CY_PREFETCH'
WINDOW = 4


def _env_window():
    v = os.environ.get(PREFETCH_ENV, '')
    if not v:
        return WINDOW
    try:
        n = int(v)
    except ValueError:
        raise ValueError('$%s: expected a number of blocks, got %r'
                         % (PREFETCH_ENV, v)) from None
    return max(0, n)


def storage_prefetches(storage):
    """Does prefetch on this (base, not per-connection) storage overlap
    round trips?  True for ZEO's ClientStorage."""
    mod = type(storage).__module__ or ''
    return mod.startswith('ZEO.') and hasattr(storage, 'prefetch')


class Prefetcher:
    """Per-file state of the sequential-scan detector."""

    __slots__ = ('window', 'last', 'ahead', '_on', '_jar', 'asked')

    def __init__(self, window=None):
        self.window = _env_window() if window is None else max(0, int(window))
        self.last = -2          # block loaded last
        self.ahead = -1         # last block asked for
        self._on = None         # does the connection's storage benefit?
        self._jar = None        # ... (decided once per connection)
        self.asked = 0          # oids handed to prefetch (for tests, stats)

    def loading(self, zfile, blk):
        """loadblk(blk) is about to load: if this continues a sequential run,
        ask the storage for the blocks that come next.  Never raises: a failed
        prefetch only costs the round trips it was to save."""
        w = self.window
        seq = blk == self.last + 1
        self.last = blk
        if w <= 0:
            return
        if not seq:
            self.ahead = blk
            return
        if self.ahead - blk >= (w + 1) // 2:
            return                      # enough is on its way
        jar = zfile._p_jar
        if jar is None:
            return
        if jar is not self._jar:
            self._jar = jar
            try:
                self._on = storage_prefetches(jar.db().storage)
            except Exception:
                self._on = False
        if not self._on:
            return
        lo = max(self.ahead + 1, blk + 1)
        hi = blk + w
        self.ahead = hi
        if lo > hi:
            return
        try:
            oids = [z._p_oid for z in zfile.blktab.values(lo, hi)
                    if z is not None and z._p_oid is not None]
            if oids:
                jar.prefetch(oids)
                self.asked += len(oids)
        except Exception:
            pass
