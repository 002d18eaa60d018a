"""ZEO's ClientStorage: prefetch through the connection, and payloads read
from the client cache file straight into the page.

The only user of ZEO's ``ClientCache`` internals (``_cache``, its ``_lock``,
``current``, ``noncurrent``, ``f``, ``maxsize`` and the layout of its
records) and of ClientStorage's ``_addr`` / ``_storage`` (for a URI).

Why prefetch
------------
A page fault loads one block and waits for it: over a network that is one
round trip per block, in series.  When faults walk the file in order the
pager calls ``prefetch`` (readahead): ``Connection.prefetch(oids)`` hands
the oids to ZEO at the connection's own snapshot, ZEO sends one
``loadBefore(oid, tid)`` per oid without waiting, and when the fault loads
the same (oid, tid) it finds the answer in ZEO's client cache or joins the
request still in flight: no second round trip, never data of another
snapshot.  (RelStorage's ``prefetch`` is one synchronous query into a local
cache that keeps no object bigger than ``cache_local_object_max``: not used;
local storages have no round trip to hide.)

How many: what ZEO prefetches lands in its client cache, 20 MB by default
(``cache_size``).  Blocks asked for beyond what the cache holds push out the
ones asked for before they are used, and those are then loaded twice.
``max_ahead`` is half the cache, at least 1.

Reading from the cache file: ClientStorage.loadBefore would read a record
into a bytes object, which loadblk then copies into the page; for a ZBlk0 we
read its payload from the cache file straight into the page.  We follow
ZEO's own ClientCache.loadBefore for the case it serves from the current
record: under the cache's lock (so that its thread cannot reuse that part of
the file meanwhile), the oid's current record, if it was written before the
connection's snapshot and the oid has no non-current records cached.
Anything else (a miss, a newer record, another layout) takes the generic
path, which loads from the server.

Backpressure on stores
----------------------
ClientStorage.store does not send: it hands the record to its IO thread
(``loop.call_soon_threadsafe``) and returns, and that thread writes it to
the socket or, when the socket's buffer is full, appends the encoded
message to a deque that nothing bounds.  A server slower than the client
(it writes every record to its commit log, then copies it into its
FileStorage at vote) lets the records of a whole transaction pile up in the
client: with 2 MiB blocks committed every GiB, hundreds of MiB over the RAM
budget (issue 18).  So ``backpressure`` counts the bytes of the block
records made in a commit and, every ``store_window(budget)`` bytes, makes
one synchronous round trip, ``ClientStorage.ping()``: its answer comes after
the server has read every message queued before it, so no more than about
a window is ever waiting in the client.  The window is 1/16 of the budget,
8 to 32 MiB; a round trip per window is a small price over a socket.  (No
ping, another ZEO: one warning on the wendelin_cy.storage logger, and no
backpressure.)
"""

import os
import threading
import weakref

from . import mvcc
from .checksum import checks_on, digest
from .record import HEAD_PEEK, preadinto, record_payload
from .switch import shape_mismatch

__all__ = ['ZEOBackend', 'storage_prefetches', 'max_ahead', 'uri', 'backpressure',
           'store_window']

MiB = 1 << 20

# a record in ZEO's cache file (ZEO/cache.py):
#   'a', 4-byte size, oid (8), start tid (8), end tid (8: zeros if current),
#   2-byte version length (0), 4-byte data length, data
_REC_MAGIC = b'a'
_REC_OID = slice(5, 13)
_REC_START = slice(13, 21)
_REC_END = slice(21, 29)
_REC_VLEN = slice(29, 31)
_REC_DLEN = slice(31, 35)
_REC_HDR = 35
_NO_TID = b'\0' * 8

direct_reads = 0        # blocks read from the cache file this way (for tests)


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


def store_window(budget):
    """Bytes of block records a commit may have sent a ZEO server before it
    waits for the server to take them, for the pager's RAM budget `budget`."""
    return min(32 * MiB, max(8 * MiB, int(budget) // 16))


_unacked = weakref.WeakKeyDictionary()   # ClientStorage -> bytes since its last ping
_unacked_lock = threading.Lock()
round_trips = 0         # pings made by backpressure (for tests)


def backpressure(storage, nbytes, budget):
    """A commit is about to make a block record of `nbytes` bytes and store
    it in (base) storage `storage`: if that is a ZEO ClientStorage and a
    window of records was sent since the last round trip, wait until the
    server has read them."""
    global round_trips
    if type(nbytes) is not int or nbytes < 0:
        raise ValueError('backpressure: nbytes must be an int >= 0, not %r' % (nbytes,))
    if not storage_prefetches(storage):
        return
    with _unacked_lock:
        sent = _unacked.get(storage, 0)
        if sent < store_window(budget):
            _unacked[storage] = sent + nbytes
            return
        _unacked[storage] = nbytes
    ping = getattr(storage, 'ping', None)
    if not callable(ping):
        shape_mismatch('ZEO store backpressure', 'ClientStorage has no ping()')
        return
    try:
        ping()
        round_trips += 1
    except Exception:
        pass        # (disconnected: the store itself reports it)


class ZEOBackend(mvcc.Records):
    kind = 'ZEO'

    def serves(self, storage):
        return storage_prefetches(storage)

    def check_shape(self, storage):
        cache = getattr(storage, '_cache', None)
        if type(cache).__module__ != 'ZEO.cache':
            return 'ClientStorage._cache is a %s, not a ZEO.cache.ClientCache' % (
                type(cache).__name__,)
        missing = [a for a in ('_lock', 'current', 'noncurrent', 'f', 'maxsize')
                   if not hasattr(cache, a)]
        if missing:
            return 'ZEO ClientCache has no %s' % ', '.join(missing)
        return None

    def readinto(self, obj, buf):
        """Read ghost ZBlk0 `obj`'s payload at its connection's snapshot from
        the client cache into buf (zeros after it)."""
        global direct_reads
        jar = obj._p_jar
        start = mvcc.snapshot(jar)
        if start is None:
            return None
        cache = jar.db().storage._cache
        oid = obj._p_oid
        try:
            with cache._lock:
                if cache.noncurrent.get(int.from_bytes(oid, 'big')) is not None:
                    return None
                ofs = cache.current.get(oid)
                f = cache.f
                if ofs is None or f is None:
                    return None
                f.flush()
                fd = f.fileno()
                h = os.pread(fd, _REC_HDR + HEAD_PEEK, ofs)     # header, payload's head
                if (len(h) < _REC_HDR or h[:1] != _REC_MAGIC or h[_REC_OID] != oid
                        or h[_REC_END] != _NO_TID):
                    return None
                if h[_REC_START] >= start or h[_REC_VLEN] != b'\0\0':
                    return None
                ldata = int.from_bytes(h[_REC_DLEN], 'big')
                span = record_payload(fd, ofs + _REC_HDR, ldata, h[_REC_HDR:_REC_HDR + ldata])
                if span is None or span[1] > len(buf) or not preadinto(fd, buf, *span[:2]):
                    return None
            if span[2] is not None and checks_on(jar.db().storage):
                with memoryview(buf) as v:
                    if digest(v[:span[1]]) != span[2]:
                        return None     # the object's load reports it
            direct_reads += 1
            return span[1]
        except Exception:
            return None         # the generic path will load (or report) it

    def prefetch(self, conn, oids):
        if getattr(conn.db().storage, 'is_connected', lambda: True)():
            conn.prefetch(oids)     # (no tasks for a dead server)
        return []

    def max_ahead(self, storage, blksize):
        return max_ahead(storage, blksize)


def uri(storage):
    """A zeo:// URI of ClientStorage `storage`, or None."""
    cls = type(storage)
    if not (cls.__module__.startswith('ZEO.') and cls.__name__ == 'ClientStorage'):
        return None
    addr = getattr(storage, '_addr', None)
    name = getattr(storage, '_storage', '1')
    if isinstance(addr, list) and len(addr) == 1:
        addr = addr[0]
    if isinstance(addr, tuple) and len(addr) == 2:
        return 'zeo://%s:%d?storage=%s' % (addr[0], addr[1], name)
    if isinstance(addr, str):
        return 'zeo://%s?storage=%s' % (addr, name)
    return None
