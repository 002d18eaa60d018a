"""What a load does when the storage server goes away.

A block is loaded inside a page fault, where an exception cannot reach the
code that touched the memory.  The pager therefore retries the exceptions in
``wendelin_cy._pager.virtmem.TRANSIENT_ERRORS`` (``LOAD_RETRIES`` more times,
backing off from ``LOAD_RETRY_DELAY``), and if the load still fails, prints
which block of which file could not be loaded and why, and ends the process
with SIGBUS - as the kernel does for an I/O error under mmap.  At the
package's own entry points (``VMA.prefault``, and through it BigArray
assignment, append, ``tofile``...) the exception is raised to the caller
instead, at once.

ZEO reports a lost server with ``ZEO.Exceptions.ClientDisconnected``, which is
not a ``ConnectionError``: ``register_zeo()`` adds it to the pager's
transient errors (idempotent).  Each attempt waits up to the client's
``wait_timeout`` for the server to come back (ZEO reconnects by itself), so a
load inside a fault gives up after at most about::

    (LOAD_RETRIES + 1) * wait_timeout + LOAD_RETRY_DELAY * (1 + B + B**2)

seconds, B = ``LOAD_RETRY_BACKOFF`` (4 * wait_timeout + 1.05 s with the
defaults: 3 retries, 0.05 s, B = 4), and a load at an entry
point after ``wait_timeout``.  A server back within that time lets the scan
go on: the data of a snapshot does not change, so a retried load returns the
same bytes.

``storage_timeout()`` reads ``$WENDELIN_CY_STORAGE_TIMEOUT`` (seconds), the
default ``wait_timeout`` of ``dbopen('zeo://...')`` when the URI gives none.
``dbopen('zeo://...')`` calls ``register_zeo()``; call it yourself in a
process that opens ``ClientStorage`` by hand and scans over it.
"""

import os

__all__ = ['register_zeo', 'storage_timeout', 'STORAGE_TIMEOUT_ENV',
           'fault_wait_bound']

STORAGE_TIMEOUT_ENV = 'WENDELIN_CY_STORAGE_TIMEOUT'
DEFAULT_TIMEOUT = 30.0


def storage_timeout(default=DEFAULT_TIMEOUT):
    """Seconds to wait for a storage server that is not there, from
    $WENDELIN_CY_STORAGE_TIMEOUT (or `default`)."""
    v = os.environ.get(STORAGE_TIMEOUT_ENV, '')
    if not v:
        return default
    try:
        t = float(v)
    except ValueError:
        raise ValueError('$%s: expected seconds, got %r'
                         % (STORAGE_TIMEOUT_ENV, v)) from None
    if not t > 0:
        raise ValueError('$%s: must be > 0, got %r' % (STORAGE_TIMEOUT_ENV, v))
    return t


def register_zeo():
    """Make the pager retry ZEO's ClientDisconnected inside page faults.
    Returns False if ZEO is not installed."""
    try:
        from ZEO.Exceptions import ClientDisconnected
    except ImportError:
        return False
    from wendelin_cy._pager import virtmem
    if not issubclass(ClientDisconnected, virtmem.TRANSIENT_ERRORS):
        virtmem.TRANSIENT_ERRORS = virtmem.TRANSIENT_ERRORS + (ClientDisconnected,)
    return True


def fault_wait_bound(wait_timeout):
    """Upper bound (s) of the time a load inside a page fault spends waiting
    for a server that does not come back (before the process gets SIGBUS)."""
    from wendelin_cy._pager import virtmem
    n = virtmem.LOAD_RETRIES
    d = virtmem.LOAD_RETRY_DELAY
    b = virtmem.LOAD_RETRY_BACKOFF
    return (n + 1) * wait_timeout + sum(d * b ** i for i in range(n))
