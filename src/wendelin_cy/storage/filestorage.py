"""FileStorage (with or without blobs), and storages wrapped in BlobStorage.

The only user of FileStorage's ``_files``, ``_lookup_pos``,
``_read_data_header`` (and ``ZODB.FileStorage.format.DATA_HDR_LEN``) and
``_file_name``.

Reading a block record into the page: for a ZBlk0 the payload is one
contiguous run of the data file.  We find it as FileStorage.loadBefore does
(index, then back along the record chain to the record visible at the
connection's snapshot), through a file of the storage's own pool, so that
index and file agree even across a pack, and read it with preadv straight
into the page: one copy instead of two (record bytes, then page), and
without the GIL.  We read through our own dup() of that file: a pack renames
the old file away but it stays readable through the descriptor, so an
extent found before a pack still reads the data it named.  Anything
unexpected (an undo back-pointer, another pickle layout) takes the generic
path for that record.  Read-ahead: ``prefetch`` is answered with these
extents, which the pager's own thread reads.

Blobs: a FileStorage opened with a blob directory (``dbopen(path)``), or any
storage in ``ZODB.blob.BlobStorage``, keeps blobs in local files the pager
can map.  A FileStorage opened without one (``FileStorage(path)``) cannot
load blobs: we find the files ourselves in the directory dbopen gives it,
``path.blobs``.
"""

import os
import weakref

from ZODB.blob import BlobStorage
from ZODB.interfaces import IBlobStorage

from . import mvcc
from .checksum import checks_on, digest
from .record import HEAD_PEEK, preadinto, record_payload

try:
    from ZODB.FileStorage.FileStorage import FileStorage
    from ZODB.FileStorage import format as _format
except ImportError:         # pragma: no cover
    FileStorage = _format = None

__all__ = ['FileStorageBackend', 'BlobStorageBackend', 'uri']

_FDS = weakref.WeakKeyDictionary()      # FileStorage -> ((dev, ino), fd)
_NOSUPPORT_HELPERS = {}                 # blob dir -> FilesystemHelper


def _fd(base, f):
    """Our descriptor of the data file `f` of FileStorage `base`."""
    st = os.fstat(f.fileno())
    ident = (st.st_dev, st.st_ino)
    entry = _FDS.get(base)
    if entry is not None and entry[0] == ident:
        return entry[1]
    # (an older descriptor is kept open: a read in flight may use it)
    fd = os.dup(f.fileno())
    os.set_inheritable(fd, False)
    _FDS[base] = (ident, fd)
    return fd


class FileStorageBackend(mvcc.Records):
    kind = 'FileStorage'
    reads_extents = True

    def serves(self, storage):
        return FileStorage is not None and type(storage) is FileStorage

    def check_shape(self, storage):
        cls = type(storage)
        missing = [a for a in ('_lookup_pos', '_read_data_header')
                   if not callable(getattr(cls, a, None))]
        if not callable(getattr(getattr(storage, '_files', None), 'get', None)):
            missing.append('_files.get()')
        if not isinstance(getattr(_format, 'DATA_HDR_LEN', None), int):
            missing.append('format.DATA_HDR_LEN')
        if missing:
            return 'FileStorage has no %s' % ', '.join(missing)
        return None

    def extent(self, obj):
        """(fd, offset, nbytes, digest) of ghost ZBlk0 `obj`'s payload at
        its connection's snapshot (digest: None for an older record), or
        None."""
        jar = obj._p_jar
        start = mvcc.snapshot(jar)
        if start is None:
            return None
        base = jar.db().storage
        oid = obj._p_oid
        try:
            with base._files.get() as f:
                pos = base._lookup_pos(oid)
                while True:
                    h = base._read_data_header(pos, oid, f)
                    if h.tid < start:
                        break
                    pos = h.prev
                    if not pos:
                        return None
                if not h.plen:
                    return None                     # an undo back-pointer
                dpos = pos + _format.DATA_HDR_LEN
                fd = _fd(base, f)
            span = record_payload(fd, dpos, h.plen, os.pread(fd, min(h.plen, HEAD_PEEK), dpos))
            return None if span is None else (fd,) + span
        except Exception:
            return None         # the generic path will load (or report) it

    def record_size(self, storage, oid):
        """(payload bytes, tid) from the record's header: no data is read."""
        try:
            with storage._files.get() as f:
                h = storage._read_data_header(storage._lookup_pos(oid), oid, f)
        except Exception:
            return None         # the caller's load will say what is wrong
        return (h.plen, h.tid) if h.plen else None

    def readinto(self, obj, buf):
        ext = self.extent(obj)
        if ext is not None and ext[2] <= len(buf) and preadinto(ext[0], buf, ext[1], ext[2]):
            if ext[3] is not None and checks_on(obj._p_jar.db().storage):
                with memoryview(buf) as v:
                    if digest(v[:ext[2]]) != ext[3]:
                        return None     # the object's load reports it
            return ext[2]
        return None

    def blobs_local(self, conn):
        return bool(getattr(conn.db().storage, 'blob_dir', None))

    def blob_path(self, blob):
        if blob._p_changed is None:
            path = _blob_path_nosupport(blob)
            if path is not None:
                return path
        return super().blob_path(blob)


def _blob_path_nosupport(blob):
    """Blob `blob`'s file if its FileStorage was opened without blob support,
    from the directory dbopen gives it; None if the storage has blob support
    (the normal path)."""
    jar = blob._p_jar
    inst = mvcc.instance(jar)
    if inst is None or IBlobStorage.providedBy(inst):
        return None
    base = jar.db().storage
    name = getattr(base, '_file_name', None)
    if not name:
        return None
    d = name + '.blobs'
    helper = _NOSUPPORT_HELPERS.get(d)
    if helper is None:
        from ZODB.blob import FilesystemHelper
        if not os.path.isdir(d):
            raise _no_blob_dir(blob, base, d)
        helper = _NOSUPPORT_HELPERS[d] = FilesystemHelper(d)
    _, serial = inst.load(blob._p_oid)         # (at the connection's snapshot)
    path = helper.getBlobFilename(blob._p_oid, serial)
    if not os.path.exists(path):
        if not os.path.isdir(d):
            raise _no_blob_dir(blob, base, d)
        from ZODB.POSException import POSKeyError
        raise POSKeyError('No blob file at %s' % path, blob._p_oid, serial)
    return path


def _no_blob_dir(blob, base, d):
    return ValueError(
        '%r is a block stored as a blob, and %r was opened without a blob '
        'directory (and has no %r beside it): open it with dbopen(path) or '
        'FileStorage(path, blob_dir=...)' % (blob, base, d))


class BlobStorageBackend(mvcc.Records):
    """Any storage wrapped in ZODB.blob.BlobStorage: blobs in local files."""

    kind = 'BlobStorage'

    def serves(self, storage):
        return isinstance(storage, BlobStorage)

    def blobs_local(self, conn):
        return True


def uri(storage):
    """The path of FileStorage `storage`'s data file, or None."""
    if FileStorage is None or not isinstance(storage, FileStorage):
        return None
    name = getattr(storage, '_file_name', None)
    return os.path.abspath(name) if name else None
