"""Views of a ZBigArray are exactly numpy.ndarray, and pickle their data as
any ndarray; `wendelin_cy.share(v)` pickles to a small reference (URI, oid,
snapshot, geometry) that unpickles to the read-only view, and joblib's
process workers get views by reference (bigarray._joblib) when other
processes can open the database and the view has no uncommitted changes,
the data otherwise."""

import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transaction

import wendelin_cy
from wendelin_cy import ml
from wendelin_cy.bigarray._viewref import _view_reduce
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')

BS = 64 << 10                   # blocks of 64 KiB: views span several blocks
NA = 300_000                    # A: (NA,) float64, 2.3 MiB
MR, MC = 5000, 64               # M: (MR, MC) float64, 2.4 MiB
REF_MAX = 400                   # bytes: a pickled reference is smaller


def _model_a():
    return np.arange(NA, dtype=np.float64) * 0.5


def _model_m():
    return np.arange(MR * MC, dtype=np.float64).reshape(MR, MC) - 7


@pytest.fixture
def db(tmp_path, budget):
    budget('8M')
    path = str(tmp_path / 'views.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((NA,), np.float64, blksize=BS)
    root['M'] = M = ZBigArray((MR, MC), np.float64, blksize=BS)
    transaction.commit()
    A[:] = _model_a()
    M[:] = _model_m()
    transaction.commit()
    yield root, A, M, path
    transaction.abort()
    ml.close_shared()
    dbclose(root)


def _env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    env.update(extra)
    return env


def _is_ref(s):
    return b'ArrayRef' in s and len(s) < REF_MAX


def _shared(v, **kw):
    """pickle of wendelin_cy.share(v)"""
    return pickle.dumps(wendelin_cy.share(v), **kw)


def _is_data(s, v):
    return b'ArrayRef' not in s and len(s) >= v.nbytes


def _views(A, M):
    """name -> (view, model value)"""
    a, m = _model_a(), _model_m()
    return {
        'M[10:20]': (M[10:20], m[10:20]),
        'A[5:50:3]': (A[5:50:3], a[5:50:3]),
        'A[5:200000:3]': (A[5:200000:3], a[5:200000:3]),
        'M[:, 2]': (M[:, 2], m[:, 2]),
        'M[10:20][2:5]': (M[10:20][2:5], m[10:20][2:5]),
        'M[100:3000].T': (M[100:3000].T, m[100:3000].T),
        'M[::-3, 5:60:4]': (M[::-3, 5:60:4], m[::-3, 5:60:4]),
        'A[::-1]': (A[::-1], a[::-1]),
        'M[7]': (M[7], m[7]),
        'M[7, ...]': (M[7, ...], m[7, ...]),
        'M[4000:][::2, None, 3:9]': (M[4000:][::2, None, 3:9], m[4000:][::2, None, 3:9]),
        'M[10:300].reshape(-1)': (M[10:300].reshape(-1), m[10:300].reshape(-1)),
        'M[:][1000:1100]': (M[:][1000:1100], m[1000:1100]),
    }


# ~~~ what is a view

def test_views_are_ndarrays(db):
    root, A, M, path = db
    whole = M[:]
    for name, (v, want) in _views(A, M).items():
        assert type(v) is np.ndarray, name
        assert isinstance(v, np.ndarray)
        assert np.shares_memory(v, A[:]) or np.shares_memory(v, whole), name
        assert ml._vma_of(v) is not None, name           # the pager's mapping
        np.testing.assert_array_equal(v, want)
    # the same memory as the plain ndarray view made before
    v = M[10:20]
    assert v.__array_interface__['data'][0] == M[10:20].__array_interface__['data'][0]
    p = np.asarray(v)
    assert type(p) is np.ndarray and p.__array_interface__ == v.__array_interface__
    # advanced indexing: copies, plain ndarrays
    assert type(M[[1, 5, 3]]) is np.ndarray
    assert type(A[A[:] > NA - 3]) is np.ndarray
    assert type(M[np.arange(3), 2]) is np.ndarray
    # scalars
    assert type(A[3]) is np.float64 and type(M[3, 4]) is np.float64


def test_computed_results_are_plain(db):
    root, A, M, path = db
    v = M[10:20]
    for r in (v + 1, v * v, np.sqrt(np.abs(v)), v.sum(axis=0), v.mean(axis=1),
              v.copy(), np.copy(v), v == 3, np.concatenate([v, v]),
              np.stack([v, v]), np.where(v > 0, v, 0), v.clip(0, 5), v.cumsum(),
              np.outer(v[0], v[1])):
        assert type(r) is np.ndarray, type(r)
    for r in (v.sum(), np.sum(v), v.max(), v.mean(), v[0] @ v[1], np.median(v)):
        assert type(r) is np.float64, type(r)
    # in place: the view itself
    w = M[10:20]
    assert np.add(w, 0, out=w) is w
    w += 0
    assert type(w) is np.ndarray
    transaction.abort()


# ~~~ pickling

def test_views_pickle_small_and_load_in_a_fresh_process(db, tmp_path):
    root, A, M, path = db
    views = _views(A, M)
    pickles, wants = {}, {}
    for name, (v, want) in views.items():
        assert _is_data(pickle.dumps(v), v), name      # plain pickle: the data
        s = _shared(v)
        assert _is_ref(s), (name, len(s))
        if v.nbytes >= 8 * REF_MAX:
            assert len(s) * 8 < v.nbytes
        pickles[name], wants[name] = s, want
        # protocols 2..5 all reference
        for proto in range(2, pickle.HIGHEST_PROTOCOL + 1):
            assert _is_ref(_shared(v, protocol=proto)), (name, proto)
    with open(tmp_path / 'pickles', 'wb') as f:
        pickle.dump(pickles, f)
    # the sender changes the data afterwards: the receiver sees the snapshot
    M[:] = 0
    A[:] = 0
    transaction.commit()
    code = textwrap.dedent('''
        import pickle, sys
        import numpy as np
        import wendelin_cy
        from wendelin_cy import ml
        pickles = pickle.load(open(sys.argv[1], 'rb'))
        out, info = {}, {}
        for name, s in pickles.items():
            v = pickle.loads(s)
            info[name] = (type(v).__name__, bool(v.flags.writeable),
                          ml._vma_of(v) is not None)
            out[name] = np.array(v)
            # a view of what was received is shared by reference again
            w = v[::2] if v.ndim else v
            s2 = pickle.dumps(wendelin_cy.share(w))
            assert b'ArrayRef' in s2 and len(s2) < 400, (name, len(s2))
            assert np.array_equal(pickle.loads(s2), np.asarray(v)[::2] if v.ndim else v)
        pickle.dump((out, info), open(sys.argv[2], 'wb'))
    ''')
    p = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'pickles'),
                        str(tmp_path / 'out')], env=_env(WENDELIN_CY_RAM_BUDGET='8M'),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    with open(tmp_path / 'out', 'rb') as f:
        out, info = pickle.load(f)
    for name, want in wants.items():
        np.testing.assert_array_equal(out[name], want, err_msg=name)
        assert info[name] == ('ndarray', False, True), (name, info[name])


def test_shared_views_unpickle_in_the_same_process(db):
    root, A, M, path = db
    for name, (v, want) in _views(A, M).items():
        sv = wendelin_cy.share(v)
        assert sv.shape == v.shape and sv.dtype == v.dtype
        np.testing.assert_array_equal(np.asarray(sv), want, err_msg=name)
        w = pickle.loads(pickle.dumps(sv))
        assert type(w) is np.ndarray and not w.flags.writeable
        np.testing.assert_array_equal(w, want, err_msg=name)


def test_memory_db_pickles_data(budget):
    budget('8M')
    root = dbopen('memory://')
    try:
        root['A'] = A = ZBigArray((100, 50), np.int32, blksize=BS)
        transaction.commit()
        A[:] = np.arange(5000).reshape(100, 50)
        transaction.commit()
        for v in (A[10:20], A[:, 3], A[::-2, 1:40:3], A[5]):
            assert _view_reduce(v) is None      # joblib: sent as data
            s = pickle.dumps(v)
            assert b'ArrayRef' not in s and len(s) >= v.nbytes
            w = pickle.loads(s)
            assert type(w) is np.ndarray and w.flags.writeable
            np.testing.assert_array_equal(w, np.asarray(v))
        # in a fresh process too (nothing refers to this process)
        s = pickle.dumps(A[10:20])
        p = subprocess.run([sys.executable, '-c',
                            'import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).sum())'],
                           input=s, env=_env(), capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert float(p.stdout) == float(np.arange(500, 1000).sum())
    finally:
        transaction.abort()
        dbclose(root)


def test_computed_and_copied_results_pickle_data(db):
    root, A, M, path = db
    m = _model_m()
    cases = [
        (M[0:10] + 1, m[0:10] + 1),
        (M[0:10].copy(), m[0:10]),
        (M[0:10].astype(np.float32), m[0:10].astype(np.float32)),
        (np.sort(M[0:10], axis=0), np.sort(m[0:10], axis=0)),
        (M[0:10][[0, 3]], m[0:10][[0, 3]]),            # fancy indexing of a view
        (M[0:10].flatten(), m[0:10].flatten()),
        (M[0:10][::2].ravel(), m[0:10][::2].ravel()),  # ravel copies
    ]
    for r, want in cases:
        assert _view_reduce(r) is None, type(r)     # joblib: sent as data
        s = pickle.dumps(r)
        assert b'ArrayRef' not in s and len(s) >= r.nbytes, type(r)
        w = pickle.loads(s)
        assert type(w) is np.ndarray
        np.testing.assert_array_equal(w, want)


def test_uncommitted_changes_pickle_data(db):
    root, A, M, path = db
    M[12, 0] = -1                       # dirties one 64 KiB block of M
    v = M[10:20]
    # joblib sends it as data: the receiver gets what the sender sees
    assert _view_reduce(v) is None
    with pytest.warns(ml.SnapshotWarning):
        wendelin_cy.share(v)            # explicit sharing: says so
    far = M[4000:4010]                  # other blocks: by reference, committed data
    r = _view_reduce(far)
    assert r is not None and _is_ref(pickle.dumps(r[1][0]))
    np.testing.assert_array_equal(r[0](*r[1]), _model_m()[4000:4010])
    transaction.abort()
    assert _view_reduce(M[10:20]) is not None


def test_zodb_stores_views_as_data(tmp_path, budget):
    # a view in the state of a persistent object is stored as data, not as a
    # reference to a snapshot of the database it is stored in
    budget('8M')
    path = str(tmp_path / 'kept.fs')
    root = dbopen(path)
    try:
        root['M'] = M = ZBigArray((MR, MC), np.float64, blksize=BS)
        transaction.commit()
        M[:] = _model_m()
        transaction.commit()
        root['kept'] = {'v': M[10:20], 'col': M[:, 3]}
        transaction.commit()
        M[:] = 0
        transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    root = dbopen(path)
    try:
        kept = root['kept']
        assert type(kept['v']) is np.ndarray and type(kept['col']) is np.ndarray
        np.testing.assert_array_equal(kept['v'], _model_m()[10:20])
        np.testing.assert_array_equal(kept['col'], _model_m()[:, 3])
    finally:
        transaction.abort()
        dbclose(root)


hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@st.composite
def _shape_and_index(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9))
    idx = draw(hnp.basic_indices(shape, min_dims=0, allow_newaxis=True,
                                 allow_ellipsis=True))
    order = draw(st.sampled_from('CF'))
    dtype = draw(st.sampled_from([np.int64, np.uint8, np.float32, np.dtype('i2,u4')]))
    return shape, idx, order, np.dtype(dtype)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(case=_shape_and_index())
def test_pickled_basic_index_equals_numpy(db, case):
    root, A, M, path = db
    shape, idx, order, dt = case
    n = int(np.prod(shape))
    model = np.arange(n * dt.itemsize, dtype=np.uint8).view(dt).reshape(shape, order=order)
    Z = ZBigArray(shape, dt, order=order, blksize=4096)
    root['h'] = Z
    transaction.commit()
    Z[...] = model
    transaction.commit()
    v = Z[idx]
    want = model[idx]
    if isinstance(v, np.ndarray) and v.size:
        assert type(v) is np.ndarray
        s = _shared(v)
        assert b'ArrayRef' in s and len(s) < REF_MAX + 200
        w = pickle.loads(s)
        assert type(w) is np.ndarray and not w.flags.writeable
    else:
        w = pickle.loads(pickle.dumps(v))
    np.testing.assert_array_equal(w, want)
    assert np.asarray(w).dtype == want.dtype and np.shape(w) == want.shape
    del v, w, Z
    transaction.abort()


# ~~~ joblib workers

def _spy_joblib_dumps(monkeypatch):
    """-> list of nbytes of the arrays joblib dumps into its temp folder
    (it pickles tasks in this process, in loky's feeder thread)."""
    import joblib._memmapping_reducer as jm
    got = []
    real = jm.dump

    def dump(a, filename, *args, **kw):
        got.append(a.nbytes)
        return real(a, filename, *args, **kw)
    monkeypatch.setattr(jm, 'dump', dump)
    return got


def _batch_info(batch):
    # what the worker got: mapped from the database (not a copy), read-only
    return (float(np.sum(batch)), type(batch).__name__, ml._vma_of(batch) is not None,
            bool(batch.flags.writeable), os.getpid(), batch[:4])


def test_joblib_map_over_views(db, tmp_path, monkeypatch):
    joblib = pytest.importorskip('joblib')
    root, A, M, path = db
    # bigger than the 8M budget of this process and of the workers
    root['B'] = B = ZBigArray((3 << 20,), np.float64)       # 24 MiB
    transaction.commit()
    for i in range(0, B.shape[0], 1 << 18):
        j = min(i + (1 << 18), B.shape[0])
        B[i:j] = np.sin(np.arange(i, j))
    transaction.commit()
    rows = 300_000                                         # 2.3 MiB per batch
    bounds = [(i, min(i + rows, B.shape[0])) for i in range(0, B.shape[0], rows)]
    batches = [B[i:j] for i, j in bounds]                  # plain ndarray views
    assert len(batches) >= 10
    for b in batches:
        assert type(b) is np.ndarray
    local = [float(np.sum(b)) for b in batches]
    # joblib would dump each batch (> its max_nbytes, 1 MB) into a folder
    dumps = _spy_joblib_dumps(monkeypatch)
    monkeypatch.setenv('WENDELIN_CY_RAM_BUDGET', '8M')
    monkeypatch.setenv('PYTHONPATH', SRC + os.pathsep + os.environ.get('PYTHONPATH', ''))
    got = joblib.Parallel(n_jobs=2, backend='loky')(
        joblib.delayed(_batch_info)(b) for b in batches)
    assert [g[0] for g in got] == local
    assert {g[1:4] for g in got} == {('ndarray', True, False)}
    assert len({g[4] for g in got} - {os.getpid()}) >= 1
    assert dumps == []                                     # nothing copied
    # what the workers sent back: data, the same values
    for (i, j), g in zip(bounds, got):
        assert type(g[5]) is np.ndarray
        np.testing.assert_array_equal(g[5], np.sin(np.arange(i, i + 4)))
    # a plain ndarray of the same size still goes joblib's way (dumped)
    plain = np.sin(np.arange(rows))
    assert joblib.Parallel(n_jobs=2, backend='loky')(
        joblib.delayed(np.sum)(x) for x in [plain, plain]) == [np.sum(plain)] * 2
    assert len(dumps) == 1 and dumps[0] == plain.nbytes     # (once: same array)


def _moved_db(tmp_path):
    """A FileStorage with an array, and a pickled view of it; then the file
    is renamed: other processes cannot open it any more."""
    path = str(tmp_path / 'moving.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((10_000,), np.float64, blksize=BS)
    transaction.commit()
    A[:] = 1
    transaction.commit()
    views = [A[:5000], A[5000:]]
    os.rename(path, path + '.moved')
    return root, path, views


def test_unreachable_database_in_a_fresh_process(tmp_path, budget):
    budget('8M')
    root, path, views = _moved_db(tmp_path)
    try:
        s = _shared(views[0])
        assert _is_ref(s)
        code = textwrap.dedent('''
            import pickle, sys
            from wendelin_cy import ml
            try:
                pickle.loads(sys.stdin.buffer.read())
            except ml.DatabaseUnreachable as e:
                print('DatabaseUnreachable', e)
        ''')
        p = subprocess.run([sys.executable, '-c', code], input=s, env=_env(),
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode()
        assert out.startswith('DatabaseUnreachable'), out
        assert 'cannot reach database %r' % path in out, out
    finally:
        os.rename(path + '.moved', path)
        transaction.abort()
        dbclose(root)


def test_unreachable_database_in_a_joblib_worker(tmp_path, budget, monkeypatch):
    joblib = pytest.importorskip('joblib')
    budget('8M')
    monkeypatch.setenv('PYTHONPATH', SRC + os.pathsep + os.environ.get('PYTHONPATH', ''))
    root, path, views = _moved_db(tmp_path)
    try:
        with pytest.raises(Exception) as ei:
            joblib.Parallel(n_jobs=2, backend='loky')(
                joblib.delayed(_batch_info)(v) for v in views)
        # the worker fails to unpickle its task: loky reports the worker's
        # traceback, which ends with the DatabaseUnreachable naming the file
        chain, e = [], ei.value
        while e is not None:
            chain.append(str(e))
            e = e.__cause__ or e.__context__
        text = '\n'.join(chain)
        assert 'DatabaseUnreachable' in text, text
        assert 'cannot reach database %r' % path in text, text
    finally:
        os.rename(path + '.moved', path)
        transaction.abort()
        dbclose(root)


# ~~~ the joblib hook (bigarray._joblib)

@pytest.mark.parametrize('first', ['joblib', 'wendelin_cy'])
def test_joblib_hooked_whichever_is_imported_first(first):
    pytest.importorskip('joblib')
    code = textwrap.dedent('''
        import sys
        if sys.argv[1] == 'joblib':
            import joblib.parallel  # noqa: F401
        import wendelin_cy.bigarray.array_zodb  # noqa: F401
        from wendelin_cy.bigarray import _joblib
        if sys.argv[1] == 'wendelin_cy':
            # importing wendelin_cy does not import joblib
            assert 'joblib' not in sys.modules, 'joblib imported'
            assert not _joblib.installed()
            import joblib.parallel  # noqa: F401
        import joblib._memmapping_reducer as m
        assert _joblib.installed()
        assert getattr(m.ArrayMemmapForwardReducer.__call__, '_wcy', False)
        _joblib.install()               # idempotent
        assert m.ArrayMemmapForwardReducer.__call__.__wrapped__.__module__ == m.__name__
        assert not any(type(f).__name__ == '_Finder' for f in sys.meta_path)
        print('ok')
    ''')
    p = subprocess.run([sys.executable, '-c', code, first], env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == 'ok'


def test_unrelated_arrays_go_joblibs_way(tmp_path):
    # the hooked reducer gives joblib's own answer for every other ndarray
    pytest.importorskip('joblib')
    from joblib._memmapping_reducer import ArrayMemmapForwardReducer
    from wendelin_cy.bigarray import _joblib
    _joblib.install()
    red = ArrayMemmapForwardReducer(max_nbytes=None, temp_folder_resolver=lambda: str(tmp_path),
                                    mmap_mode='r', unlink_on_gc_collect=False)
    orig = ArrayMemmapForwardReducer.__call__.__wrapped__
    buf = bytearray(800)
    for a in (np.arange(10), np.zeros((3, 4))[:, 1], np.frombuffer(buf, np.float64),
              np.arange(6).reshape(2, 3).T, np.float64(3) * np.ones(2)):
        assert red(a) == orig(red, a) or pickle.dumps(red(a)) == pickle.dumps(orig(red, a))


def test_zbigarrayview_name_is_deprecated():
    from wendelin_cy.bigarray import array_zodb
    with pytest.warns(DeprecationWarning, match='plain numpy.ndarray'):
        cls = array_zodb.ZBigArrayView
    assert cls is np.ndarray


def test_sklearn_n_jobs_gets_views_by_reference(db, tmp_path, monkeypatch):
    # cross_val_score(n_jobs=2) sends X whole to each loky worker, which
    # splits it there: X goes by reference, nothing lands in joblib's folder
    pytest.importorskip('sklearn')
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    root, A, M, path = db
    rng = np.random.default_rng(5)
    n, d = 40_000, 16                                      # X: 5 MiB
    x = rng.normal(size=(n, d))
    yv = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    root['X'] = X = ZBigArray((n, d), np.float64)
    transaction.commit()
    X[:] = x
    transaction.commit()
    dumps = _spy_joblib_dumps(monkeypatch)
    monkeypatch.setenv('WENDELIN_CY_RAM_BUDGET', '8M')
    monkeypatch.setenv('PYTHONPATH', SRC + os.pathsep + os.environ.get('PYTHONPATH', ''))
    Xv = X[:]
    assert type(Xv) is np.ndarray
    est = LogisticRegression(max_iter=300)
    par = cross_val_score(est, Xv, yv, cv=3, n_jobs=2)
    seq = cross_val_score(est, x, yv, cv=3, n_jobs=1)
    np.testing.assert_allclose(par, seq)
    assert par.min() > 0.9
    assert dumps == []                  # joblib dumped no array to its folder
