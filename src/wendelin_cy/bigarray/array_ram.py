"""RAMArray: a BigArray whose bytes live in RAM (wendelin.core's array_ram).

The bytes are in an unlinked file in /dev/shm (the temp dir if there is
none) mapped MAP_SHARED: nothing is persisted; views are plain ndarrays as
for any BigArray.  ``_RAMFileH`` is the file handle (``._fh`` its fd,
``._prot`` the protection it maps with: tests set ``mmap.PROT_READ``).
"""

import errno
import mmap
import os
import tempfile
import threading

from wendelin_cy.bigarray import BigArray

__all__ = ['RAMArray']

pagesize = 2 * 1024 * 1024      # the block size, as wendelin.core's


class RAMArray(BigArray):
    """BigArray(shape, dtype, order) over a _RAMFileH."""

    def __init__(self, shape, dtype, order='C'):
        super().__init__(shape, dtype, _RAMFileH(), order)


class _RAMFileH:
    _prot = mmap.PROT_READ | mmap.PROT_WRITE
    blksize = pagesize

    def __init__(self):
        d = '/dev/shm' if os.path.isdir('/dev/shm') else None
        fd, path = tempfile.mkstemp(dir=d, prefix='wendelin_cy-ram.')
        os.unlink(path)
        self._fh = fd
        self._lock = threading.Lock()   # file growth vs concurrent mmap()

    def mmap(self, pgoffset, pglen):
        if pgoffset < 0 or pglen <= 0:
            raise ValueError('mmap: bad page range (%r, %r)' % (pgoffset, pglen))
        end = (pgoffset + pglen) * self.blksize
        with self._lock:
            if os.fstat(self._fh).st_size < end:
                try:
                    os.ftruncate(self._fh, end)
                except OverflowError as e:
                    raise MemoryError(e) from None
            try:
                return _VMA(self._fh, pgoffset, pglen, self.blksize, self._prot)
            except OSError as e:
                if e.errno == errno.ENOMEM:
                    raise MemoryError(e) from None
                raise

    def close(self):
        fd, self._fh = self._fh, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self):
        self.close()


class _VMA(mmap.mmap):
    __slots__ = ('_pgoffset', '_pglen', '_pagesize', 'pyuser')

    def __new__(cls, fd, pgoffset, pglen, pagesize, prot):
        vma = mmap.mmap.__new__(cls, fd, pglen * pagesize, flags=mmap.MAP_SHARED,
                                prot=prot, offset=pgoffset * pagesize)
        vma._pgoffset, vma._pglen, vma._pagesize = pgoffset, pglen, pagesize
        return vma

    def pagesize(self):
        return self._pagesize

    def filerange(self):
        return (self._pgoffset, self._pglen)

    def prefault(self, offset, length, write=False):
        pass    # plain shared memory: nothing to prepare
