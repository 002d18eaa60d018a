"""Storages behind one interface: what the ZODB binding of wendelin_cy needs
from a storage, with one module per backend.

``backend_of(conn)`` gives the backend of a connection's storage: an object
with the methods of ``base.Backend`` (load a block record's payload at the
connection's snapshot into a buffer, where it lies in a file, read ahead,
blob files).  The fast backends (filestorage, zeo, relstorage, memory, neo,
all over mvcc.Records) use private internals of ZODB, ZEO and RelStorage,
each in one module, behind a check of the shape they expect; ``generic``
uses the public API only, and serves every storage when the fast paths are
off (``set_fast_paths(False)``, ``WENDELIN_CY_STORAGE_FAST_PATHS=0``), when
no backend knows the storage, or after a shape check failed (one warning on the
``wendelin_cy.storage`` logger).

This package imports nothing of wendelin_cy.bigfile or bigarray.
"""

from . import filestorage, zeo
from .filestorage import BlobStorageBackend, FileStorageBackend
from .generic import GENERIC
from .memory import BACKEND as _MEMORY
from .mvcc import instance as _instance, normal_instance as _normal_instance
from .mvcc import snapshot_before as _snapshot_before
from .neo import NEOBackend
from .reader import READER
from .relstorage import BACKEND as _RELSTORAGE
from .switch import (FAST_PATHS_ENV, StorageFastPathWarning, fast_paths, fell_back,
                     set_fast_paths, shape_mismatch)
from .zeo import ZEOBackend

__all__ = ['backend_of', 'backend_for', 'uri_of', 'forget_reads', 'records_sent', 'fast_paths',
           'snapshot_before', 'changed_since', 'open_before',
           'set_fast_paths', 'StorageFastPathWarning', 'shape_mismatch', 'GENERIC',
           'FAST_PATHS_ENV']

BACKENDS = [FileStorageBackend(), BlobStorageBackend(), ZEOBackend(), _RELSTORAGE,
            _MEMORY, NEOBackend()]

_by_type = {}           # storage class -> its backend, shape checked


def backend_for(storage):
    """The backend serving (base) storage `storage`."""
    if not fast_paths():
        return GENERIC
    be = _by_type.get(type(storage))
    if be is None:
        be = next((b for b in BACKENDS if b.serves(storage)), GENERIC)
        why = be.check_shape(storage)
        if why is not None:
            shape_mismatch(be.kind, why)
        _by_type[type(storage)] = be
    return GENERIC if fell_back(be.kind) else be


def backend_of(conn):
    """The backend of connection `conn`'s storage (generic if it is closed or
    None: then everything goes through ZODB, which reports it)."""
    if conn is None or not getattr(conn, 'opened', None):
        return GENERIC
    return backend_for(conn.db().storage)


def uri_of(storage):
    """A URI another process can open `storage` with, or None."""
    return filestorage.uri(storage) or zeo.uri(storage)


def records_sent(conn, nbytes, budget):
    """A commit through connection `conn` is about to make (and then store) a
    block record of `nbytes` bytes, with the pager's RAM budget `budget`: a
    storage that queues what it is sent (ZEO) waits here until its server has
    taken most of the records sent before (``zeo.backpressure``).  Not a
    read fast path: done with the fast paths off too."""
    if conn is not None:
        db = getattr(conn, 'db', None)
        if db is not None:
            zeo.backpressure(db().storage, nbytes, budget)


def forget_reads(conn):
    """Cancel the reads ahead for connection `conn` nobody waits for yet."""
    READER.forget(_instance(conn))


def snapshot_before(conn):
    """The tid connection `conn`'s snapshot is before: ``db.open(before=it)``
    sees what `conn` sees now.  None if it cannot be told (then nothing may
    be loaded for `conn` from another thread).  Safe to call from any thread:
    it reads one attribute."""
    base = conn.db().storage
    if _RELSTORAGE.serves(base):
        return _RELSTORAGE.snapshot_before(_normal_instance(conn))
    return _snapshot_before(conn)


def changed_since(storage, oid, tid):
    """Has record `oid` of (base) storage `storage` changed at or after `tid`
    (or gone)?  Reads as little as the backend can (FileStorage: the record
    header); True when it cannot tell."""
    from ZODB.POSException import POSKeyError
    rs = backend_for(storage).record_size(storage, oid)
    if rs is not None:
        return rs[1] >= tid
    try:
        get = getattr(storage, 'getTid', None)
        now = get(oid) if get is not None else storage.load(oid, '')[1]
    except POSKeyError:
        return True
    except Exception:
        return True
    return now >= tid


def open_before(db, before, tm):
    """A historical connection of `db` at `before`, a snapshot that one of
    its connections has (``snapshot_before``), with transaction manager `tm`."""
    if _RELSTORAGE.serves(db.storage):
        return _RELSTORAGE.open_before(db, before, tm)
    return db.open(before=before, transaction_manager=tm)
