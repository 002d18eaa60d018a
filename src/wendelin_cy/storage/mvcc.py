"""A connection's storage instance and its snapshot, and the fast backends'
common base: records loaded at that snapshot without activating objects.

The only user of ``Connection._storage`` (the per-connection storage
instance: ZODB's MVCC adapter instance, or RelStorage's own instance) and of
the MVCC adapter instance's ``_start`` (the tid the connection's snapshot is
before).  A historical connection (``db.open(at=...)``) has no ``_start``:
its snapshot is None, and what needs one is not done.
"""

from . import blobs
from .generic import Generic, temporary_dir
from .reader import READER
from .record import payload_view

__all__ = ['instance', 'snapshot', 'instance_snapshot', 'Records']


def instance(conn):
    """The storage instance of connection `conn` (None if it has none)."""
    return getattr(conn, '_storage', None)


def instance_snapshot(inst):
    """The snapshot of MVCC adapter instance `inst`: the tid its reads are
    before (None: not known, e.g. a historical connection)."""
    return getattr(inst, '_start', None)


def snapshot(conn):
    """The snapshot tid of connection `conn` (reads see what was committed
    before it), or None."""
    return instance_snapshot(instance(conn))


class Records(Generic):
    """Base of the fast backends: a block record's payload comes from the
    record as the connection's storage instance loads it (or from a read
    ahead of it), cut out of the pickle without unpickling; blob files are
    named by the Blob itself (see blobs)."""

    kind = 'records'

    def check_shape(self, storage):
        return None

    def payload(self, obj):
        jar = obj._p_jar
        inst = instance(jar)
        if inst is None:
            return None
        view = READER.take(inst, jar.db().storage, obj._p_oid)
        if view is not None:
            return view
        p, _ = inst.load(obj._p_oid)
        return payload_view(p)

    def blob_dir(self, conn):
        try:
            return temporary_dir(instance(conn))
        except Exception:
            return None

    def blob_path(self, blob):
        path = blobs.blob_path(blob)
        return super().blob_path(blob) if path is None else path

    def new_blob(self, path):
        return blobs.new_blob(path)
