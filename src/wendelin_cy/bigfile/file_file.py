"""BigFile over a plain local file: block ``blk`` is bytes
``[blk*blksize, (blk+1)*blksize)``; past the end of the file reads zeros.

Blocks are loaded by the pager itself with ``pread`` on the file descriptor,
without the GIL and without any Python on the fault path.
"""
import os

from . import BigFile

__all__ = ["BigFile_File"]


class BigFile_File(BigFile):
    def __init__(self, path, blksize, create=True, readonly=False):
        BigFile.__init__(self, blksize)
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        flags = os.O_RDONLY if readonly else os.O_RDWR | (os.O_CREAT if create else 0)
        self._fd = os.open(self.path, flags | os.O_CLOEXEC, 0o666)
        self._set_direct_fd(self._fd, 0)

    def fileno(self):
        return self._fd

    def loadblk(self, blk, buf):
        n = os.preadv(self._fd, [buf], blk * self.blksize)
        if n < len(buf):
            buf[n:] = bytes(len(buf) - n)

    def storeblk(self, blk, buf):
        if self.readonly:
            raise PermissionError("%s is opened read-only" % self.path)
        off = blk * self.blksize
        view = memoryview(buf)
        while len(view):
            n = os.pwrite(self._fd, view, off)
            view = view[n:]
            off += n

    def sync(self):
        os.fsync(self._fd)

    def size(self):
        return os.fstat(self._fd).st_size

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __repr__(self):
        return "<BigFile_File %r blksize=%d>" % (self.path, self.blksize)
