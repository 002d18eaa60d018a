"""RelStorage: records read ahead by our reader threads, each through a
RelStorage instance of its own.

The only user of RelStorage's module layout (``relstorage.*``), of
``new_instance``, ``highest_visible_tid``, ``sync``/``poll_invalidations``
on an instance, and of ``_closed``.

RelStorage's per-connection instances must not be shared between threads:
a reader thread loads through an instance of its own, at a snapshot at least
as new as the connection's, and keeps a record only if it was written at or
before the connection's snapshot (then it is the very record the connection
would load).
"""

import os
import threading

from . import mvcc
from .reader import READER

__all__ = ['RelStorageBackend']


class _RelView:
    """A reader thread's own instance of a RelStorage.  Closing the storage
    (from another thread) closes it too, but waits for a load in progress:
    a database connection closed under a running query can crash (SQLite)."""

    def __init__(self, base):
        self.base = base
        self.lock = threading.Lock()
        self.closed = False
        self.tid = 0
        self.inst = inst = base.new_instance()
        close = inst.close

        def close_after_load():
            with self.lock:
                self.closed = True
                close()
        inst.close = close_after_load
        if getattr(base, '_closed', False):     # closed while we made it
            inst.close()


_views = {}             # (id(RelStorage), thread id) -> _RelView


def _after_fork_in_child():
    _views.clear()      # (the parent's database connections are not ours)


os.register_at_fork(after_in_child=_after_fork_in_child)


class RelStorageBackend(mvcc.Records):
    kind = 'RelStorage'

    def serves(self, storage):
        mod = type(storage).__module__ or ''
        return mod.startswith('relstorage.') and hasattr(storage, 'new_instance')

    def check_shape(self, storage):
        cls = type(storage)
        missing = [a for a in ('new_instance', 'sync', 'poll_invalidations')
                   if not callable(getattr(cls, a, None))]
        missing += [a for a in ('highest_visible_tid', '_closed') if not hasattr(cls, a)]
        if missing:
            return 'RelStorage has no %s' % ', '.join(missing)
        return None

    def prefetch(self, conn, oids):
        return READER.ask(mvcc.instance(conn), conn.db().storage, oids)

    # -- the reader threads' protocol

    def thread_snapshot(self, inst):
        return getattr(inst, 'highest_visible_tid', None) or None      # an int

    def snapshot_before(self, inst):
        """db.open(before=...) of what connection instance `inst` sees."""
        hvt = self.thread_snapshot(inst)
        return None if hvt is None else (hvt + 1).to_bytes(8, 'big')

    def open_before(self, db, before, tm):
        """db.open(before=before): a historical connection at a snapshot a
        connection of `db` has.  DB.open refuses a tid past the last
        transaction of the DB's own RelStorage instance, which lags (it is
        not polled): that check is done here against the snapshot we were
        given, and the connection made as DB.open makes it (its pool,
        ``klass``, ``_historical_cache_size``: ZODB 5's DB)."""
        try:
            return db.open(before=before, transaction_manager=tm)
        except ValueError:
            if not all(hasattr(db, a) for a in ('_lock', 'historical_pool', 'klass',
                                                '_historical_cache_size')):
                raise
        with db._lock:
            c = db.historical_pool.pop(before)
            if c is None:
                c = db.klass(db, db._historical_cache_size, before,
                             getattr(db, '_historical_cache_size_bytes', 0))
                db.historical_pool.push(c, before)
                c = db.historical_pool.pop(before)
        c.open(tm)
        return c

    def thread_load(self, base, snap, oid):
        if getattr(base, '_closed', False):
            _views.pop((id(base), threading.get_ident()), None)
            return None
        key = (id(base), threading.get_ident())     # one instance per thread
        v = _views.get(key)
        if v is None or v.base is not base:
            v = _views[key] = _RelView(base)
        with v.lock:            # (closing the storage waits for this load)
            if v.closed:
                return None
            if v.tid < snap:    # move our view up to (at least) snap
                v.inst.sync()
                v.inst.poll_invalidations()
                v.tid = v.inst.highest_visible_tid or 0
                if v.tid < snap:
                    return None
            p, serial = v.inst.load(oid)
        if int.from_bytes(serial, 'big') > snap:
            return None                 # changed since the connection's snapshot
        return p


BACKEND = RelStorageBackend()
READER.register(BACKEND)
