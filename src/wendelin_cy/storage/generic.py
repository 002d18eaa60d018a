"""The generic backend: ZODB's public API only, for every storage.

Loads go through the objects (the Connection activates a record, the binding
copies its state, ``_p_deactivate`` makes it a ghost again).  Nothing is read
ahead, blob files are found through ``Blob.open``, and no new blob is made
from a file of ours (so the ``blob`` ZBlk format is not available and
``auto`` writes ZBlk0).  Used when the fast paths are off, for storages no
fast backend knows, and for a backend whose checked internals changed.
"""

from ZODB.interfaces import IBlobStorage

from .base import Backend

__all__ = ['Generic', 'GENERIC', 'temporary_dir']


def temporary_dir(st):
    """Where storage `st` wants new blob files made; None: it has no blobs."""
    try:
        if not IBlobStorage.providedBy(st):
            return None
        return st.temporaryDirectory()
    except Exception:
        return None


class Generic(Backend):
    kind = 'generic'

    def serves(self, storage):
        return True

    def check_shape(self, storage):
        return None

    def payload(self, obj):
        return None

    def readinto(self, obj, buf):
        return None

    def extent(self, obj):
        return None

    def record_size(self, storage, oid):
        return None

    def prefetch(self, conn, oids):
        return []

    def max_ahead(self, storage, blksize):
        return None

    def blobs_local(self, conn):
        return False

    def blob_dir(self, conn):
        try:
            return temporary_dir(conn.db().storage)
        except Exception:
            return None

    def blob_path(self, blob):
        ghost = blob._p_changed is None
        with blob.open('r') as f:
            path = f.name
        if ghost:
            blob._p_deactivate()
        return path

    def new_blob(self, path):
        return None


GENERIC = Generic()
