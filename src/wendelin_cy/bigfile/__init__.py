"""BigFile: the contract between the pager and a storage of fixed-size blocks.

A BigFile has ``blksize`` and two methods: ``loadblk(blk, buf)`` fills the
writable memoryview ``buf`` with block ``blk`` (zeros for a hole) and
``storeblk(blk, buf)`` persists it.  Instead of writing zeros, loadblk may
``return HOLE``: the pager gives the block zero pages itself; or ``return
MapFile(path, offset)``: the block is that extent of an immutable file, which the
pager maps without a copy (a subclass that wraps such a loadblk must pass its
result on).  ``fileh_open()`` gives a handle whose
``mmap(pgoffset, pglen)`` windows are real memory: reads load blocks on demand,
writes are tracked, and ``dirty_writeout()`` / ``dirty_discard()`` end the
changes.  Backends: ``file_file.BigFile_File`` (a local file),
``file_ram.BigFile_RAM`` (RAM), ``file_zodb.ZBigFile`` (ZODB).
"""
from .._pager.virtmem import (BigFile, BigFileH, VMA, WRITEOUT_STORE,
                              WRITEOUT_MARKSTORED, HOLE, MapFile, ram_reclaim)

__all__ = ["BigFile", "BigFileH", "VMA", "WRITEOUT_STORE", "WRITEOUT_MARKSTORED", "HOLE",
           "MapFile", "ram_reclaim"]
