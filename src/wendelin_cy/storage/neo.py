"""NEO (``neo.client.Storage``).

Records are loaded at the connection's snapshot and cut out of their
pickles (mvcc.Records), as for every fast backend.  NEO's client has no
``prefetch``, but one client storage serves every thread (each thread waits
for its own answers from the storage nodes): records are read ahead of a
sequential scan by our reader threads (storage.reader) with the storage's
public ``loadBefore`` at the connection's snapshot, as for MappingStorage,
so that the next block travels from its storage node while the scan works
on this one.

Closing: NEO's client stops its poll thread by making it call
``_thread.exit()``, so the thread ends with ``SystemExit``.  Python's
default ``threading.excepthook`` ignores that, but hooks that report every
thread exception (pytest's, a service's crash reporter) take it for a
crash.  ``quiet_close(storage)`` - called by ``dbopen('neo://...')`` before
the thread starts - gives the client a poll thread that ends quietly on
that exit (any other exception still propagates) and makes ``close()`` wait
for it, so that a closed storage has no thread or socket left.
"""

import threading

from . import mvcc
from .reader import READER

__all__ = ['NEOBackend', 'quiet_close']


class NEOBackend(mvcc.Records):
    kind = 'NEO'

    def serves(self, storage):
        return (type(storage).__module__ or '').startswith('neo.client')

    def prefetch(self, conn, oids):
        return READER.ask(mvcc.instance(conn), conn.db().storage, oids)

    # -- the reader threads' protocol

    def thread_snapshot(self, inst):
        return mvcc.instance_snapshot(inst)

    def thread_load(self, base, snap, oid):
        r = base.loadBefore(oid, snap)
        return r[0] if r else None


BACKEND = NEOBackend()
READER.register(BACKEND)


CLOSE_JOIN_TIMEOUT = 10     # seconds close() waits for the poll thread


def quiet_close(storage):
    """Make the poll thread of NEO `storage` (neo.client.Storage) end without
    an exception at close, and close() wait for it.  Does nothing if the
    thread already runs or the storage is not NEO's."""
    app = getattr(storage, 'app', None)
    old = getattr(app, 'poll_thread', None)
    if not isinstance(old, threading.Thread) or old.is_alive() or \
            getattr(app, '_wcy_quiet', False):
        return storage
    run = app.run

    def poll():
        try:
            run()
        except SystemExit as e:
            if e.code:          # not the plain exit of close()
                raise

    t = threading.Thread(target=poll, name=old.name)
    t.daemon = old.daemon
    app.poll_thread = t
    app._wcy_quiet = True
    close = storage.close

    def close_and_join():
        close()
        if t.is_alive() and t is not threading.current_thread():
            t.join(CLOSE_JOIN_TIMEOUT)

    storage.close = close_and_join
    return storage
