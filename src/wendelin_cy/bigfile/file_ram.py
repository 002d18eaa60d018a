"""BigFile kept in RAM (a dict of blocks): for tests and scratch arrays.

Stored blocks live in this process's heap, outside the pager's budget; holes
(never stored) cost nothing and read as zeros.
"""
from . import BigFile

__all__ = ["BigFile_RAM"]


class BigFile_RAM(BigFile):
    def __init__(self, blksize):
        BigFile.__init__(self, blksize)
        self.blocks = {}
        self.nload = 0
        self.nstore = 0

    def loadblk(self, blk, buf):
        self.nload += 1
        data = self.blocks.get(blk)
        if data is None:
            # (not `return HOLE`: subclasses that wrap loadblk and do not pass
            # its result on would leave garbage in the block)
            buf[:] = bytes(len(buf))
        else:
            buf[:] = data

    def storeblk(self, blk, buf):
        self.nstore += 1
        data = bytes(buf)
        if data.count(0) == len(data):
            self.blocks.pop(blk, None)
        else:
            self.blocks[blk] = data

    def __repr__(self):
        return "<BigFile_RAM blksize=%d, %d blocks>" % (self.blksize, len(self.blocks))
