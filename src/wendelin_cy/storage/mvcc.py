"""A connection's storage instance and its snapshot, and the fast backends'
common base: records loaded at that snapshot without activating objects.

The only user of ``Connection._storage`` and ``Connection._normal_storage``
(the per-connection storage instance: ZODB's MVCC adapter instance, or
RelStorage's own instance; ``_storage`` is a savepoint's TmpStore after a
savepoint, ``_normal_storage`` the instance under it) and of the MVCC adapter
instance's ``_start`` (the tid the connection's snapshot is before), or of
the historical adapter's ``_before`` (``db.open(before=...)``).
"""

from . import blobs
from .generic import Generic, temporary_dir
from .reader import READER
from .record import payload_view

__all__ = ['instance', 'normal_instance', 'snapshot', 'snapshot_before',
           'instance_snapshot', 'Records']


def instance(conn):
    """The storage instance of connection `conn` (None if it has none; a
    savepoint's TmpStore after a savepoint: then there is no snapshot to
    read at directly, records changed in this transaction are in it)."""
    return getattr(conn, '_storage', None)


def normal_instance(conn):
    """The storage instance of `conn` under its savepoints' TmpStore, if any."""
    normal = getattr(conn, '_normal_storage', None)
    return normal if normal is not None else instance(conn)


def instance_snapshot(inst):
    """The snapshot of MVCC adapter instance `inst`: the tid its reads are
    before (None: not known)."""
    start = getattr(inst, '_start', None)
    if start is None:
        start = getattr(inst, '_before', None)      # a historical connection
    return start


def snapshot(conn):
    """The snapshot tid of connection `conn` (reads see what was committed
    before it), or None."""
    return instance_snapshot(instance(conn))


def snapshot_before(conn):
    """The tid the snapshot of `conn` is before, savepoints or not."""
    return instance_snapshot(normal_instance(conn))


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
        view = READER.take(inst, jar.db().storage, obj._p_oid)   # (checked)
        if view is not None:
            return view
        p, _ = inst.load(obj._p_oid)
        return payload_view(p, jar.db().storage)

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
