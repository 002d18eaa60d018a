"""MappingStorage and DemoStorage: records read ahead by our reader threads
with the storage's public ``loadBefore`` at the connection's snapshot.

(FileStorage blocks are read into the page by the pager's own thread
instead, see filestorage; ZEO's client has a thread of its own that
receives what Connection.prefetch asked for: one more Python thread loading
from its cache only competed for the GIL.)
"""

from . import mvcc
from .reader import READER

__all__ = ['MemoryBackend']


class MemoryBackend(mvcc.Records):
    kind = 'memory'

    def serves(self, storage):
        mod = type(storage).__module__ or ''
        return mod.startswith(('ZODB.MappingStorage', 'ZODB.DemoStorage'))

    def prefetch(self, conn, oids):
        return READER.ask(mvcc.instance(conn), conn.db().storage, oids)

    # -- the reader threads' protocol

    def thread_snapshot(self, inst):
        return mvcc.instance_snapshot(inst)

    def thread_load(self, base, snap, oid):
        r = base.loadBefore(oid, snap)
        return r[0] if r else None


BACKEND = MemoryBackend()
READER.register(BACKEND)
