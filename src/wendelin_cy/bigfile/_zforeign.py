"""Loads of a ZBigFile's blocks in threads other than its connection's owner.

A page fault happens in whichever thread touches the memory: a dask worker,
a thread of a ``ThreadPoolExecutor``, a BLAS or OpenMP thread, a thread
started from C.  A ZODB connection and its objects belong to one thread at a
time, so such a load must not go through the handle's connection (its
object cache would be used from two threads at once).  Instead:

* **Reads at the same snapshot, through a reader of the thread's own.**
  Each thread that loads gets, per database, a historical connection
  ``db.open(before=S)`` at the tid S the owner's snapshot is before
  (``storage.snapshot_before``), and loads the block through it: its
  ``ZBigFile``, ``blktab`` and ZBlk objects are that connection's, at the
  same snapshot, with the storage fast paths of the owner's loads.  When
  the owner moves to a new snapshot the thread's reader follows at its next
  load.  Loads of different threads run in parallel: the pager's lock is
  not held across loadblk.

* **The owner watches what others loaded.**  A block loaded by another
  thread is recorded as (ZBlk oid, S).  At its next transaction boundary
  the owner checks each against its new snapshot (the block's ZBlk in its
  own ``blktab``, and whether that record changed since S, from the
  record's header where the storage allows) and drops the pages that
  changed; from then on it watches the block as if it had loaded it.  A load
  that finds the owner's snapshot moved while it ran loads again.

* **Blocks written out and not committed yet** (after an explicit
  ``dirty_writeout``) are read from the owner's changed objects, which are
  in RAM (ZODB never turns a changed object into a ghost); blocks of a
  ZBigFile not yet in the database are holes unless written out.

Limits: the thread's reader is a historical connection, so the storage must
support ``db.open(before=...)`` (every ZODB 5 storage does); a block written
out by an explicit ``dirty_writeout``, then put in a savepoint of the same
transaction and then dropped from RAM cannot be loaded by another thread
until that transaction ends (it raises, and the access gets SIGBUS, as for
an I/O error).
"""

import threading
import weakref

import transaction

from wendelin_cy.errors import LoadError
from wendelin_cy.storage import changed_since, open_before, snapshot_before

__all__ = ['load_foreign', 'check_foreign', 'close_readers']

RETRIES = 8             # loads again while the owner's snapshot keeps moving

_local = threading.local()
# every reader connection, per database (for close_readers)
_READERS = weakref.WeakKeyDictionary()      # DB -> WeakSet(Connection)
_readers_lock = threading.Lock()


def _reader(db, before):
    """This thread's historical connection to `db` at `before`."""
    readers = getattr(_local, 'readers', None)
    if readers is None:
        readers = _local.readers = {}
    entry = readers.get(id(db))
    if entry is not None:
        dbref, at, conn = entry
        if dbref() is db and at == before and conn.opened:
            return conn
        readers.pop(id(db), None)
        if conn.opened:
            conn.close()                        # (back to the pool)
    with _readers_lock:
        live = _READERS.setdefault(db, weakref.WeakSet())
        n = len([c for c in live if c.opened]) + 2
        if db.getHistoricalPoolSize() < n:
            # one reader per loading thread: no pool-size warnings from ZODB
            db.setHistoricalPoolSize(n)
        # its own transaction manager: the thread's transactions are not ours
        conn = open_before(db, before, transaction.TransactionManager())
        live.add(conn)
    readers[id(db)] = (weakref.ref(db), before, conn)
    return conn


def close_readers(db):
    """Close the reader connections of every thread to `db` (dbclose)."""
    with _readers_lock:
        conns = list(_READERS.pop(db, ()))
    for c in conns:
        try:
            if c.opened:
                c.close()
        except Exception:
            pass


def load_foreign(io, blk, buf, load_obj):
    """loadblk of `io` (a _ZBigFileIO) in a thread that is not its owner.
    `load_obj(zblk, buf)` fills buf from a ZBlk (or returns HOLE/MapFile)."""
    zfile = io._zfile
    latest = None
    unc = io._unc.get(blk, _NONE)
    if unc is not _NONE:
        if unc is None or unc._p_changed:
            return load_obj(unc, buf)           # in RAM: changed, never a ghost
        if io._unc_open:
            raise LoadError(
                '%r: block %d was written out in a transaction still open, put in '
                'a savepoint and dropped from RAM: it can be loaded only in the '
                'thread of its connection until the transaction ends' % (zfile, blk))
        # committed by the owner, its snapshot not moved yet: read at that commit
        # (the object's serial; the DB's last tid may lag, as RelStorage's does)
        latest = unc._p_serial
    conn = zfile._p_jar
    oid = zfile._p_oid
    if conn is None or oid is None:
        # not in a database: every object is new, in RAM (never a ghost)
        return load_obj(zfile.blktab.get(blk), buf)
    for _ in range(RETRIES):
        if not getattr(conn, 'opened', None):
            raise LoadError('%r: its connection is closed' % (zfile,))
        before = snapshot_before(conn)
        if before is None:
            raise LoadError(
                '%r: the snapshot of its connection cannot be told, so block %d '
                'cannot be loaded from another thread' % (zfile, blk))
        at = before
        serial = zfile._p_serial
        if serial == _Z64:
            z = None                            # new in this transaction
        else:
            if latest is not None or serial >= before:  # the owner committed since
                at = _next(max(conn.db().lastTransaction(), serial, latest or _Z64))
            z = _reader(conn.db(), at).get(oid).blktab.get(blk)
        zoid = None if z is None else z._p_oid
        r = load_obj(z, buf)
        with io._flock:
            if snapshot_before(conn) == before:
                io._foreign[blk] = (zoid, at)
                return r
    raise LoadError('%r: block %d: the snapshot of its connection kept moving '
                    'while it loaded' % (zfile, blk))


def _next(tid):
    return (int.from_bytes(tid, 'big') + 1).to_bytes(8, 'big')


_Z64 = b'\0' * 8


def check_foreign(io, conn):
    """(The owner, at a transaction boundary, its connection on its new
    snapshot.)  The blocks other threads loaded that changed since -> set;
    the others are watched by the owner from now on."""
    with io._flock:
        foreign, io._foreign = io._foreign, {}
    if not foreign:
        return set()
    if conn is None:
        return set(foreign)
    changed = set()
    blktab = io._zfile.blktab
    base = conn.db().storage
    now = snapshot_before(conn)
    for blk, (zoid, before) in foreign.items():
        z = blktab.get(blk)
        if (None if z is None else z._p_oid) != zoid:
            changed.add(blk)
        elif zoid is not None and before != now and changed_since(base, zoid, before):
            changed.add(blk)
        else:
            io._track(blk, z)
    return changed


_NONE = object()
