"""What is in a database: the ZBigArrays below its root and how they are stored.

``database_info(root)`` -> {'arrays': [array_info, ...], 'partial': [...]}
(the arrays that ``keypath.walk`` finds, and the unfinished imports of
``wendelin_cy.io``); ``array_info(key, A)`` describes one array:

``key``, ``oid``, ``shape``, ``dtype``, ``order``, ``blksize``, ``zblk_fmt``,
``nbytes`` (its data as numpy sees it), ``nblocks``, ``blocks`` (how many
blocks are stored in each format: ``ZBlk0``, ``ZBlk1``, ``blob`` (a part of a
blob segment file), ``hole`` (not stored: reads as zeros), ``other``),
``disk_bytes`` (total and by format: bytes of the blocks' records and of their
parts of blob files; the BTree holding the block table is not counted),
``last_tid`` / ``last_commit`` (the newest transaction that wrote the array,
its block table or one of its blocks, as a hex tid and an ISO 8601 UTC time).

The block formats are told from the class of each entry of
``ZBigFile.blktab`` (no block is loaded for that).  Sizes come from the
storage: for a FileStorage from each record's header, for other storages by
loading the records (over a network storage that reads every block once).
"""

import datetime
import os
from typing import Any

__all__ = ['database_info', 'array_info', 'block_format', 'FORMATS']

FORMATS = ('ZBlk0', 'ZBlk1', 'blob', 'hole', 'other')


def block_format(z: Any) -> str:
    """'ZBlk0', 'ZBlk1', 'blob', 'hole' (None) or 'other' for an entry of
    ``ZBigFile.blktab`` (a ghost stays a ghost)."""
    from wendelin_cy.bigfile.file_zodb import ZBlk0, ZBlk1, ZBlkSeg
    from wendelin_cy.bigfile import _wcore      # (wendelin.core's formats)
    if z is None:
        return 'hole'
    t = type(z)
    return {ZBlk0: 'ZBlk0', ZBlk1: 'ZBlk1', ZBlkSeg: 'blob', _wcore.ZBlk0: 'ZBlk0',
            _wcore.ZBlk1: 'ZBlk1'}.get(t, 'other')


def tid_time(tid: bytes | None) -> str | None:
    """8-byte tid -> ISO 8601 UTC time string (None for None)."""
    if not tid:
        return None
    from ZODB.TimeStamp import TimeStamp
    t = TimeStamp(tid).timeTime()
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
        timespec='seconds')


class _Records:
    """Size and tid of records (and blob files), from the storage."""

    def __init__(self, conn):
        from wendelin_cy.storage import backend_for
        self.storage = conn.db().storage
        self.backend = backend_for(self.storage)
        self.blobs = {}

    def stat(self, oid):
        """-> (bytes, tid) of the current record of oid."""
        got = self.backend.record_size(self.storage, oid)
        if got is not None:
            return got
        data, tid = self.storage.load(oid)
        return len(data), tid

    def blob_size(self, blob):
        """Bytes of the committed file of Blob `blob` (0 if not found)."""
        oid = blob._p_oid
        if oid not in self.blobs:
            size = 0
            try:
                _, tid = self.stat(oid)
                size = os.stat(self.storage.loadBlob(oid, tid)).st_size
            except Exception:
                pass
            self.blobs[oid] = size
        return self.blobs[oid]


def _max(a, b):
    return b if a is None or (b is not None and b > a) else a


def array_info(key: str, A: Any, sizes: bool = True) -> dict[str, Any]:
    """Description of ZBigArray `A` (found at key path `key`); sizes=False
    skips ``disk_bytes`` and ``last_tid`` (no record is read then)."""
    zfile = A.zfile
    bs = zfile.blksize
    nblocks = -(-A.nbytes // bs)
    blocks = dict.fromkeys(FORMATS, 0)
    disk = dict.fromkeys(FORMATS, 0)
    last = _max(_max(A._p_serial, zfile._p_serial), zfile.blktab._p_serial)
    rec = _Records(A._p_jar) if sizes and A._p_jar is not None else None
    stored = 0
    for blk, z in zfile.blktab.items():
        fmt = block_format(z)
        blocks[fmt] += 1
        stored += 1
        if rec is not None:
            n, tid = _block_disk(rec, z, fmt, bs)
            disk[fmt] += n
            last = _max(last, tid)
    blocks['hole'] = max(0, nblocks - stored)
    info = {
        'key': key, 'oid': _hex(A._p_oid), 'shape': list(A.shape),
        'dtype': str(A.dtype), 'order': A.order, 'blksize': bs,
        'zblk_fmt': getattr(zfile, 'zblk_fmt', None),
        'nbytes': A.nbytes, 'nblocks': nblocks, 'blocks': blocks,
    }
    if rec is not None:
        disk['total'] = sum(disk.values())
        info['disk_bytes'] = disk
        info['last_tid'] = last.hex() if last else None
        info['last_commit'] = tid_time(last)
    return info


def _block_disk(rec, z, fmt, bs):
    """(bytes on disk, newest tid) of the records of one block."""
    n, tid = rec.stat(z._p_oid)
    if fmt == 'ZBlk1':
        z._p_activate()
        try:
            parts = [zd for _, zd in z.chunktab.items()]
            if z.base is not None:
                parts.append(z.base)
        finally:
            z._p_deactivate()
        for p in parts:
            if block_format(p) == 'blob':
                m, t = _block_disk(rec, p, 'blob', bs)
            else:
                m, t = rec.stat(p._p_oid)
            n += m
            tid = _max(tid, t)
    elif fmt == 'blob':
        z._p_activate()
        try:
            seg, index = z.seg, z.index
        finally:
            z._p_deactivate()
        n += max(0, min(bs, rec.blob_size(seg) - index * bs))
    return n, tid


def _hex(oid):
    return '0x' + oid.hex() if oid else None


def database_info(root: Any, sizes: bool = True) -> dict[str, Any]:
    """{'arrays': [array_info of each array below root], 'partial':
    [{'key', 'done', 'nbytes', 'source', 'array': array_info}]}."""
    from wendelin_cy import keypath, io
    arrays = [array_info(k, A, sizes) for k, A in keypath.walk(root)]
    partial = []
    for k, rec in sorted(io.partial_imports(root).items()):
        partial.append({'key': k, 'done': rec['done'], 'nbytes': rec['nbytes'],
                        'source': dict(rec['source']),
                        'array': array_info(k, rec['array'], sizes)})
    return {'arrays': arrays, 'partial': partial}
