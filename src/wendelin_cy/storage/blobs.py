"""Blob files named through the Blob itself: the only user of
``ZODB.blob.Blob``'s ``_p_blob_uncommitted`` / ``_p_blob_committed``.

``blob_path`` reads the filename the Connection gave the Blob when it loaded
it (no ``loadBlob`` call, no open file); ``new_blob`` makes a Blob of a file
we create in the storage's temporary directory and fill while the commit
runs (what ``Blob.open('w')`` would set up, without the file being made in
the system's tmp directory, as it would for a Blob without a connection).
Both check once that Blob has these attributes and that the Connection's
side of the protocol (``Blob._uncommitted``) is there; otherwise one
warning on the ``wendelin_cy.storage`` logger and None (the caller uses the public API, or has no
``blob`` format).
"""

from ZODB.blob import Blob

from .switch import fell_back, shape_mismatch

__all__ = ['blob_path', 'new_blob']

KIND = 'blob files'
_shape = []             # [ok], once checked


def _ok():
    if not _shape:
        missing = [a for a in ('_p_blob_uncommitted', '_p_blob_committed')
                   if not hasattr(Blob, a)]
        if not callable(getattr(Blob, '_uncommitted', None)):
            missing.append('_uncommitted()')
        if missing:
            shape_mismatch(KIND, 'ZODB.blob.Blob has no %s' % ', '.join(missing))
        _shape.append(not missing)
    return _shape[0] and not fell_back(KIND)


def blob_path(blob):
    """Filename of Blob `blob`'s data at its connection's snapshot (or of its
    new data, not committed yet); a ghost is left a ghost.  None: not known
    this way."""
    if not _ok():
        return None
    blob._p_activate()
    try:
        path = blob._p_blob_uncommitted or blob._p_blob_committed
        if not path:
            raise ValueError('%r: a block blob without data' % (blob,))
    finally:
        if not blob._p_changed:
            blob._p_deactivate()
    return path


def new_blob(path):
    """A new Blob whose (uncommitted) data is the file `path`; None if Blob
    is not of the shape expected."""
    if not _ok():
        return None
    b = Blob()
    b._p_blob_uncommitted = path
    return b
