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


def test_ram_reclaim_evicts_clean_blocks_only(budget):
    from wendelin_cy.bigfile import ram_reclaim
    from wendelin_cy.bigfile.file_ram import BigFile_RAM
    budget(64 << 20)
    while ram_reclaim():            # other tests' blocks
        pass
    f = BigFile_RAM(BS)
    for blk in range(10):
        f.blocks[blk] = bytes([blk + 1]) * BS
    fh = f.fileh_open()
    m = memoryview(fh.mmap(0, 10))
    assert [m[i * BS] for i in range(10)] == list(range(1, 11))
    m[3 * BS] = 0xee                # dirty: stays
    n0 = f.nload
    evicted = 0
    while True:
        k = ram_reclaim()
        if not k:
            break
        evicted += k
    assert evicted == 9
    assert [m[i * BS] for i in range(10)] == [1, 2, 3, 0xee] + list(range(5, 11))
    assert f.nload - n0 == 9        # the clean ones came back from the file
    m.release()
    assert fh.uses_mmap_overlay() is False


@pytest.fixture
def zroot(tmp_path):
    from wendelin_cy.lib.zodb import dbopen, dbclose
    import transaction
    root = dbopen(str(tmp_path / 'a.fs'))
    yield root
    transaction.abort()
    dbclose(root)


def test_zblk_fmt_write_and_registry(zroot):
    import transaction
    from wendelin_cy.bigfile import file_zodb
    from wendelin_cy.bigfile.file_zodb import ZBigFile, ZBlk_fmt_registry, _ZBlk_auto
    assert ZBlk_fmt_registry['ZBlk0'] is file_zodb.ZBlk0
    assert ZBlk_fmt_registry['ZBlk1'] is file_zodb.ZBlk1
    assert ZBlk_fmt_registry['auto'] is _ZBlk_auto
    assert set(ZBlk_fmt_registry) == set(file_zodb.ZBLK_FORMATS)
    assert file_zodb.ZBlk_fmt_write == 'auto'       # the environment's (unset)
    zroot['f'] = f = ZBigFile(BS)
    transaction.commit()
    fh = f.fileh_open()
    m = memoryview(fh.mmap(0, 1))
    try:
        for fmt in ('ZBlk1', 'ZBlk0', 'ZBlk1'):
            file_zodb.ZBlk_fmt_write = fmt
            m[0] = (m[0] + 1) % 256
            transaction.commit()
            assert type(f.blktab[0]) is ZBlk_fmt_registry[fmt]
        file_zodb.ZBlk_fmt_write = 'nonsense'
        m[0] = 9
        with pytest.raises(ValueError, match='nonsense'):
            transaction.commit()
        transaction.abort()
    finally:
        del file_zodb.ZBlk_fmt_write
        m.release()
    assert file_zodb.ZBlk_fmt_write == 'auto'


def test_zodb_helpers(zroot, tmp_path):
    import transaction
    from BTrees.LOBTree import LOBTree
    from persistent import Persistent
    from wendelin_cy.lib import zodb
    conn = zroot._p_jar
    zroot['live'] = live = zodb.LivePersistent()
    zroot['t'] = t = LOBTree()
    vals = []
    for i in range(300):            # several buckets
        v = Persistent()
        t[i] = v
        vals.append(v)
    transaction.commit()
    live._p_deactivate()
    assert live._p_state >= 0       # never a ghost ...
    live._p_invalidate()
    assert live._p_state < 0        # ... but invalidations still apply
    for v in vals:
        v._p_activate()
    zodb.deactivate_btree(t)
    assert t._p_state < 0 and all(v._p_state < 0 for v in vals)
    # the snapshot seen: the last transaction committed before it began
    at = zodb.zconn_at(conn)
    assert at == conn.db().storage.lastTransaction()
    zroot['x'] = 1
    transaction.commit()
    assert zodb.zconn_at(conn) == conn.db().storage.lastTransaction() != at
    assert zodb.zstor_2zurl(conn.db().storage) == 'file://' + str(tmp_path / 'a.fs')
    assert zodb.zurl_normalize_main('neo://c@b:2,a:1?cert=x&compress=1') == 'neos://c@a:1,b:2'
    with pytest.raises(NotImplementedError):
        zodb.zurl_normalize_main('bogus://x')
    st = zodb.dbstoropen(str(tmp_path / 'b.fs'))   # the storage, as wendelin.core
    try:
        assert st.lastTransaction() is not None
    finally:
        st.close()
    conn.close()
    with pytest.raises(Exception, match='closed'):
        zodb.zconn_at(conn)
    conn.open()


def test_zbigarray_state_without_order(zroot):
    import numpy as np
    import transaction
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    zroot['a'] = a = ZBigArray((10,), np.int32)
    del a._order
    assert 'order' not in a.__getstate__()
    b = ZBigArray((10,), np.int32)
    b.__setstate__(a.__getstate__())
    assert b._order == 'C'
    transaction.abort()


def test_structured_base_chain():
    import numpy as np
    from wendelin_cy.lib.xnumpy import structured
    a = np.arange(12, dtype=np.int32).reshape(4, 3)[:, :2]
    s = structured(a, np.dtype([('x', np.int32), ('y', np.int32)]))
    assert s.base.base is a                 # through numpy's array-interface holder
    s['y'][1] = 77
    assert a[1, 1] == 77


def test_zbigfile_with_open_handle_is_not_ghosted(zroot):
    import transaction
    from wendelin_cy.bigfile.file_zodb import ZBigFile
    zroot['f'] = f = ZBigFile(BS)
    transaction.commit()
    fh = f.fileh_open()
    m = memoryview(fh.mmap(0, 1))
    m[0] = 5
    transaction.commit()
    zroot._p_jar.cacheMinimize()
    assert f._p_state >= 0                  # not a ghost while a handle is open
    m[0] = 6
    transaction.commit()
    m.release()
    fh.close()
    zroot._p_jar.cacheMinimize()
    assert f._p_state < 0                   # without one it may go
    assert memoryview(f.fileh_open().mmap(0, 1))[0] == 6


# ~~~ issue 17 part 2, continued: bigarray.ArrayRef / _flatbytev, array_ram,
# BigArray.data, append dtype error, block format changes

def _arrayref_ok(x, root):
    """ArrayRef(x) has root `root`, its [lo, hi) covers exactly the bytes of
    x, and deref() remakes x from those bytes only."""
    import numpy as np
    from wendelin_cy.bigarray import ArrayRef, _flatbytev
    ref = ArrayRef(x)
    assert ref.root is root
    assert ref.shape == x.shape and ref.dtype == x.dtype
    y = ref.deref()
    assert type(y) is type(x) and y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)
    if x.size:
        assert ref.stridev == x.strides
        # only bytes [lo, hi) of the root matter
        flat = np.copy(_flatbytev(root[...] if not isinstance(root, np.ndarray) else root))
        for fill in (0, 0xff):
            flat[:ref.lo] = fill
            flat[ref.hi:] = fill
            ref.root = flat
            np.testing.assert_array_equal(ref.deref(), x)
    return ref


def test_arrayref_ndarray_attributes():
    import numpy as np
    from wendelin_cy.bigarray import ArrayRef
    data = np.arange(1000, dtype=np.uint16).view(np.uint8)
    ref = ArrayRef(data[100:140])
    assert ref.root is data.base        # the outermost ndarray
    assert (ref.lo, ref.hi, ref.z0) == (100, 140, 0)
    ref = ArrayRef(data[139:99:-1])
    assert (ref.lo, ref.hi, ref.z0, ref.stridev) == (100, 140, 39, (-1,))
    ref = ArrayRef(data[5:1])           # empty: one byte, offset 0
    assert (ref.lo, ref.hi, ref.z0, ref.shape) == (0, 1, 0, (0,))
    assert ref.deref().shape == (0,)


def _views(a):
    import numpy as np
    from numpy.lib.stride_tricks import as_strided
    u32 = a[:4000].view(np.uint32)
    yield a[1:10:3]
    yield a[10:1:-2]
    yield a[2:-2].view(np.uint32)[::-1]
    yield a[1:1 + 5 * 10].view('V5')[::-1]
    yield u32.reshape(8, -1)[:, ::-1]
    yield np.swapaxes(u32.reshape(8, -1), 0, 1)[::-1]
    yield u32.reshape(8, -1)[:, np.newaxis, :]
    yield as_strided(u32, strides=(1,))[:100]
    yield a[:4000].view([('w', '<i2'), ('l', '<i2')])['l']
    yield a[:4000].view([('w', '<i2'), ('l', '<i2')]).view(np.recarray)


def test_arrayref_views_of_ndarray_and_bigarray():
    import numpy as np
    from wendelin_cy.bigarray import BigArray
    from wendelin_cy.bigarray.array_ram import RAMArray
    data = np.random.RandomState(0).randint(0, 256, 8192).astype(np.uint8)
    rdata = np.asarray(memoryview(data[::-1]))      # a root with stride -1
    for root, a in ((data, data), (rdata, rdata[::-1])):
        for v in _views(a):
            _arrayref_ok(v, root)

    class Data(BigFile):
        def loadblk(self, blk, buf):
            seg = data[blk * BS:(blk + 1) * BS]
            buf[:len(seg)] = seg.tobytes()

        def storeblk(self, blk, buf):
            raise AssertionError('not written')
    f = Data(BS)
    A = BigArray((len(data),), np.uint8, f.fileh_open())
    R = RAMArray((len(data),), np.uint8)
    R[...] = data
    for root in (A, R):
        for v in _views(root[...]):
            ref = _arrayref_ok(v, root)
            assert ref.hi <= root.nbytes
        # a view of a slice that starts inside the file: offsets are the array's
        v = root[3000:3100]
        ref = _arrayref_ok(v, root)
        assert (ref.lo, ref.hi) == (3000, 3100)


def test_flatbytev_is_memory_order():
    import numpy as np
    from wendelin_cy.bigarray import _flatbytev
    a = np.arange(24, dtype=np.int16).reshape(4, 6)
    for x in (a, a[::-1], a[:, ::-1], a.T, np.asfortranarray(a)):
        b = _flatbytev(x)
        assert b.dtype == np.uint8 and b.ndim == 1 and b.nbytes == x.nbytes
        assert sorted(b.view(np.int16).tolist()) == list(range(24))
        p = x.__array_interface__['data'][0]
        assert b.__array_interface__['data'][0] == min(
            p + i * x.strides[0] + j * x.strides[1] for i in (0, 3) for j in (0, 5))


def test_ramarray_and_bigarray_compat_errors():
    import numpy as np
    from wendelin_cy.bigarray.array_ram import RAMArray
    R = RAMArray((10, 3), np.int32, order='F')
    with pytest.raises(TypeError):
        R.data
    R[...] = np.arange(30).reshape(10, 3)
    R.append(np.ones((10, 2), np.int32))
    assert R.shape == (10, 5)
    np.testing.assert_array_equal(R[:, 3:], 1)
    with pytest.raises(ValueError):     # (a TypeError too)
        R.append(np.asarray([[0]] * 10, dtype=object))
    with pytest.raises(TypeError):
        R.append(np.zeros((10, 1), np.float64))
    assert R.shape == (10, 5)


def test_fmt_change_rewrites_unchanged_block(zroot):
    import transaction
    from wendelin_cy.bigfile import file_zodb
    from wendelin_cy.bigfile.file_zodb import ZBigFile, ZBlk_fmt_registry
    zroot['f'] = f = ZBigFile(BS)
    transaction.commit()
    fh = f.fileh_open()
    m = memoryview(fh.mmap(0, 2))
    try:
        # a zero block written with the knob assigned: stored, not a hole
        for fmt in ('ZBlk0', 'ZBlk1', 'blob', 'ZBlk1', 'ZBlk0'):
            file_zodb.ZBlk_fmt_write = fmt
            m[0] = 0                        # dirty, same (zero) bytes
            transaction.commit()
            assert type(f.blktab[0]) is ZBlk_fmt_registry[fmt]
        # same nonzero bytes, another format: rewritten in the new one
        m[BS + 7] = 5
        transaction.commit()
        for fmt in ('ZBlk1', 'ZBlk0', 'ZBlk1'):
            file_zodb.ZBlk_fmt_write = fmt
            m[BS + 7] = 5
            transaction.commit()
            assert type(f.blktab[1]) is ZBlk_fmt_registry[fmt]
            assert bytes(m[BS:BS + 8]) == b'\0' * 7 + b'\x05'
        # same bytes, same format: nothing stored
        z = f.blktab[1]
        m[BS + 7] = 5
        transaction.commit()
        assert f.blktab[1] is z
    finally:
        del file_zodb.ZBlk_fmt_write
        m.release()
    # without the knob (auto), a zero block is a hole again
    m = memoryview(fh.mmap(0, 1))
    m[:] = b'\0' * BS
    transaction.commit()
    assert 0 not in f.blktab
    m.release()


def test_clean_handle_freed_after_its_connection_closes(tmp_path):
    """A handle with a live view when its connection closes leaves the
    transaction it joined: once the view and the file go, it is freed (the
    transaction, which closing the connection does not end, kept it)."""
    import gc
    import weakref
    import transaction
    from wendelin_cy.bigfile.file_zodb import ZBigFile
    from wendelin_cy.lib.zodb import dbopen
    root = dbopen(str(tmp_path / 'g.fs'))
    conn = root._p_jar
    db = conn.db()
    try:
        root['f'] = f = ZBigFile(BS)
        transaction.commit()
        fh = f.fileh_open()
        vma = fh.mmap(0, 1)
        assert memoryview(vma)[0] == 0
        wfh = weakref.ref(fh)
        conn.close()
        del vma, fh, f, root
        gc.collect()
        assert wfh() is None
        # the database still works, in the same transaction
        conn2 = db.open()
        f2 = conn2.root()['f']
        m = memoryview(f2.fileh_open().mmap(0, 1))
        m[0] = 7
        transaction.commit()
        assert m[0] == 7
        m.release()
        conn2.close()
    finally:
        transaction.abort()
        db.close()


def test_arrayref_random_views_property():
    """ArrayRef(v).deref() == v for random basic-indexed, transposed and
    re-typed views of an ndarray and of a RAMArray (a BigArray)."""
    import numpy as np
    from hypothesis import given, settings, strategies as st
    from wendelin_cy.bigarray.array_ram import RAMArray
    data = np.arange(48 * 40, dtype=np.uint16).reshape(48, 40).copy()   # (no .base)
    R = RAMArray(data.shape, data.dtype)
    R[...] = data
    sl = st.builds(slice, st.integers(-50, 50) | st.none(), st.integers(-50, 50) | st.none(),
                   st.sampled_from([None, 1, 2, 3, -1, -2, -5]))

    @settings(max_examples=150, deadline=None)
    @given(sl, sl, st.booleans(), st.sampled_from([None, np.uint8, np.int16]))
    def check(s0, s1, transpose, dt):
        for root, a in ((data, data), (R, R[...])):
            v = a[s0, s1]
            if transpose:
                v = v.T
            if dt is not None and v.size and v.strides[-1] == v.itemsize:
                v = v.view(dt)
            _arrayref_ok(v, root)
    check()


def test_handle_kept_across_connection_close_works_again(tmp_path):
    """A handle kept by the user (here in a volatile attribute of a
    LivePersistent) whose connection closed maps again once the connection
    is reopened; one the user closed stays closed."""
    import transaction
    from wendelin_cy.bigfile.file_zodb import ZBigFile
    from wendelin_cy.lib.zodb import dbopen, LivePersistent
    root = dbopen(str(tmp_path / 'h.fs'))
    conn = root._p_jar
    db = conn.db()
    try:
        root['f'] = f = ZBigFile(BS)
        root['a'] = a = LivePersistent()
        transaction.commit()
        a._v_fileh = fh = f.fileh_open()
        m = memoryview(fh.mmap(0, 1))
        m[0] = 11
        transaction.commit()
        m.release()
        del m, f, a, root
        conn.close()
        assert fh.closed
        with pytest.raises(ValueError, match='connection is closed'):
            fh.mmap(0, 1)
        conn2 = db.open()
        assert conn2 is conn                # the pool gives it back
        a2 = conn2.root()['a']
        assert a2._v_fileh is fh
        m = memoryview(fh.mmap(0, 1))
        assert m[0] == 11
        m[0] = 12
        transaction.commit()
        m.release()
        fh.close()
        with pytest.raises(ValueError):
            fh.mmap(0, 1)
        f2 = conn2.root()['f']
        assert memoryview(f2.fileh_open().mmap(0, 1))[0] == 12
        conn2.close()
    finally:
        transaction.abort()
        db.close()
