"""APIs and behaviours that wendelin.core's users rely on (issue 17): each is
checked here against a model, because CI does not run wendelin.core's own
suite (benchmarks/compat/run_wendelin_core_tests.sh does)."""
import threading

import pytest

from wendelin_cy.bigfile import BigFile, WRITEOUT_STORE

BS = 64 << 10


class NewStyleFile(BigFile):
    """wendelin.core's way: blksize given to BigFile.__new__ by the subclass's
    own __new__, whose other arguments are the subclass's."""

    def __new__(cls, head, blksize):
        obj = BigFile.__new__(cls, blksize)
        obj.head = head
        obj.stored = []
        return obj

    def loadblk(self, blk, buf):
        buf[:len(self.head)] = self.head
        buf[len(self.head):] = bytes([blk & 0xff]) * (len(buf) - len(self.head))

    def storeblk(self, blk, buf):
        self.stored.append((blk, bytes(buf[:8])))


def test_bigfile_new_takes_blksize():
    f = NewStyleFile(b'head', BS)
    assert f.blksize == BS
    fh = f.fileh_open()
    m = memoryview(fh.mmap(3, 2))
    assert m[:4] == b'head' and m[4] == 3 and m[BS + 4] == 4
    m[BS + 5] = 0x41
    fh.dirty_writeout(WRITEOUT_STORE)
    assert f.stored == [(4, b'head\x04A\x04\x04')]
    del m


def test_bigfile_init_still_validates():
    with pytest.raises(ValueError):
        BigFile(BS + 1)
    with pytest.raises(TypeError):
        BigFile()
    with pytest.raises(TypeError):
        BigFile(BS, BS)             # no __new__ of a subclass gave blksize
    assert BigFile(blksize=BS).blksize == BS

    class Sub(BigFile):             # the project's way: __init__ calls BigFile.__init__
        def __init__(self, nblk):
            BigFile.__init__(self, BS)
            self.nblk = nblk
    s = Sub(3 * 4096)               # an int that would be a valid blksize
    assert s.blksize == BS and s.nblk == 3 * 4096


class PartialFile(BigFile):
    """loadblk writes only the first 16 bytes (wendelin.core users' files that
    are shorter than a block do that)."""

    def loadblk(self, blk, buf):
        buf[:16] = bytes([blk + 1]) * 16

    def storeblk(self, blk, buf):
        pass


def test_unwritten_bytes_read_zero(budget):
    budget(1 << 20)                 # 16 blocks: the loads below recycle slots
    full = NewStyleFile(b'x', BS)   # fills its blocks with non-zero bytes
    fh = full.fileh_open()
    m = memoryview(fh.mmap(1, 40))
    assert sum(m[i * BS + 7] for i in range(40)) == sum(range(1, 41))
    f = PartialFile(BS)
    fh2 = f.fileh_open()
    m2 = memoryview(fh2.mmap(0, 40))
    for blk in range(40):
        b = m2[blk * BS:(blk + 1) * BS]
        assert b[:16] == bytes([blk + 1]) * 16
        assert b[16:] == bytes(BS - 16), blk
    del m, m2, b


def test_invalidate_while_loading_does_not_wait():
    """Thread A's loadblk waits for thread B, which invalidates that block
    first (ZEO: an invalidation arrives while a load waits on the storage
    lock): B must not wait for A's load; A's first result is thrown away and
    the block is loaded again."""
    ready, go = threading.Event(), threading.Event()
    loads = []

    class F(BigFile):
        def loadblk(self, blk, buf):
            loads.append(blk)
            if len(loads) == 1:
                ready.set()
                assert go.wait(30)
                buf[:] = b'1' * len(buf)       # stale: must not be seen
            else:
                buf[:] = b'2' * len(buf)

        def storeblk(self, blk, buf):
            pass

    f = F(BS)
    fh = f.fileh_open()
    m = memoryview(fh.mmap(0, 1))
    seen = []
    a = threading.Thread(target=lambda: seen.append(m[5]))
    a.start()
    assert ready.wait(30)
    fh.invalidate_page(0)           # returns although the load is in progress
    go.set()
    a.join(30)
    assert not a.is_alive()
    assert seen == [ord('2')] and loads == [0, 0]
    assert m[BS - 1] == ord('2') and loads == [0, 0]
    m.release()
