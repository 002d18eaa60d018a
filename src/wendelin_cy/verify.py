"""Verify the arrays of a database: read every stored block, record by record.

``verify_database(root)`` / ``verify_array(key, A)`` read each entry of each
array's ``ZBigFile.blktab`` through the ZODB connection (not through the
pager, so that a damaged block is reported, not faulted on) and check its
structure:

* the records load (a missing or damaged record, a class that cannot be
  loaded, a state of the wrong type are load errors);
* ``ZBlk0`` / ``ZData``: the bytes fit the block (a chunk: its chunk);
* ``ZBlk1``: a chunk size that divides the block, chunk offsets on chunk
  boundaries inside the block, chunks of class ``ZData``, a base that is a
  ``ZBlk0`` or a segment block;
* blob segment blocks (``ZBlkSeg``): the segment is a Blob, its file exists,
  is readable and holds the whole block (segment files are written whole);
* block numbers lie inside the array;
* sizes and checksums: each record's bytes have the size and the xxh3-64
  digest recorded when it was committed (blob files: the file size too),
  whatever the content-check switch of loads says.  Records written by
  versions before checksums (and blocks in wendelin.core's own format) have
  none: they are counted in ``Report.unchecked`` (blocks), not problems.

Then each block's bytes go through the content checks (``CONTENT_CHECKS``,
or the ``checks`` argument): callables ``check(ref, data)`` with ``ref`` a
``BlockRef`` and ``data`` the stored bytes of the block (shorter than the
block size: the rest is zeros), returning None or a message.

A problem is a ``Problem(key, blk, oid, fmt, message)``; ``blk`` is None for
a problem of the array itself.
"""

import os
from typing import Callable, List, NamedTuple, Optional

__all__ = ['Problem', 'BlockRef', 'Report', 'CONTENT_CHECKS', 'verify_array',
           'verify_database']


class Problem(NamedTuple):
    key: str                # key path of the array
    blk: Optional[int]      # block number (None: the array itself)
    oid: Optional[str]      # '0x...' of the record at fault
    fmt: Optional[str]      # block format ('ZBlk0', 'ZBlk1', 'blob', ...)
    message: str

    def __str__(self):
        where = self.key + (': block %d' % self.blk if self.blk is not None else '')
        what = ', '.join(x for x in (self.fmt, self.oid and 'oid ' + self.oid) if x)
        return '%s%s: %s' % (where, ' (%s)' % what if what else '', self.message)


class BlockRef(NamedTuple):
    key: str
    array: object
    blk: int
    oid: str
    fmt: str
    blksize: int


#: content checks run on the bytes of every block read without problem
CONTENT_CHECKS: List[Callable[[BlockRef, object], Optional[str]]] = []


class Report(NamedTuple):
    arrays: int
    blocks: int             # blocks read (holes are not)
    nbytes: int             # bytes read
    problems: List[Problem]
    unchecked: int = 0      # blocks read with a record that has no checksum

    @property
    def ok(self):
        return not self.problems


class _Bad(Exception):
    def __init__(self, oid, message):
        super().__init__(message)
        self.oid, self.message = oid, message


def _hex(oid):
    return '0x' + oid.hex() if oid else None


def _err(e):
    text = str(e) or repr(e)
    return '%s: %s' % (type(e).__name__, text.splitlines()[0] if text else '')


def _activate(obj, what):
    try:
        obj._p_activate()
    except Exception as e:
        from wendelin_cy.errors import CorruptBlockError
        c = e.__cause__         # (ZODB's StateLoadError hides what __setstate__ said)
        if isinstance(c, CorruptBlockError):
            raise _Bad(_hex(obj._p_oid), c.detail) from None
        raise _Bad(_hex(obj._p_oid), 'load error (%s): %s' % (what, _err(c or e))) from None


def _fields(obj, what, *names):
    """Attributes `names` of persistent `obj`, which is left a ghost."""
    _activate(obj, what)
    try:
        return [getattr(obj, n) for n in names]
    finally:
        obj._p_deactivate()


def _digest(data):
    from wendelin_cy.storage.checksum import digest
    return digest(data)


def _bytes_state(obj, limit, what, sums):
    """The bytes of a ZBlk0 / ZData record (checked to fit `limit`, and
    against their digest if they have one; sums[0] += 1 if not)."""
    _activate(obj, what)
    try:
        state = obj.__dict__.get('_data')
        h = obj.__dict__.get('_h')
    finally:
        obj._p_deactivate()
    if not isinstance(state, bytes):
        raise _Bad(_hex(obj._p_oid), '%s record holds a %s, not bytes'
                   % (what, type(state).__name__))
    if len(state) > limit:
        raise _Bad(_hex(obj._p_oid), 'wrong record size: %s holds %d bytes, more '
                   'than the %d it has room for' % (what, len(state), limit))
    if h is None:
        sums[0] += 1
    elif _digest(state) != h:
        raise _Bad(_hex(obj._p_oid), 'checksum mismatch: %s holds bytes that are '
                   'not those committed' % what)
    return state


def _read_seg(z, bs, sums):
    from ZODB.blob import Blob
    oid = _hex(z._p_oid)
    _activate(z, 'segment block')
    try:
        d = z.__dict__
        seg, index, h, fsize = d.get('seg'), d.get('index'), d.get('h'), d.get('fsize')
    finally:
        z._p_deactivate()
    if not isinstance(seg, Blob):
        raise _Bad(oid, 'segment block names a %s, not a Blob' % type(seg).__name__)
    if not isinstance(index, int) or index < 0:
        raise _Bad(oid, 'segment block has a bad index %r' % (index,))
    soid = _hex(seg._p_oid)
    try:
        f = seg.open('r')
    except Exception as e:
        raise _Bad(soid, 'blob file missing or unreadable: %s' % _err(e)) from None
    try:
        size = os.fstat(f.fileno()).st_size
        if size < (index + 1) * bs:
            raise _Bad(soid, 'blob file %s is truncated: %d bytes, block %d of the '
                       'segment needs %d' % (f.name, size, index, (index + 1) * bs))
        if fsize is not None and size != fsize:
            raise _Bad(soid, 'wrong blob file size: %s is %d bytes, %d when committed'
                       % (f.name, size, fsize))
        f.seek(index * bs)
        data = f.read(bs)
        if len(data) != bs:
            raise _Bad(soid, 'short read of blob file %s' % f.name)
        if h is None:
            sums[0] += 1
        elif _digest(data) != h:
            raise _Bad(oid, 'checksum mismatch: blob file %s does not hold the bytes '
                       'committed for block %d of the segment' % (f.name, index))
        return data
    except OSError as e:
        raise _Bad(soid, 'blob file %s unreadable: %s' % (f.name, _err(e))) from None
    finally:
        f.close()
        if not seg._p_changed:
            seg._p_deactivate()


def _read_zblk1(z, bs, sums):
    from wendelin_cy.bigfile.file_zodb import ZBlk0, ZBlkSeg, ZData
    oid = _hex(z._p_oid)
    cs, base, tab = _fields(z, 'ZBlk1', 'chunksize', 'base', 'chunktab')
    try:
        chunks = list(tab.items())
    except Exception as e:
        raise _Bad(oid, 'load error (chunk table): %s' % _err(e)) from None
    if not isinstance(cs, int) or cs <= 0 or bs % cs:
        raise _Bad(oid, 'ZBlk1 chunk size %r does not divide the block size %d' % (cs, bs))
    buf = bytearray(bs)
    if base is not None:
        if type(base) is ZBlk0:
            data = _bytes_state(base, bs, 'ZBlk1 base ZBlk0', sums)
        elif type(base) is ZBlkSeg:
            data = _read_seg(base, bs, sums)
        else:
            raise _Bad(oid, 'ZBlk1 base is a %s' % type(base).__name__)
        buf[:len(data)] = data
    for off, zd in chunks:
        if not isinstance(off, int) or off % cs or not 0 <= off < bs:
            raise _Bad(oid, 'ZBlk1 chunk at offset %r: not a multiple of %d inside '
                       'the block' % (off, cs))
        if not isinstance(zd, ZData):       # (or wendelin.core's, a subclass)
            raise _Bad(oid, 'ZBlk1 chunk at offset %d is a %s, not ZData'
                       % (off, type(zd).__name__))
        data = _bytes_state(zd, min(cs, bs - off), 'ZData chunk at %d' % off, sums)
        end = min(off + cs, bs)
        buf[off:off + len(data)] = data
        buf[off + len(data):end] = bytes(end - off - len(data))
    return bytes(buf)


def _read_block(z, fmt, bs, sums):
    """Stored bytes of block record `z`; _Bad for any problem; sums[0] > 0
    if a record of it has no checksum."""
    if fmt == 'ZBlk0':
        return _bytes_state(z, bs, 'ZBlk0', sums)
    if fmt == 'ZBlk1':
        return _read_zblk1(z, bs, sums)
    if fmt == 'blob':
        return _read_seg(z, bs, sums)
    raise _Bad(_hex(getattr(z, '_p_oid', None)),
               'unknown block record type %s' % type(z).__name__)


def verify_array(key, A, checks=None, bar=None):
    """Verify one ZBigArray -> Report (arrays=1)."""
    from wendelin_cy.dbinfo import block_format
    checks = CONTENT_CHECKS if checks is None else checks
    problems = []
    nblk = nbytes = unchecked = 0
    try:
        zfile = A.zfile
        bs = zfile.blksize
        nblocks = -(-A.nbytes // bs)
        blktab = zfile.blktab
        entries = blktab.items()
    except Exception as e:
        problems.append(Problem(key, None, _hex(A._p_oid), None,
                                'array or block table unreadable: %s' % _err(e)))
        return Report(1, 0, 0, problems)
    conn = A._p_jar
    try:
        for blk, z in entries:
            fmt = block_format(z)
            oid = _hex(getattr(z, '_p_oid', None))
            if not 0 <= blk < nblocks:
                problems.append(Problem(key, blk, oid, fmt, 'block beyond the end '
                                        'of the array (%d blocks)' % nblocks))
            sums = [0]
            try:
                data = _read_block(z, fmt, bs, sums)
            except _Bad as e:
                problems.append(Problem(key, blk, e.oid, fmt, e.message))
            else:
                nblk += 1
                unchecked += sums[0] > 0
                nbytes += len(data)
                ref = BlockRef(key, A, blk, oid, fmt, bs)
                for check in checks:
                    msg = check(ref, data)
                    if msg:
                        problems.append(Problem(key, blk, oid, fmt, msg))
                del data
            if bar is not None:
                bar.update(1)
            if conn is not None and nblk % 64 == 0:
                conn.cacheGC()
    except Exception as e:          # the block table itself (a bucket)
        problems.append(Problem(key, None, _hex(blktab._p_oid), None,
                                'block table unreadable: %s' % _err(e)))
    return Report(1, nblk, nbytes, problems, unchecked)


def verify_database(root, key=None, checks=None, progress=False):
    """Verify the array at key path `key`, or every array below root and the
    arrays of unfinished imports -> Report."""
    from wendelin_cy import io, keypath
    if key is not None:
        targets = [(keypath.join(keypath.split(key)), keypath.resolve_array(root, key))]
    else:
        targets = list(keypath.walk(root))
        targets += [(k + ' (unfinished import)', rec['array'])
                    for k, rec in sorted(io.partial_imports(root).items())]
    total = 0
    for _, A in targets:
        try:
            total += len(A.zfile.blktab)
        except Exception:
            pass
    bar = io.progress_bar(progress, total, 'verify', unit='blk')
    arrays = blocks = nbytes = unchecked = 0
    problems = []
    try:
        for k, A in targets:
            r = verify_array(k, A, checks, bar)
            arrays += 1
            blocks += r.blocks
            nbytes += r.nbytes
            unchecked += r.unchecked
            problems += r.problems
    finally:
        bar.close()
    return Report(arrays, blocks, nbytes, problems, unchecked)
