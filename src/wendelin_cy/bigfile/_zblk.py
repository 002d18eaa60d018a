"""The persistent objects that hold the bytes of a block: ZBlk0, ZData,
ZBlk1, ZBlkSeg (formats: see the docstring of file_zodb), and how each
fills a page.

Their class paths are ``wendelin_cy.bigfile.file_zodb.*``: databases record
them, so ``__module__`` says so, and file_zodb imports them from here.
"""

import hashlib
import mmap
import os
import weakref

from BTrees.IOBTree import IOBTree
from persistent import Persistent

from wendelin_cy.errors import CorruptBlockError
from wendelin_cy.bigfile import MapFile
from wendelin_cy.storage import backend_of
from wendelin_cy.storage.checksum import DIGEST_SIZE, checks_on, digest
from wendelin_cy.storage.record import preadinto as _preadinto

from ._zblk_io import CHUNKSIZE, _fill, _zero

__all__ = ['ZBlk0', 'ZData', 'ZBlk1', 'ZBlkSeg']

_CLASS_MODULE = 'wendelin_cy.bigfile.file_zodb'     # where databases find them

# ZBlk -> (weakref(_ZBigFileIO), blk) of the file that loaded it, kept outside
# the ZBlk objects: ghostification clears an object's __dict__.
_OWNER = weakref.WeakKeyDictionary()

# ZBlkSeg -> (serial, blksize, path, offset, file size, has a digest) of its
# bytes, as last checked at a load (ZBlkSegs and their segments are never
# modified): a block loaded again, and a commit comparing the block with what
# is stored, find the file without reading a record.
_EXTENT = weakref.WeakKeyDictionary()

# ZData -> (serial, 128-bit BLAKE2b of its chunk as a load patched it into a
# block mapped from its base's file): a commit tells whether the block's
# chunk still holds those bytes without reading the record again.  A ZData
# changed since has another serial (or is _p_changed) and is read.
_PATCHSUM = weakref.WeakKeyDictionary()


def _chunk_digest(b):
    return hashlib.blake2b(b, digest_size=16).digest()


def _same_as_patched(zd, chunk):
    """True / False: the bytes-like `chunk` is / is not what the last load
    patched in from ZData `zd` (still at that serial); None: not known."""
    e = _PATCHSUM.get(zd)
    if e is None or zd._p_changed or e[0] != zd._p_serial:
        return None
    return _chunk_digest(chunk) == e[1]


class _ZBlkBase(Persistent):
    """Common part of the objects that hold bytes of a block.

    ``_p_invalidate`` (called by the Connection when another transaction
    changed this object) tells the ZBigFile handles that loaded the block.
    """

    def _p_invalidate(self):
        owner = _OWNER.get(self)
        if owner is not None:
            io = owner[0]()
            if io is not None:
                io._invalidated(owner[1])
        super()._p_invalidate()


class _BytesRecord(_ZBlkBase):
    """State: ``(bytes, size, digest)``, the bytes with trailing zeros cut
    off, their length and xxh3-64 digest (made when pickled, i.e. at commit).
    Records of older versions hold the bytes alone and still load (with no
    digest: ``_h`` is None).

    While being committed the object carries ``_v_src``, a callable returning
    the bytes from the pager page, so that no copy is made before pickling.
    """

    def __init__(self, data=b''):
        self._data = bytes(data).rstrip(b'\0')

    def _payload(self):
        src = self.__dict__.get('_v_src')
        return src() if src is not None else self._data

    def __getstate__(self):
        data = self._payload()
        if not isinstance(data, bytes):     # (not ours: stored as it is)
            return data
        return (data, len(data), digest(data))

    def __setstate__(self, state):
        d = self.__dict__
        if isinstance(state, bytes):            # (an older record: no checksum)
            d['_data'] = state
            d['_h'] = None
            return
        if (type(state) is not tuple or len(state) != 3 or not isinstance(state[0], bytes)
                or type(state[1]) is not int or not isinstance(state[2], bytes)
                or len(state[2]) != DIGEST_SIZE):
            raise TypeError('%s: corrupt state of type %s'
                            % (type(self).__name__, type(state).__name__))
        data, n, h = state
        if len(data) != n:
            raise corrupt(self, 'wrong record size: %d bytes stored, %d when committed'
                          % (len(data), n))
        if checks_on(_storage_of(self)) and digest(data) != h:
            raise corrupt(self, 'checksum mismatch: the %d stored bytes are not '
                          'those committed' % n)
        d['_data'] = data
        d['_h'] = h

    def _set_src(self, src):
        """Mark changed; the new bytes are `src` or, if it is callable, come
        from src() when the object is pickled."""
        if self._p_jar is not None:
            self._p_changed = True          # may load the old state first
        d = self.__dict__
        d.pop('_h', None)
        if callable(src):
            old = d.pop('_data', None)
            if self._p_jar is None and old is not None and '_v_old' not in d:
                d['_v_old'] = old       # ZODB cannot restore it if the commit fails
            d['_v_src'] = src
        else:
            d.pop('_v_src', None)
            d['_data'] = src



def _loaddata(obj):
    """Payload of a _BytesRecord -> bytes-like; obj is left a ghost (if it
    is not changed).  A function, not a method: looking up any attribute not
    starting with _p_ on a ghost would load its state."""
    if obj._p_changed:
        return _BytesRecord._payload(obj)
    if obj._p_changed is None:          # ghost: try the storage's direct path
        data = backend_of(obj._p_jar).payload(obj)
        if data is not None:
            return data
    data = obj._data
    obj._p_deactivate()
    return data


class ZBlk0(_BytesRecord):
    """Whole block in one object (fast reads, whole-block writes)."""

    __module__ = _CLASS_MODULE

    def loadblkdata(self, buf):
        if self._p_changed is None and len(buf):        # a ghost: try the direct path
            if backend_of(self._p_jar).readinto(self, buf) is not None:
                return
        _fill(buf, 0, _loaddata(self), len(buf))


class ZData(_BytesRecord):
    """One chunk of a ZBlk1 (b'' is an all-zero chunk)."""

    __module__ = _CLASS_MODULE


class ZBlkSeg(_ZBlkBase):
    """Block ``index`` of a segment: a Blob whose file holds several blocks
    written in the same commit, block i at offset i * blksize.  Never
    modified (a change of the block stores a new object)."""

    __module__ = _CLASS_MODULE

    def __init__(self, seg, index, h=None, fsize=None):
        self.seg = seg
        self.index = index
        if h is not None:
            self.h = h                  # xxh3-64 digest of the block's bytes
        if fsize is not None:
            self._v_fsize = fsize       # callable: size of the segment's file

    def __getstate__(self):
        state = super().__getstate__()
        fsize = self.__dict__.get('_v_fsize')
        if fsize is not None:
            state = dict(state or {}, fsize=fsize())
        return state


# ~~~ blob blocks
#
# A block may also be a ZBlkSeg: its bytes are part of the file of a plain
# ``ZODB.blob.Blob`` (a segment), which the storage keeps in a file of its own
# (FileStorage: one file in the blob directory, written once at commit,
# renamed into place), and the pager maps that part (MapFile): a load copies
# nothing, and a commit writes the bytes once, with no pickling.  Neither is
# ever rewritten: every change stores new ones (so the invalidation invariant
# holds through ``blktab`` and ``ZBigFile.rev``; Blob cannot be subclassed to
# get our ``_p_invalidate``).  Used where the storage keeps blobs on a local
# filesystem (Backend.blobs_local).

def _blob_path(blob):
    """Filename of the data of Blob `blob` at its connection's snapshot (or of
    its new data, not committed yet, after an explicit dirty_writeout); a ghost
    `blob` is left a ghost.  Either file is never written again."""
    return backend_of(blob._p_jar).blob_path(blob)


def _seg_fields(z):
    """(seg, index, digest, file size) of ZBlkSeg `z` (digest and file size:
    None in older records); z is left a ghost, also when it was not one (a
    readahead's prefetch loads records ahead of the blocks' loads): the
    object cache keeps no block records of a scan."""
    if z._p_changed is None:
        z._p_activate()
    d = z.__dict__
    try:
        return d['seg'], d['index'], d.get('h'), d.get('fsize')
    except KeyError:
        raise corrupt(z, 'segment block record without seg/index') from None
    finally:
        if z._p_changed is False and z._p_jar is not None:
            z._p_deactivate()


def _blk_extent(z, bs):
    """(path, offset) of the bytes of block ZBlkSeg `z` (its part of the
    segment's file); z stays a ghost."""
    e = _EXTENT.get(z)
    if e is not None and e[:2] == (z._p_serial, bs):
        return e[2:4]
    seg, index = _seg_fields(z)[:2]
    return _blob_path(seg), index * bs


def _checked_extent(z, bs):
    """_blk_extent, once the file's size (always) and the block's digest
    (content checks on) are found to be those committed; else
    CorruptBlockError."""
    seg, index, h, fsize = _seg_fields(z)
    if type(index) is not int or index < 0:
        raise corrupt(z, 'segment block with a bad index %r' % (index,))
    path, off = _blob_path(seg), index * bs
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise corrupt(z, 'blob file missing', path) from None
    try:
        size = os.fstat(fd).st_size
        if size < off + bs:
            raise corrupt(z, 'blob file truncated: %d bytes, block %d of the '
                          'segment needs %d' % (size, index, off + bs), path)
        if fsize is not None and size != fsize:
            raise corrupt(z, 'wrong blob file size: %d bytes, %d when committed'
                          % (size, fsize), path)
        if h is not None and checks_on(_storage_of(z)):
            m = mmap.mmap(fd, bs, prot=mmap.PROT_READ, offset=off)
            try:
                ok = digest(m) == h
            finally:
                m.close()
            if not ok:
                raise corrupt(z, 'checksum mismatch: the blob file does not hold '
                              'the bytes committed for block %d of the segment'
                              % index, path)
    finally:
        os.close(fd)
    _keep_extent(z, bs, path, off, fsize, h)
    return path, off


def _keep_extent(z, bs, path, off, fsize, h):
    """Remember where the stored ZBlkSeg `z` lies (_EXTENT)."""
    if z._p_jar is not None and z._p_serial != b'\0' * 8:
        _EXTENT[z] = (z._p_serial, bs, path, off, fsize, h is not None)


def _storage_of(obj):
    try:
        return obj._p_jar.db().storage
    except Exception:
        return None


def _storage_name(st):
    try:
        return st.getName() if st is not None else None
    except Exception:
        return None


def corrupt(obj, detail, file=None):
    """CorruptBlockError for record `obj` (array and block: filled in by the
    caller that knows them)."""
    oid = getattr(obj, '_p_oid', None)
    return CorruptBlockError(detail, '0x' + oid.hex() if oid else None,
                             file or _storage_name(_storage_of(obj)))


_MAP_POPULATE = getattr(mmap, 'MAP_POPULATE', 0)


def _blob_data(z, bs):
    """Content of block ZBlkSeg `z` as a read-only buffer (a private mapping
    of its file, no copy)."""
    path, off = _blk_extent(z, bs)
    with open(path, 'rb') as f:
        n = min(bs, os.fstat(f.fileno()).st_size - off)
        if n <= 0:
            return b''
        # (populated at once: it is read whole, 4 KiB faults would cost more
        # than the comparison it is made for)
        return mmap.mmap(f.fileno(), n, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                         prot=mmap.PROT_READ, offset=off)


def _blob_chunks(z, bs, idx, cs):
    """Chunks idx (of cs bytes) of block ZBlkSeg `z`, read from its file."""
    path, off = _blk_extent(z, bs)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = []
        for i in idx:
            data = os.pread(fd, cs, off + i * cs)
            if len(data) != cs:
                raise corrupt(z, 'short read of the blob file', path)
            out.append(data)
        return out
    finally:
        os.close(fd)


def _load_base(base, buf):
    """buf = content of the ZBlk0 or ZBlkSeg `base` (zeros after it)."""
    if type(base) is ZBlkSeg:
        path, off = _checked_extent(base, len(buf))
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not _preadinto(fd, buf, off, len(buf)):
                raise corrupt(base, 'short read of the blob file', path)
        finally:
            os.close(fd)
    else:
        ZBlk0.loadblkdata(base, buf)        # (via the class: base stays a ghost)


class ZBlk1(_ZBlkBase):
    """Block as chunks: {offset: ZData} over an optional ZBlk0 base."""

    __module__ = _CLASS_MODULE
    CHUNKSIZE = CHUNKSIZE       # (wendelin.core's name; blocks not a multiple of it use 4 KiB)

    def __init__(self, chunksize, base=None):
        self.chunksize = chunksize
        self.chunktab = IOBTree()
        self.base = base
        self.rev = 0

    def __getstate__(self):
        return {'chunksize': self.chunksize, 'chunktab': self.chunktab,
                'base': self.base, 'rev': self.rev}

    def __setstate__(self, state):
        d = self.__dict__
        d['chunksize'] = state['chunksize']
        d['chunktab'] = state['chunktab']
        d['base'] = state.get('base')
        d['rev'] = state.get('rev', 0)

    def mapfile(self, bs, extent):
        """(MapFile, base) for the block when its base is a segment block:
        the base's part of the segment file, with the chunks as patches (the
        pager maps the file and writes just those pages); None otherwise.
        extent(base) -> (path, offset), checked as _checked_extent checks."""
        base = self.base
        if type(base) is not ZBlkSeg:
            return None
        cs = self.chunksize
        if type(cs) is not int or cs <= 0 or bs % cs:
            return None                 # (loadblkdata reports it)
        patches = []
        for off, zd in self.chunktab.items():
            if (type(off) is not int or off < 0 or off % cs or off >= bs
                    or type(zd) is not ZData):
                return None
            data = bytes(_loaddata(zd))
            if len(data) > cs:
                return None
            patches.append((off, data, cs))
            _PATCHSUM[zd] = (zd._p_serial, _chunk_digest(
                data if len(data) == cs else data + bytes(cs - len(data))))
        m = MapFile(*extent(base), patches=patches)
        if not self._p_changed:
            self._p_deactivate()
        return m, base

    def loadblkdata(self, buf):
        n = len(buf)
        cs = self.chunksize
        base = self.base
        if type(cs) is not int or cs <= 0 or n % cs:
            raise corrupt(self, 'ZBlk1 chunk size %r does not divide the block size %d'
                          % (cs, n))
        if base is not None:
            if type(base) not in (ZBlk0, ZBlkSeg):
                raise corrupt(self, 'ZBlk1 base is a %s' % type(base).__name__)
            _load_base(base, buf)
        else:
            _zero(buf, 0, n)
        for off, zd in self.chunktab.items():
            if type(off) is not int or off < 0 or off % cs or off >= n:
                raise corrupt(self, 'ZBlk1 chunk at offset %r: not a multiple of %d '
                              'inside the block' % (off, cs))
            if type(zd) is not ZData:
                raise corrupt(self, 'ZBlk1 chunk at offset %d is a %s, not ZData'
                              % (off, type(zd).__name__))
            _fill(buf, off, _loaddata(zd), min(off + cs, n))
        if not self._p_changed:
            self._p_deactivate()

