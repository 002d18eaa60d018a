"""Which storages to ask for the blocks ahead of a sequential scan, and how
many at a time.

Why
---
A page fault loads one block, and ``loadblk`` asks the storage for its object
and waits for it: over a network that is one round trip per block, in series.
With 2 MiB blocks and a round trip of r seconds a scan cannot go faster than
2 MiB / (r + transfer time), however fast the link.  When faults walk the
file in order the pager calls ``_ZBigFileIO.prefetch(blk, n)`` (readahead),
and the blocks that come next are asked for before they are needed, so that
their round trips overlap each other and the work of the process.

How, per storage
----------------
ZODB has the call: ``Connection.prefetch(oids)`` hands the oids to the
storage at the connection's own snapshot (the MVCC adapter passes its start
tid).  ZEO's ClientStorage then sends one ``loadBefore(oid, tid)`` per oid
without waiting; when ``loadblk`` loads the same (oid, tid) it finds the
answer in ZEO's client cache or joins the request still in flight (ZEO
collapses equal outstanding loads): no second round trip, never data of
another snapshot.  ``storage_prefetches(storage)`` says yes for ZEO only.

RelStorage implements ``prefetch`` as one synchronous query whose results go
to its local cache, which keeps no object bigger than
``cache_local_object_max`` (16 KiB by default): for 2 MiB blocks that would
read everything twice.  Local storages (FileStorage) have no round trip to
hide (file_zodb reads their records ahead in a thread instead).

How many
--------
What ZEO prefetches lands in its client cache, 20 MB by default
(``cache_size``).  Blocks asked for beyond what the cache holds push out the
ones asked for before they are used, and those are then loaded twice.
``max_ahead(storage, blksize)`` is how many blocks may be on their way at
once: half the cache, at least 1; unlimited (None) for other storages.
"""

__all__ = ['storage_prefetches', 'max_ahead']


def storage_prefetches(storage):
    """Does prefetch on this (base, not per-connection) storage overlap
    round trips?  True for ZEO's ClientStorage."""
    mod = type(storage).__module__ or ''
    return mod.startswith('ZEO.') and hasattr(storage, 'prefetch')


def max_ahead(storage, blksize):
    """How many blocks of `blksize` bytes may be prefetched at once from
    `storage` without the first being pushed out of its cache before use
    (None: no limit known)."""
    if not storage_prefetches(storage):
        return None
    cache = getattr(storage, '_cache', None)
    size = getattr(cache, 'maxsize', None)
    if not size:
        return None
    return max(1, int(size // 2 // (blksize + 64)))
