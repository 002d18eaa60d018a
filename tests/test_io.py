"""wendelin_cy.io (npy / HDF5 / zarr <-> ZBigArray), keypath, dbinfo and
verify, in process.  The command line is tested in test_cli.py."""

import os
import sys
import tempfile

import numpy as np
import pytest
import transaction
from persistent import Persistent
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes

import wendelin_cy
from wendelin_cy import io, keypath
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbclose, dbopen

NEXAMPLES = int(os.environ.get('WCY_HYPOTHESIS_EXAMPLES', '150')) // 5 + 10
HSETTINGS = settings(max_examples=NEXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])

# dtypes every format holds, and the ones only some do
COMMON = ['i1', 'u2', '<i4', '>i4', '<i8', 'f2', '<f4', '>f8', 'c8', 'c16', '?',
          'S5', [('a', '<i4'), ('b', '<f8')]]
ONLY = {'npy': ['<U3', '<M8[s]', 'V3'], 'hdf5': [], 'zarr': ['<U3', '<M8[s]']}
HAVE = {'npy': True}
for _mod, _kind in (('h5py', 'hdf5'), ('zarr', 'zarr')):
    try:
        __import__(_mod)
        HAVE[_kind] = True
    except ImportError:
        HAVE[_kind] = False


def needs(kind):
    return pytest.mark.skipif(not HAVE[kind], reason='%s is not installed (pip install '
                              "'wendelin_cy[io]')" % kind)


@pytest.fixture
def root():
    r = dbopen('memory://')
    yield r
    transaction.abort()
    dbclose(r)


class _Db:
    """A database for the hypothesis tests; short repr, because hypothesis
    prints the arguments of a failing example (a root's repr lists every
    array)."""

    def __init__(self, uri):
        self.root = dbopen(uri)

    def __repr__(self):
        return '<memory:// db>'


@pytest.fixture(scope='module')
def mdb():
    db = _Db('memory://')
    yield db
    transaction.abort()
    dbclose(db.root)


def _data(dt, shape, order, seed):
    """An array of random bits (bools: 0/1), so that every byte counts."""
    dt = np.dtype(dt)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=np.int64))
    raw = rng.integers(0, 256, n * dt.itemsize, dtype=np.uint8)
    if dt.kind == 'b':
        raw %= 2
    if dt.kind == 'M':          # NaT is fine, but keep values in range
        raw = rng.integers(-2**40, 2**40, n, dtype=np.int64).view(np.uint8)
    a = raw.view(dt) if n else np.empty(0, dt)
    return a.reshape(shape, order=order)


def _same(a, b):
    """Equal in dtype (up to byte order: a 0-d read gives a native scalar),
    shape and every byte."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    if a.dtype != b.dtype:
        assert a.dtype.newbyteorder('=') == b.dtype.newbyteorder('='), (a.dtype, b.dtype)
        b = b.astype(a.dtype)
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


_counter = [0]


def _key():
    _counter[0] += 1
    return 'g%d/arr' % _counter[0]


def _write_source(kind, a, d):
    if kind == 'npy':
        p = os.path.join(d, 's.npy')
        np.save(p, a)
        return p, {}
    if kind == 'hdf5':
        import h5py
        p = os.path.join(d, 's.h5')
        with h5py.File(p, 'w') as f:
            f.create_dataset('/grp/ds', data=a,
                             chunks=(max(1, a.shape[0] // 3),) + a.shape[1:]
                             if a.ndim and a.size else None)
        return p, {'dataset': '/grp/ds'}
    import zarr
    p = os.path.join(d, 's.zarr')
    z = zarr.create_array(p, name='in/a', shape=a.shape, dtype=a.dtype)
    z[...] = a
    return p, {'path': 'in/a'}


def _read_dest(kind, p, sub):
    if kind == 'npy':
        return np.load(p)
    if kind == 'hdf5':
        import h5py
        with h5py.File(p, 'r') as f:
            return f[sub][()]
    import zarr
    return zarr.open_array(p, path=sub or '', mode='r')[...]


FROM = {'npy': io.from_npy, 'hdf5': io.from_hdf5, 'zarr': io.from_zarr}
TO = {'npy': lambda A, p: io.to_npy(A, p),
      'hdf5': lambda A, p: io.to_hdf5(A, p, 'out/d', limit=97),
      'zarr': lambda A, p: io.to_zarr(A, p, 'out/d', limit=97)}
SUB = {'npy': None, 'hdf5': '/out/d', 'zarr': 'out/d'}


def _roundtrip(kind, root, dt, shape, order, seed):
    """source -> ZBigArray (in small boxes, over small blocks) -> destination,
    each compared with the numpy array."""
    if kind != 'npy':
        order = 'C'                         # HDF5 and zarr arrays are C-ordered
    a = _data(dt, shape, order, seed)
    with tempfile.TemporaryDirectory() as d:
        src, kw = _write_source(kind, a, d)
        key = _key()
        A = FROM[kind](src, root, key, blksize=4096, limit=61, commit_every=500, **kw)
        assert keypath.resolve(root, key) is A
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous   # as np.save says
        assert A.order == ('F' if fortran else 'C') and A.shape == a.shape
        _same(a, A[...])
        assert io.partial_imports(root) == {}
        dest = os.path.join(d, 'out.npy' if kind == 'npy' else 'out.' + kind)
        TO[kind](A, dest)
        _same(a, _read_dest(kind, dest, SUB[kind]))
        if kind == 'npy':
            b = np.load(dest)
            assert (b.flags.f_contiguous and not b.flags.c_contiguous) == fortran


def _dtypes(kind):
    return st.sampled_from(COMMON + ONLY[kind])


shapes = array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)


@HSETTINGS
@given(dt=_dtypes('npy'), shape=shapes, order=st.sampled_from('CF'),
       seed=st.integers(0, 2**16))
def test_roundtrip_npy(mdb, dt, shape, order, seed):
    _roundtrip('npy', mdb.root, dt, shape, order, seed)


@needs('hdf5')
@HSETTINGS
@given(dt=_dtypes('hdf5'), shape=shapes, seed=st.integers(0, 2**16))
def test_roundtrip_hdf5(mdb, dt, shape, seed):
    _roundtrip('hdf5', mdb.root, dt, shape, 'C', seed)


@needs('zarr')
@HSETTINGS
@given(dt=_dtypes('zarr'), shape=shapes, seed=st.integers(0, 2**16))
def test_roundtrip_zarr(mdb, dt, shape, seed):
    _roundtrip('zarr', mdb.root, dt, shape, 'C', seed)


@settings(max_examples=200, deadline=None)
@given(shape=array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
       order=st.sampled_from('CF'), itemsize=st.sampled_from([1, 2, 8, 24]),
       limit=st.integers(1, 600), align=st.integers(1, 5))
def test_boxes_cover_memory_order(shape, order, itemsize, limit, align):
    """Boxes are contiguous runs of the memory order, in order, covering it
    exactly once, each within limit (or one element), matching their index."""
    n = int(np.prod(shape, dtype=np.int64))
    flat = np.arange(n, dtype=np.int64).reshape(shape, order=order)
    pos = 0
    for box, off, nbytes in io.boxes(shape, order, itemsize, limit, align):
        assert off == pos
        assert nbytes <= max(limit, itemsize)
        sel = flat[box] if box else flat[()]
        want = np.arange(off // itemsize, (off + nbytes) // itemsize)
        assert np.array_equal(np.ravel(sel, order=order), want)
        pos += nbytes
    assert pos == n * itemsize


class _Flaky(io._Source):
    """A source that fails on its `fail_at`-th read (an interrupted import)."""
    kind = 'test'

    def __init__(self, a, fail_at=None, name='flaky'):
        self.a, self.fail_at, self.reads, self.name = a, fail_at, 0, name
        self.shape, self.dtype, self.order = a.shape, a.dtype, 'C'

    def read(self, box, off, nbytes):
        self.reads += 1
        if self.reads == self.fail_at:
            raise KeyboardInterrupt
        return self.a[box]


def test_interrupted_import_is_staged_and_resumes(root):
    a = np.arange(40000, dtype=np.int64).reshape(4000, 10)     # 320 KB
    kw = dict(blksize=4096, limit=8000, commit_every=40000)
    with pytest.raises(KeyboardInterrupt):
        io._import(_Flaky(a, fail_at=20), root, 'x/A', **kw)
    assert 'x' not in root                          # the key is never half written
    rec = io.partial_imports(root)['x/A']
    assert 0 < rec['done'] < a.nbytes and rec['done'] % 40000 == 0
    # what is committed is the prefix
    done = rec['done'] // a[0].nbytes
    assert np.array_equal(rec['array'][:done], a[:done])

    with pytest.raises(io.PartialImport, match='--resume'):
        io._import(_Flaky(a), root, 'x/A', **kw)
    with pytest.raises(io.PartialImport, match='another source'):
        io._import(_Flaky(a + 1, name='other'), root, 'x/A', resume=True, **kw)
    src = _Flaky(a)
    A = io._import(src, root, 'x/A', resume=True, **kw)
    assert src.reads < 40                            # the committed part is not read again
    assert np.array_equal(A[...], a)
    assert io.partial_imports(root) == {} and keypath.STAGING_KEY not in root
    assert root['x']['A'] is A

    with pytest.raises(io.DestinationExists):
        io._import(_Flaky(a), root, 'x/A', **kw)
    B = io._import(_Flaky(a[:5]), root, 'x/A', overwrite=True, **kw)
    assert root['x']['A'] is B and B.shape == (5, 10)

    with pytest.raises(KeyboardInterrupt):
        io._import(_Flaky(a, fail_at=20), root, 'y', **kw)
    C = io._import(_Flaky(a[:7]), root, 'y', restart=True, **kw)
    assert C.shape == (7, 10) and io.partial_imports(root) == {}


def test_import_refuses_bad_targets(root):
    root['m'] = ZBigArray((3,), 'i4')
    transaction.commit()
    a = np.arange(3)
    with pytest.raises(keypath.KeyPathError, match='not a mapping'):
        io._import(_Flaky(a), root, 'm/sub')
    with pytest.raises(keypath.KeyPathError, match='reserved'):
        io._import(_Flaky(a), root, keypath.STAGING_KEY + '/k')
    with pytest.raises(keypath.KeyPathError, match='empty'):
        io._import(_Flaky(a), root, '//')
    assert io.partial_imports(root) == {}


@pytest.mark.parametrize('kind,dt', [('hdf5', '<U3'), ('hdf5', '<M8[s]'),
                                     ('zarr', 'f16' if hasattr(np, 'float128') else None)])
def test_export_dtype_a_format_cannot_hold(root, tmp_path, kind, dt):
    if dt is None:
        pytest.skip('no float128 on this platform')
    if not HAVE[kind]:
        pytest.skip('%s is not installed' % kind)
    root['A'] = A = ZBigArray((4,), dt)
    transaction.commit()
    dest = str(tmp_path / ('o.' + kind))
    with pytest.raises(io.UnsupportedDtype, match='cannot hold dtype'):
        TO[kind](A, dest)


def test_import_object_dtype_refused(root, tmp_path):
    p = str(tmp_path / 'o.npy')
    np.save(p, np.array([1, 'x'], dtype=object))
    with pytest.raises(io.UnsupportedDtype, match='fixed-size'):
        io.from_npy(p, root, 'o')


def test_missing_extra_is_named(root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'h5py', None)
    monkeypatch.setitem(sys.modules, 'zarr', None)
    with pytest.raises(io.MissingExtra, match=r"wendelin_cy\[io\]"):
        io.from_hdf5(str(tmp_path / 'x.h5'), root, 'k', dataset='/d')
    root['A'] = A = ZBigArray((4,), 'i4')
    transaction.commit()
    with pytest.raises(ImportError, match=r"pip install 'wendelin_cy\[io\]'"):
        io.to_zarr(A, str(tmp_path / 'x.zarr'))


def test_parse_spec(tmp_path):
    assert io.parse_spec('a/b.npy') == ('npy', 'a/b.npy', None)
    assert io.parse_spec('f.h5:/g/d') == ('hdf5', 'f.h5', '/g/d')
    assert io.parse_spec('f.HDF5') == ('hdf5', 'f.HDF5', None)
    assert io.parse_spec('d/s.zarr/a/b') == ('zarr', 'd/s.zarr', 'a/b')
    assert io.parse_spec('s.zarr/') == ('zarr', 's.zarr', None)
    p = str(tmp_path / 'noext')
    np.save(p + '.npy', np.arange(3))
    os.rename(p + '.npy', p)
    assert io.parse_spec(p) == ('npy', p, None)
    with pytest.raises(io.SourceError, match='cannot tell the format'):
        io.parse_spec(str(tmp_path / 'what.txt'))


def test_exports_are_lazy_attributes():
    assert wendelin_cy.from_npy is io.from_npy and wendelin_cy.to_zarr is io.to_zarr


def test_walk_finds_arrays_in_containers(root):
    from BTrees.OOBTree import OOBTree
    from persistent.list import PersistentList
    from persistent.mapping import PersistentMapping

    root['top'] = ZBigArray((1,), 'i1')
    root['tree'] = t = OOBTree()
    t['x'] = ZBigArray((2,), 'i1')
    root['list'] = PersistentList([0, PersistentMapping(a=ZBigArray((3,), 'i1'))])
    root['obj'] = o = Holder()
    o.arr = ZBigArray((4,), 'i1')
    o.again = root['top']                           # reached twice, listed once
    assert isinstance(o, Persistent)
    transaction.commit()
    found = {k: A.shape for k, A in keypath.walk(root)}
    assert found == {'top': (1,), 'tree/x': (2,), 'list/1/a': (3,), 'obj/arr': (4,)}
    assert keypath.resolve_array(root, '/list/1/a/').shape == (3,)
    with pytest.raises(keypath.NotAnArray, match='PersistentList'):
        keypath.resolve_array(root, 'list')
    with pytest.raises(keypath.KeyPathError, match="no key 'nope' in tree"):
        keypath.resolve(root, 'tree/nope')


class Holder(Persistent):
    """A persistent object of the user's, holding an array in an attribute."""


def test_info_counts_block_formats(tmp_path):
    from wendelin_cy import dbinfo
    r = dbopen(str(tmp_path / 'db.fs'))
    try:
        bs = 2 << 20
        r['auto'] = A = ZBigArray((5 * bs,), 'u1')
        r['z0'] = B = ZBigArray((3 * bs,), 'u1', zblk_fmt='ZBlk0')
        transaction.commit()
        A[:bs] = 1                  # a whole block: a blob segment (FileStorage)
        A[2 * bs:2 * bs + 10] = 2   # a small change: ZBlk1
        B[bs:bs + 5] = 3
        transaction.commit()
        info = dbinfo.array_info('auto', A)
        assert info['blocks'] == {'ZBlk0': 0, 'ZBlk1': 1, 'blob': 1, 'hole': 3, 'other': 0}
        assert info['nblocks'] == 5 and info['nbytes'] == 5 * bs
        assert bs <= info['disk_bytes']['blob'] < bs + 4096     # + its small record
        assert 10 <= info['disk_bytes']['ZBlk1'] < 4096
        assert info['last_commit'] and len(info['last_tid']) == 16
        info = dbinfo.array_info('z0', B)
        assert info['blocks']['ZBlk0'] == 1 and info['blocks']['hole'] == 2
        assert 5 <= info['disk_bytes']['ZBlk0'] < 200      # trailing zeros not stored
        db = dbinfo.database_info(r)
        assert [a['key'] for a in db['arrays']] == ['auto', 'z0'] and db['partial'] == []
    finally:
        transaction.abort()
        dbclose(r)


def test_verify_reports_a_record_too_big(root):
    from wendelin_cy import verify
    from wendelin_cy.bigfile.file_zodb import ZBlk0
    root['A'] = A = ZBigArray((3, 4096), 'u1', blksize=4096)
    transaction.commit()
    A[0] = 1
    A[2] = 2
    transaction.commit()
    assert verify.verify_database(root).ok
    A.zfile.blktab[1] = bad = ZBlk0(b'x' * 5000)     # more than a block
    transaction.commit()
    r = verify.verify_database(root)
    assert not r.ok and r.blocks == 2
    (p,) = r.problems
    assert p.key == 'A' and p.blk == 1 and p.oid == '0x' + bad._p_oid.hex()
    assert 'wrong record size' in p.message and '5000' in p.message
    assert 'A: block 1 (ZBlk0, oid 0x' in str(p)


def test_verify_runs_content_checks(root):
    from wendelin_cy import verify
    root['A'] = A = ZBigArray((2, 4096), 'u1', blksize=4096)
    transaction.commit()
    A[:] = 7
    transaction.commit()
    seen = []

    def check(ref, data):
        seen.append((ref.blk, len(data), ref.fmt))
        return 'odd block' if ref.blk == 1 else None
    r = verify.verify_database(root, 'A', checks=[check])
    assert sorted(seen) == [(0, 4096, 'ZBlk0'), (1, 4096, 'ZBlk0')]
    assert [(p.blk, p.message) for p in r.problems] == [(1, 'odd block')]
