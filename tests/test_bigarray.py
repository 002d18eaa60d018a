"""BigArray unit tests, over the real pager (BigFile_RAM / BigFile_File)."""
import gc
import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.array_utils import byte_bounds

import wendelin_cy
from wendelin_cy.bigarray import MAX_NBYTES, BigArray
from wendelin_cy.bigfile import VMA
from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.bigfile.file_ram import BigFile_RAM
from wendelin_cy.testing import strategies as wst
from wendelin_cy.testing.bigarray_stateful import to_bytes
from wendelin_cy.testing.isolate import isolated
from wendelin_cy.testing.strategies import ram_budget

BS = 64 * 1024
# more examples for a long run: WCY_HYPOTHESIS_EXAMPLES=2000 (as tox does)
NEXAMPLES = int(os.environ.get('WCY_HYPOTHESIS_EXAMPLES', '150'))
HSETTINGS = settings(max_examples=NEXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.data_too_large])


# ~~~ helpers

class RecordingFileH:
    """Wraps a BigFileH: records mmap calls (BigArray needs only blksize and mmap)."""

    def __init__(self, fh):
        self.fh = fh
        self.blksize = fh.blksize
        self.mmaps = []

    def mmap(self, pgoffset, pglen):
        self.mmaps.append((pgoffset, pglen))
        return self.fh.mmap(pgoffset, pglen)


class Boom(Exception):
    pass


class FailingRAM(BigFile_RAM):
    """BigFile_RAM whose loadblk raises Boom for the blocks in .fail."""

    def __init__(self, blksize):
        BigFile_RAM.__init__(self, blksize)
        self.fail = set()

    def loadblk(self, blk, buf):
        if blk in self.fail:
            raise Boom('block %d' % blk)
        BigFile_RAM.loadblk(self, blk, buf)


def new_array(shape, dtype=np.int64, order='C', blksize=BS, bigfile=None):
    f = bigfile if bigfile is not None else BigFile_RAM(blksize)
    fh = f.fileh_open()
    return BigArray(shape, dtype, fh, order), fh, f


def model_of(shape, dtype, order='C', seed=1):
    """A numpy array with random content of that geometry."""
    return wst.random_array(dtype, shape, seed).copy(order=order)


def filled(shape, dtype=np.int64, order='C', **kw):
    """(A, fh, f, model): A holds model's data, written out."""
    A, fh, f = new_array(shape, dtype, order, **kw)
    m = model_of(shape, np.dtype(dtype), order)
    np.asarray(A)[...] = m
    fh.dirty_writeout()
    return A, fh, f, m


def file_model(m):
    """The file bytes of array m (memory order)."""
    return np.frombuffer(np.array(m, order='K').tobytes(order='A'), np.uint8)


def vma_of(view):
    b = view
    while isinstance(b, np.ndarray):
        b = b.base
    return b


def assert_same(got, expect):
    assert type(got) is type(expect) or (
        isinstance(got, np.ndarray) and isinstance(expect, np.ndarray))
    assert np.shape(got) == np.shape(expect)
    assert np.asarray(got).dtype == np.asarray(expect).dtype
    assert to_bytes(got) == to_bytes(expect)


@pytest.fixture
def tiny_budget():
    with ram_budget(1 << 20):
        yield 1 << 20


# ~~~ geometry

@given(dtype=wst.dtypes(), order=wst.orders(), data=st.data())
@HSETTINGS
def test_attributes_match_numpy(dtype, order, data):
    shape = data.draw(wst.shapes(dtype.itemsize, 1 << 16))
    A, fh, f = new_array(shape, dtype, order)
    e = np.empty(shape, dtype, order=order)
    assert A.shape == e.shape and isinstance(A.shape, tuple)
    assert A.dtype == e.dtype
    assert A.order == order
    assert A.ndim == e.ndim
    assert A.size == e.size
    assert A.nbytes == e.nbytes
    assert A.itemsize == e.itemsize
    assert A.strides == e.strides
    if shape:
        assert len(A) == len(e)
    else:
        with pytest.raises(TypeError):
            len(A)
    r = repr(A)
    assert 'BigArray' in r and str(shape) in r


def test_shape_forms():
    A, fh, f = new_array(5)
    assert A.shape == (5,)
    A, fh, f = new_array([2, np.int64(3)])
    assert A.shape == (2, 3) and all(type(d) is int for d in A.shape)
    A, fh, f = new_array(())
    assert A.shape == () and A.size == 1 and A.nbytes == 8


@pytest.mark.parametrize('shape, dtype, order, exc', [
    ((3,), object, 'C', TypeError),
    ((3,), [('a', 'i4'), ('b', object)], 'C', TypeError),
    ((3,), [('a', [('c', 'O')])], 'C', TypeError),
    ((3,), ('i4', (2,)), 'C', TypeError),          # top-level subarray dtype
    ((3,), 'S0', 'C', TypeError),                  # unsized
    ((3,), 'not-a-dtype', 'C', TypeError),
    ((-1,), 'i8', 'C', ValueError),
    ((3, -2), 'i8', 'C', ValueError),
    ((3.0,), 'i8', 'C', TypeError),
    (('3',), 'i8', 'C', TypeError),
    ((2 ** 40, 2 ** 30), 'i8', 'C', ValueError),   # 8 EiB
    ((2 ** 64,), 'u1', 'C', ValueError),           # overflows int64
    ((0, 2 ** 62), 'i8', 'C', ValueError),         # strides would overflow
    ((MAX_NBYTES // 8 + 1,), 'i8', 'C', ValueError),
    ((3,), 'i8', 'X', ValueError),
    ((3,), 'i8', None, ValueError),
    ((3,), 'i8', 'K', ValueError),
])
def test_invalid_geometry(shape, dtype, order, exc):
    f = BigFile_RAM(BS)
    fh = f.fileh_open()
    with pytest.raises(exc) as ei:
        BigArray(shape, dtype, fh, order)
    assert str(ei.value)        # a message, not a bare exception


def test_huge_array_touches_only_its_tail():
    A, fh, f = new_array((MAX_NBYTES // 8,), np.int64)
    assert A.nbytes == MAX_NBYTES // 8 * 8
    with pytest.raises(MemoryError):        # beyond any address space
        np.asarray(A)
    with pytest.raises(MemoryError):
        A[-1]
    # 1 TiB: beyond the handle's default address reservation, so reserve
    f = BigFile_RAM(BS)
    fh = f.fileh_open(reserve=1 << 40)
    B = BigArray((1 << 37,), np.int64, fh)
    B[-1] = 5
    assert B[-1] == 5
    assert B[(1 << 37) - 2:].tolist() == [0, 5]
    assert fh.dirty_blocks() == [(1 << 40) // BS - 1]


def test_default_handle_maps_a_1tib_array_and_refuses_more_than_memory():
    """The default reservation (64 GiB) grows in place: reservations are
    placed with free addresses after them (as in wendelin.core, asarray() of
    a 1 TiB array on a handle opened without reserve= works, and touches
    nothing); an array bigger than the address space is made, but mapping
    it is a MemoryError, not a ValueError or a crash."""
    f = BigFile_RAM(BS)
    fh = f.fileh_open()
    small = np.asarray(BigArray((10,), np.uint8, fh))       # a live view first
    assert fh.reserved < 1 << 40
    B = BigArray((1 << 40,), np.uint8, fh)
    b = np.asarray(B)
    assert type(b) is np.ndarray and b.nbytes == 1 << 40
    assert fh.reserved >= 1 << 40
    b[-1] = 7
    small[0] = 3
    assert b[0] == 3 and B[-1] == 7                         # one memory
    assert fh.dirty_blocks() == [0, (1 << 40) // BS - 1]
    for i in (47, 48, 56, 64):
        C = BigArray(((1 << i) - 1,), np.uint8, fh)
        assert C.nbytes == (1 << i) - 1
        with pytest.raises(MemoryError):
            np.asarray(C)
    D = BigArray((1, (1 << 64) - 1), np.uint8, fh)          # stride 2**64 - 1
    with pytest.raises(ValueError, match='do not fit numpy'):
        D[0, :10]


# ~~~ views

def test_views_are_ndarrays_sharing_memory():
    A, fh, f = new_array((100000,))      # 800 KB: 13 blocks
    v1 = A[:50000]
    v2 = A[40000:]
    assert type(v1) is np.ndarray and type(v2) is np.ndarray
    assert not v1.flags.owndata
    assert isinstance(vma_of(v1), VMA) and isinstance(vma_of(v2), VMA)
    assert np.shares_memory(v1, v2)
    v1[45000] = 7
    assert v2[5000] == 7
    assert A[45000] == 7                  # a fresh view sees it too
    v2[:] = 3
    assert v1[40000] == 3 and v1[39999] == 0


def test_writeout_and_discard_through_views():
    A, fh, f = new_array((100000,))
    v1 = A[:50000]
    v2 = A[40000:]
    v1[45000] = 7
    assert fh.isdirty()
    fh.dirty_writeout()
    assert not fh.isdirty()
    blk = 45000 * 8 // BS
    stored = np.frombuffer(f.blocks[blk], np.int64)
    assert stored[(45000 * 8 % BS) // 8] == 7          # reached the storage
    v2[5000] = 8
    v1[0] = 9
    assert fh.dirty_blocks() == [0, blk]
    fh.dirty_discard()
    assert not fh.isdirty()
    # old views and a fresh one all show the written-out data
    assert v1[45000] == 7 and v2[5000] == 7 and A[45000] == 7
    assert v1[0] == 0 and A[0] == 0


def test_view_keeps_mapping_alive():
    A, fh, f = new_array((10000,))
    v = A[100:200]
    v[:] = 42
    del A
    gc.collect()
    assert (v == 42).all()
    v[0] = 1
    assert v[0] == 1
    with pytest.raises(RuntimeError):
        fh.close()          # the view's VMA is still alive
    del v
    gc.collect()
    fh.close()


def test_only_covering_blocks_are_mapped():
    f = BigFile_RAM(BS)
    rec = RecordingFileH(f.fileh_open())
    A = BigArray((10, BS // 8), np.int64, rec)     # one block per row
    A[3]
    assert rec.mmaps[-1] == (3, 1)
    A[7, 5:9]
    assert rec.mmaps[-1] == (7, 1)
    A[2:5, -1]
    assert rec.mmaps[-1] == (2, 3)
    A[8:1:-3]
    assert rec.mmaps[-1] == (2, 7)
    A[[4, 6], 0]                   # advanced: the bounding box
    assert rec.mmaps[-1] == (4, 3)
    n = len(rec.mmaps)
    A[3:3]
    A[:, 5:5]
    A[[]]
    assert len(rec.mmaps) == n     # empty results map nothing


@given(dtype=wst.dtypes(), order=wst.orders(), data=st.data())
@HSETTINGS
def test_basic_index_maps_exact_block_range(dtype, order, data):
    shape = data.draw(wst.shapes(dtype.itemsize, 1 << 20))
    idx = data.draw(wst.basic_indices(shape))
    blksize = data.draw(st.sampled_from([4096, 16384]))
    f = BigFile_RAM(blksize)
    rec = RecordingFileH(f.fileh_open())
    A = BigArray(shape, dtype, rec, order)
    filem = np.zeros(A.nbytes, np.uint8)
    m = filem.view(dtype).reshape(shape, order=order) if shape else \
        filem.view(dtype).reshape(())
    expect = m[idx]
    got = A[idx]
    assert_same(got, expect)
    t = idx if isinstance(idx, tuple) else (idx,)
    if not any(x is Ellipsis for x in t):
        t = t + (Ellipsis,)
    ev = m[t]                       # the same selection, always as a view
    if ev.size == 0:
        assert rec.mmaps == []
    else:
        lo, hi = byte_bounds(ev)
        base = filem.__array_interface__['data'][0]
        lo, hi = lo - base, hi - base
        assert rec.mmaps == [(lo // blksize, -(-hi // blksize) - lo // blksize)]
        if isinstance(got, np.ndarray):
            assert not got.flags.owndata
            assert isinstance(vma_of(got), VMA)


IDX_CASES = [
    (), Ellipsis, 0, -1, 2, (1, 2), (1, 2, 3), (-1, -2, -3),
    slice(None), slice(1, 4), slice(None, None, 2), slice(None, None, -1),
    slice(4, 0, -2), slice(-2, None), slice(100, 200), slice(3, 1),
    (slice(None), 3), (Ellipsis, 2), (1, Ellipsis), (None,), (None, 1, None),
    (Ellipsis, None), (slice(1, 5, 3), None, slice(None, None, -2), 0),
    (np.int64(2), np.uint8(1)), (np.array(3),),
    # advanced
    [0, 2, 2, -1], ([1, 0], [3, 3]), ([[1, 2], [0, 0]],), (slice(None), [6, 0, 6]),
    ([1, 2], slice(None), [0, 7]), ([1, 2], Ellipsis, [0, 7]), (0, [1, 2], slice(None)),
    (slice(None), 0, [1, 2]), (None, [0, 4], None), np.array([4, -5]),
    ([], slice(None)), (True,), (False,), (np.True_, 1),
]


@pytest.mark.parametrize('order', ['C', 'F'])
@pytest.mark.parametrize('idx', IDX_CASES, ids=repr)
def test_getitem_vs_numpy(idx, order):
    A, fh, f, m = filled((5, 7, 8), np.int32, order)
    assert_same(A[idx], m[idx])


@pytest.mark.parametrize('order', ['C', 'F'])
def test_bool_masks(order):
    A, fh, f, m = filled((5, 7, 8), np.int16, order)
    rng = np.random.default_rng(0)
    for mshape in [(5,), (5, 7), (5, 7, 8)]:
        mask = rng.random(mshape) < 0.3
        assert_same(A[mask], m[mask])
        assert_same(A[mask, ...], m[mask, ...])
    mask = rng.random((7,)) < 0.5
    assert_same(A[:, mask], m[:, mask])
    assert_same(A[1, mask, 2:5], m[1, mask, 2:5])
    assert_same(A[[True] * 5], m[[True] * 5])


def test_advanced_getitem_is_a_copy():
    A, fh, f, m = filled((10, 10), np.int64)
    c = A[[1, 2]]
    assert c.flags.owndata or vma_of(c) is None or not isinstance(vma_of(c), VMA)
    c[...] = -1
    assert (A[1:3] == m[1:3]).all()
    assert not fh.isdirty()


@given(dtype=wst.dtypes(), order=wst.orders(), data=st.data())
@HSETTINGS
def test_any_index_vs_numpy(dtype, order, data):
    shape = data.draw(wst.shapes(dtype.itemsize, 1 << 18))
    A, fh, f = new_array(shape, dtype, order, blksize=4096)
    m = model_of(shape, dtype, order, seed=data.draw(st.integers(0, 100)))
    np.asarray(A)[...] = m
    idx = data.draw(wst.indices(shape))
    try:
        expect = m[idx]
    except IndexError:
        with pytest.raises(IndexError):
            A[idx]
        return
    got = A[idx]
    assert_same(got, expect)


@pytest.mark.parametrize('idx', [
    10, -11, (0, 7), (0, 0, 0), (Ellipsis, Ellipsis), 1.0, (slice(None), 2.5),
    'x', slice(0, 1.5), slice(None, None, 0), [10], [[0], [-12]],
    np.array([1.0]), np.ones(3, bool), (np.ones((10, 3), bool),),
    ([0, 1], [0, 1, 2]), {1: 2},
], ids=repr)
def test_bad_index_errors_like_numpy(idx):
    A, fh, f, m = filled((10, 7), np.int64)
    with pytest.raises(Exception) as en:
        m[idx]
    with pytest.raises(type(en.value)) as eb:
        A[idx]
    with pytest.raises(type(en.value)):
        A[idx] = 1
    if isinstance(en.value, IndexError) and 'bounds' in str(en.value):
        assert str(eb.value) == str(en.value)
    assert not fh.isdirty()


def test_0d_array():
    A, fh, f = new_array((), np.float64)
    A[()] = 2.5
    assert A[()] == 2.5 and type(A[()]) is np.float64
    v = A[...]
    assert v.shape == () and isinstance(v, np.ndarray)
    v[...] = 3.5
    assert np.asarray(A) == 3.5
    assert A[None].shape == (1,)
    with pytest.raises(TypeError):
        len(A)
    with pytest.raises(TypeError):
        iter(A)
    with pytest.raises(IndexError):
        A[0]


def test_zero_size_arrays_map_nothing():
    for shape in [(0,), (5, 0), (0, 3, 2)]:
        f = BigFile_RAM(BS)
        rec = RecordingFileH(f.fileh_open())
        A = BigArray(shape, np.int32, rec)
        v = A[...]
        assert v.shape == shape and v.dtype == np.int32
        assert np.asarray(A).shape == shape
        assert A[:].shape == shape
        A[...] = 7
        A[...] = np.zeros(shape, np.int32)
        b = io.BytesIO()
        A.tofile(b)
        assert b.getvalue() == b''
        assert rec.mmaps == []
    A, fh, f = new_array((0,))
    with pytest.raises(IndexError):
        A[0]
    with pytest.raises(ValueError):
        A[...] = [1, 2]


def test_structured_dtype():
    dt = np.dtype([('a', '<i4'), ('b', '<f8'), ('c', 'S3', (2,))])
    A, fh, f = new_array((1000,), dt)
    A[10] = (1, 2.5, [b'ab', b'cd'])
    assert A[10]['a'] == 1 and A[10]['b'] == 2.5
    assert A['c'][10].tolist() == [b'ab', b'cd']
    A['a'] = np.arange(1000)
    assert (A[:]['a'] == np.arange(1000)).all()
    A[['a', 'b']][5]        # multi-field view works
    A[2:4] = [(7, 1.0, [b'x', b'y']), (8, 2.0, [b'z', b''])]
    assert A[3]['a'] == 8 and A['b'][2] == 1.0
    assert A['a'].base is not None and not A['a'].flags.owndata


def test_iteration():
    A, fh, f, m = filled((4, 3), np.int64)
    rows = list(A)
    assert len(rows) == 4
    for r, e in zip(rows, m):
        assert_same(r, e)


# ~~~ setitem

@pytest.mark.parametrize('order', ['C', 'F'])
@pytest.mark.parametrize('idx', IDX_CASES, ids=repr)
def test_setitem_vs_numpy(idx, order):
    A, fh, f, m = filled((5, 7, 8), np.int32, order)
    shape = np.shape(m[idx])
    for value in [np.int32(-5), 17, wst.random_array(np.int32, shape, 3)]:
        A[idx] = value
        m[idx] = value
        assert_same(np.asarray(A), m)


def test_setitem_conversion_like_numpy():
    A, fh, f, m = filled((6,), np.uint8)
    A[:3] = [1.7, 2.2, 3.9]
    m[:3] = [1.7, 2.2, 3.9]
    assert_same(np.asarray(A), m)
    with pytest.raises(OverflowError):
        A[0] = 300
    with pytest.raises(ValueError):
        A[:3] = [1, 2]
    A[:] = np.ones((1, 6), np.int64)       # leading 1-dims are dropped
    assert (A[:] == 1).all()


@given(dtype=wst.dtypes(), order=wst.orders(), data=st.data())
@HSETTINGS
def test_setitem_any_index_vs_numpy(dtype, order, data):
    shape = data.draw(wst.shapes(dtype.itemsize, 1 << 18))
    A, fh, f = new_array(shape, dtype, order, blksize=4096)
    m = np.zeros(shape, dtype, order=order)
    idx = data.draw(wst.indices(shape))
    try:
        tshape = np.shape(m[idx])
    except IndexError:
        return
    value = data.draw(wst.values_for(dtype, tshape))
    A[idx] = value
    m[idx] = value
    assert_same(np.asarray(A), m)


@pytest.mark.parametrize('order', ['C', 'F'])
def test_large_setitem_in_chunks(tiny_budget, order):
    # 4 MiB array, 1 MiB budget: the assignments go in chunks
    A, fh, f = new_array((512, 1024), np.int64, order)
    A[...] = 5
    assert int(np.asarray(A).sum()) == 5 * 512 * 1024
    m = np.full((512, 1024), 5, np.int64, order=order)
    v = wst.random_array(np.int64, (512, 1024), 7)
    A[::-1, ::-1] = v
    m[::-1, ::-1] = v
    assert to_bytes(A[...]) == to_bytes(m)
    col = np.arange(512)
    A[:, 3] = col
    m[:, 3] = col
    A[100:300:3, 7::5] = -1
    m[100:300:3, 7::5] = -1
    assert to_bytes(A[...]) == to_bytes(m)
    fh.dirty_writeout()
    assert to_bytes(A[...]) == to_bytes(m)
    # the high-water mark covers what this array holds in RAM now (it is a
    # maximum over the process: compared with this test's own state only)
    s = wendelin_cy.pager_stats()
    assert fh.resident_blocks()
    assert s['peak_resident'] >= s['resident'] >= len(fh.resident_blocks()) * fh.blksize


@pytest.mark.parametrize('shape, order', [((600000,), 'C'), ((600, 1000), 'C'),
                                          ((600, 1000), 'F'), ((40, 30, 500), 'C')])
def test_large_overlapping_setitem(tiny_budget, shape, order):
    import tracemalloc
    # 4.8 MB, 1 MiB budget: chunked, and no copy of the value in RAM
    A, fh, f = new_array(shape, np.int64, order)
    m = np.arange(A.size, dtype=np.int64).reshape(shape, order=order)
    A[...] = m
    nd = len(shape)

    def ix(axis, sl):
        t = [slice(None)] * nd
        t[axis] = sl
        return tuple(t)

    cases = [(ix(0, slice(1, None)), ix(0, slice(None, -1))),
             (ix(0, slice(None, -7)), ix(0, slice(7, None))),
             (ix(nd - 1, slice(3, None)), ix(nd - 1, slice(None, -3))),
             (ix(nd - 1, slice(None, -2)), ix(nd - 1, slice(2, None))),
             (ix(0, slice(None, None, -1)), ix(0, slice(None))),      # reverse
             (ix(0, slice(None, -1, 2)), ix(0, slice(1, None, 2)))]
    for dst, src in cases:
        tracemalloc.start()
        A[dst] = A[src]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        m[dst] = m[src].copy()
        assert to_bytes(A[...]) == to_bytes(m), (dst, src)
        same_layout = A[dst].strides == A[src].strides
        if same_layout:
            assert peak < A.nbytes // 2, (dst, src, peak)


def test_strided_setitem_dirties_only_touched_blocks():
    # rows of 3 blocks: A[:, 3] touches the first block of every row only
    A, fh, f = new_array((10, 3 * BS // 8), np.int64)
    A[:, 3] = 1
    assert fh.dirty_blocks() == [3 * i for i in range(10)]
    fh.dirty_writeout()
    A[[2, 5], -1] = 2
    assert fh.dirty_blocks() == [8, 17]


def test_large_scalar_setitem_does_not_dirty_untouched(tiny_budget):
    A, fh, f = new_array((10, 8 * BS // 8), np.int64)   # 80 blocks, 5 MB
    A[2:4] = 3
    assert fh.dirty_blocks() == list(range(16, 32))


# ~~~ loadblk errors surface as Python exceptions
#
# A loadblk error inside a page fault ends the process with SIGBUS; these
# tests run in a child so that a missing prefault fails only them.

@pytest.fixture
def failing():
    f = FailingRAM(BS)
    A, fh, _ = new_array((20 * BS // 8,), np.int64, bigfile=f)   # 20 blocks
    yield A, fh, f
    f.fail.clear()
    fh.dirty_discard()


@isolated()
def test_loadblk_error_in_large_setitem(failing, tiny_budget):
    A, fh, f = failing
    f.fail.add(12)
    with pytest.raises(Boom):
        A[...] = 1
    # what was written before the failing chunk stayed; after it: untouched
    assert all(b < 12 for b in fh.dirty_blocks())
    assert (A[:4 * BS // 8] == 1).all()
    f.fail.clear()
    assert (A[13 * BS // 8:] == 0).all()


@isolated()
def test_loadblk_error_in_small_setitem(failing):
    A, fh, f = failing
    f.fail.add(3)
    with pytest.raises(Boom):
        A[3 * BS // 8 + 5] = 1
    with pytest.raises(Boom):
        A[[1, 3 * BS // 8]] = 1
    with pytest.raises(Boom):
        A[[1, 3 * BS // 8]]
    with pytest.raises(Boom):
        A[::BS // 8] = 9
    assert 3 not in fh.dirty_blocks()


@isolated()
def test_loadblk_error_in_sparse_advanced(failing, tiny_budget):
    A, fh, f = failing
    f.fail.add(19)
    idx = [0, 20 * BS // 8 - 1]
    with pytest.raises(Boom):
        A[idx]
    with pytest.raises(Boom):
        A[idx] = 5
    assert 19 not in fh.dirty_blocks()


@isolated()
def test_loadblk_error_in_append(failing):
    A, fh, f = failing
    A.resize((20 * BS // 8 - 10,))     # (loads block 19 to zero its tail)
    fh.invalidate_page(19)
    f.fail.add(19)
    with pytest.raises(Boom):
        A.append(np.ones(100, np.int64))
    assert A.shape == (20 * BS // 8 - 10,)


@isolated()
def test_failed_append_leaves_no_trace(failing, tiny_budget):
    A, fh, f = failing
    A.resize((2 * BS // 8,))
    f.fail.add(9)
    with pytest.raises(Boom):
        A.append(np.ones(10 * BS // 8, np.int64))   # chunks of 4 blocks
    assert A.shape == (2 * BS // 8,)
    f.fail.clear()
    A.resize((12 * BS // 8,))
    assert (A[2 * BS // 8:] == 0).all()             # appended data is gone


@isolated()
def test_loadblk_error_in_tofile(failing, tmp_path, tiny_budget):
    A, fh, f = failing
    f.fail.add(7)
    with open(tmp_path / 'out', 'wb', buffering=0) as out, pytest.raises(Boom):
        A.tofile(out)


@isolated()
def test_loadblk_error_in_resize(failing):
    A, fh, f = failing
    f.fail.add(15)
    with pytest.raises(Boom):
        A.resize((10,))
    assert A.shape == (10,)


# ~~~ __array__, view

def test_asarray_is_a_view():
    A, fh, f = new_array((30, 40), np.float64)
    m = np.arange(1200.).reshape(30, 40)
    A[...] = m
    a = np.asarray(A)
    assert type(a) is np.ndarray and np.shares_memory(a, A[...])
    assert_same(a, m)
    assert np.mean(A) == np.mean(m)
    c = np.array(A, copy=True)
    assert not np.shares_memory(c, a)
    d = np.asarray(A, dtype=np.float32)
    assert d.dtype == np.float32 and (d == m.astype(np.float32)).all()
    with pytest.raises(ValueError):
        np.asarray(A, dtype=np.float32, copy=False)
    a[0, 0] = 99
    assert A[0, 0] == 99


def test_view_dtype_c():
    A, fh, f, m = filled((4, 6), np.int64)
    for dt in [np.int32, np.uint8, 'S16', np.complex128, np.float64,
               [('a', 'i4'), ('b', 'i4')]]:
        B = A.view(dt)
        assert type(B) is BigArray
        assert_same(B[...], m.view(dt))
    B = A.view(np.int32)
    B[0, 1] = -1                   # same file: A sees it
    m.view(np.int32)[0, 1] = -1
    assert A[0, 0] == m[0, 0]
    with pytest.raises(ValueError):
        A.view('S5')               # 5 does not divide the itemsize 8
    with pytest.raises(TypeError):
        A.view(object)
    assert A.view().shape == A.shape and A.view().dtype == A.dtype


def test_view_dtype_errors_like_numpy():
    A, fh, f, m = filled((4, 3), np.int32)
    with pytest.raises(ValueError):
        m.view(np.int64)
    with pytest.raises(ValueError):
        A.view(np.int64)
    Z, fh, f = new_array((), np.int32)
    with pytest.raises(ValueError):
        Z.view(np.int64)
    assert Z.view(np.float32).shape == ()


def test_view_dtype_f():
    A, fh, f, m = filled((6, 4), np.int64, 'F')
    B = A.view(np.int32)
    assert B.shape == (12, 4) and B.order == 'F'
    expect = file_model(m).view(np.int32).reshape((12, 4), order='F')
    assert_same(B[...], expect)


# ~~~ resize

@pytest.mark.parametrize('order', ['C', 'F'])
def test_resize_major_axis_keeps_data(order):
    M = 0 if order == 'C' else 1
    shape = (10, 3) if order == 'C' else (3, 10)
    A, fh, f, m = filled(shape, np.int64, order)

    def sized(n):
        s = list(shape)
        s[M] = n
        return tuple(s)

    A.resize(sized(15))
    assert A.shape == sized(15)
    sl = [slice(None)] * 2
    sl[M] = slice(0, 10)
    assert_same(A[tuple(sl)], m)
    sl[M] = slice(10, None)
    assert (A[tuple(sl)] == 0).all()
    A.resize(sized(4))
    sl[M] = slice(0, 4)
    assert_same(A[...], m[tuple(sl)])
    A.resize(sized(10))            # dropped data does not come back
    sl[M] = slice(4, None)
    assert (A[tuple(sl)] == 0).all()
    sl[M] = slice(0, 4)
    assert_same(A[tuple(sl)], m[tuple(sl)])


def test_resize_other_axes_like_ndarray_resize():
    A, fh, f, m = filled((4, 5), np.int64)
    for new in [(5, 4), (3, 3), (2, 2, 5), (7,), (4, 5)]:
        A.resize(new)
        m.resize(new, refcheck=False)
        assert_same(A[...], m)


def test_resize_F_flat_in_memory_order():
    A, fh, f, m = filled((4, 5), np.int64, 'F')
    flat = file_model(m).view(np.int64)
    A.resize((3, 3))
    assert_same(A[...], flat[:9].reshape((3, 3), order='F'))


def test_resize_shrink_of_holes_does_not_dirty():
    A, fh, f = new_array((1000000,))
    A.resize((10,))
    assert not fh.isdirty()
    A.resize((1000000,))
    A[-1] = 1
    fh.dirty_writeout()
    A.resize((10,))
    assert fh.dirty_blocks() == [(1000000 * 8 - 1) // BS]


def test_resize_errors():
    A, fh, f = new_array((10,))
    with pytest.raises(ValueError):
        A.resize((-1,))
    with pytest.raises(TypeError):
        A.resize((1.5,))
    with pytest.raises(ValueError):
        A.resize((2 ** 62,))
    assert A.shape == (10,)


def test_resize_views_keep_shape():
    A, fh, f = new_array((100,))
    v = A[...]
    A.resize((200,))
    assert v.shape == (100,) and A[...].shape == (200,)


# ~~~ append

@pytest.mark.parametrize('order', ['C', 'F'])
def test_append(order):
    shape = (0, 3) if order == 'C' else (3, 0)
    A, fh, f = new_array(shape, np.int64, order)
    m = np.zeros(shape, np.int64, order=order)
    axis = 0 if order == 'C' else 1
    for i, n in enumerate([2, 0, 5, 1]):
        vshape = (n, 3) if order == 'C' else (3, n)
        v = wst.random_array(np.int64, vshape, i)
        A.append(v)
        m = np.concatenate([m, v], axis=axis)
        assert_same(A[...], np.asarray(m, order=order))
    # lists, BigArrays
    row = [[1, 2, 3]] if order == 'C' else [[1], [2], [3]]
    A.append(row)
    m = np.concatenate([m, np.array(row)], axis=axis)
    A.append(A)
    m = np.concatenate([m, m], axis=axis)
    assert_same(A[...], np.asarray(m, order=order))


def test_append_is_O_of_values(tiny_budget):
    A, fh, f = new_array((2000000,))          # 16 MB
    A[-1] = 1
    fh.dirty_writeout()
    loads = f.nload if hasattr(f, 'nload') else None
    A.append(np.arange(10))
    assert fh.dirty_blocks() == [2000000 * 8 // BS]
    assert A[-11:].tolist() == [1] + list(range(10))
    if loads is not None:
        assert f.nload - loads <= 3


def test_append_errors():
    A, fh, f = new_array((5, 3), np.int32)
    with pytest.raises(ValueError):
        A.append(np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError):
        A.append(np.zeros((3,), np.int32))       # ndim mismatch
    with pytest.raises(TypeError):
        A.append(np.zeros((2, 3), np.float64))
    with pytest.raises(TypeError):
        A.append(np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError):
        A.append([[1.5, 2, 3]])
    with pytest.raises(TypeError):
        A.append([[2 ** 40, 1, 1]])
    with pytest.raises(TypeError):
        A.append([['a', 'b', 'c']])
    assert A.shape == (5, 3) and not fh.isdirty()
    A.append([[1, 2, 3]])                         # Python ints that fit
    A.append(np.zeros((1, 3), np.int16))          # safe cast
    assert A.shape == (7, 3)
    Z, fh, f = new_array((), np.int32)
    with pytest.raises(ValueError):
        Z.append([1])
    S, fh, f = new_array((2,), [('a', 'i4'), ('b', 'f4')])
    S.append([(1, 2.0)])
    assert S[2]['a'] == 1 and S.shape == (3,)
    F, fh, f = new_array((2,), np.float32)
    F.append([1.5, 2])                            # Python floats: fine
    with pytest.raises(TypeError):
        F.append(np.zeros(1, np.float64))


# ~~~ tofile

@pytest.mark.parametrize('order', ['C', 'F'])
def test_tofile(order, tmp_path, tiny_budget):
    # 3 MiB array, 1 MiB budget, unbuffered file: write() gets mapped memory
    A, fh, f, m = filled((384, 1024), np.int64, order)
    p = tmp_path / 'a.bin'
    with open(p, 'wb', buffering=0) as out:
        A.tofile(out)
    assert p.read_bytes() == m.tobytes(order='C')      # numpy's tofile order
    A.tofile(str(p), order='A')
    assert p.read_bytes() == file_model(m).tobytes()
    b = io.BytesIO()
    A.tofile(b)
    assert b.getvalue() == m.tobytes(order='C')


def test_tofile_of_an_f_ordered_bytes_array_with_one_long_row(tmp_path, tiny_budget):
    # rows copied out in pieces: the size of a row is not that of its first
    # element (a bytes scalar drops its trailing NULs: 0 for b'\\0...')
    # (found by hypothesis: ZeroDivisionError)
    A, fh, f = new_array((1, 400000), np.dtype('S7'), 'F')
    m = np.zeros((1, 400000), 'S7', order='F')
    m[0, 1::3] = b'abc'
    np.asarray(A)[...] = m
    p = tmp_path / 'a.bin'
    A.tofile(str(p))
    assert p.read_bytes() == m.tobytes(order='C')


def test_tofile_falls_back_to_a_copy_on_EFAULT():
    # if the kernel refuses mapped memory anyway (a block reclaimed between
    # prefault and write), tofile writes a copy instead of failing
    import errno

    class Picky(io.BytesIO):
        def write(self, b):
            if isinstance(b, memoryview):
                raise OSError(errno.EFAULT, 'Bad address')
            return io.BytesIO.write(self, b)

    A, fh, f, m = filled((1000,), np.int32)
    out = Picky()
    A.tofile(out)
    assert out.getvalue() == m.tobytes()

    class Other(io.BytesIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(OSError) as e:
        A.tofile(Other())
    assert e.value.errno == errno.ENOSPC


def test_tofile_bad_order():
    A, fh, f = new_array((3,))
    with pytest.raises(ValueError):
        A.tofile(io.BytesIO(), order='X')


# ~~~ over a local file

def test_over_bigfile_file(tmp_path):
    path = tmp_path / 'data'
    bf = BigFile_File(path, BS)
    fh = bf.fileh_open()
    A = BigArray((3000, 10), np.float64, fh)
    A[...] = np.arange(30000.).reshape(3000, 10)
    A.append(np.ones((5, 10)))
    fh.dirty_writeout()
    raw = np.fromfile(path, np.float64)
    assert (raw[:30000] == np.arange(30000.)).all() and (raw[30000:30050] == 1).all()
    del A
    gc.collect()
    fh.close()
    bf.close()
    bf = BigFile_File(path, BS)
    fh = bf.fileh_open()
    B = BigArray((3005, 10), np.float64, fh)
    assert B[2999, 9] == 29999.0 and (B[3000:] == 1).all()
    del B
    gc.collect()
    fh.close()
    bf.close()


# ~~~ contract with subclasses (ZBigArray)

class Watched(BigArray):
    """Reaches its handle through a property and records assignments."""

    def __init__(self, shape, dtype, fileh, order='C'):
        self.__dict__['assigned'] = []
        self.__dict__['fileh_reads'] = 0
        self._init_geometry(shape, dtype, order)
        self.__dict__['_hidden_fh'] = fileh

    @property
    def _fileh(self):
        self.__dict__['fileh_reads'] += 1
        return self.__dict__['_hidden_fh']

    def __setattr__(self, name, value):
        self.assigned.append(name)
        object.__setattr__(self, name, value)


def test_subclass_contract():
    f = BigFile_RAM(BS)
    W = Watched((10, 2), np.int16, f.fileh_open())
    assert set(W.__dict__) - {'assigned', 'fileh_reads', '_hidden_fh'} == \
        {'_shape', '_dtype', '_order'}
    assert type(W._shape) is tuple and isinstance(W._dtype, np.dtype)
    del W.assigned[:]
    W[...] = 3
    assert W.fileh_reads > 0
    assert W.assigned == []            # reads and writes assign nothing
    W.append(np.ones((2, 2), np.int16))
    assert W.assigned == ['_shape']
    W.resize((4, 2))
    assert W.assigned == ['_shape', '_shape']
    assert W[...].tolist() == [[3, 3]] * 4
    V = W.view(np.int32)
    assert type(V) is BigArray and V.shape == (4, 1)
