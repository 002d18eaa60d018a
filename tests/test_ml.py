"""wendelin_cy.ml: batches are views, partial_fit over batches equals the same
over an in-memory array, results written back in parts, arrays shared with
other processes by reference, and training under a RAM budget."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import transaction

pytest.importorskip('sklearn')

from wendelin_cy import ml
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')

N, D = 100_000, 8               # 6.1 MiB of float64


@pytest.fixture
def db(tmp_path, budget):
    """FileStorage with X (N, D) float64 and y (N,) int64 committed; budget 8M."""
    budget('8M')
    root = dbopen(str(tmp_path / 'ml.fs'))
    rng = np.random.default_rng(0)
    xm = rng.normal(size=(N, D)) + np.arange(D)
    ym = (xm[:, 0] + xm[:, 1] > 1).astype(np.int64)
    root['X'] = X = ZBigArray((N, D), np.float64)
    root['y'] = y = ZBigArray((N,), np.int64)
    transaction.commit()
    X[:] = xm
    y[:] = ym
    transaction.commit()
    yield root, X, y, xm, ym
    transaction.abort()
    ml.close_shared()
    dbclose(root)


def _bounds(n, br):
    return [(i, min(i + br, n)) for i in range(0, n, br)]


# ~~~ batches

def test_batches_are_views(db):
    root, X, y, xm, ym = db
    a, b = X[:], y[:]
    batches = list(ml.iter_batches(X, y))
    assert len(batches) > 2
    rows = 0
    for xb, yb in batches:
        assert isinstance(xb, np.ndarray) and isinstance(yb, np.ndarray)
        assert np.shares_memory(xb, a) and np.shares_memory(yb, b)
        assert xb.shape[0] == yb.shape[0]
        np.testing.assert_array_equal(xb, xm[rows:rows + len(xb)])
        rows += len(xb)
    assert rows == N
    # default size: block-aligned, about budget/8
    br = ml.batch_rows_for(X.shape, X.dtype, 2 << 20)
    assert batches[0][0].shape[0] == br
    assert (br * D * 8) % (2 << 20) == 0
    # ndarray input: views of it
    for xb in ml.iter_batches(xm, batch_rows=1000):
        assert np.shares_memory(xb, xm)


def test_batch_rows_for():
    MiB = 1 << 20
    # 64-byte rows: whole blocks of rows, about budget/8
    assert ml.batch_rows_for((10**9, 8), np.float64, 2 * MiB, 256 * MiB) == 32 * MiB // 64
    # odd row size: not alignable within the target -> budget/8 in rows
    r = ml.batch_rows_for((10**9, 3), np.float64, 2 * MiB, 64 * MiB)
    assert 0 < r * 24 <= 8 * MiB
    assert ml.batch_rows_for((10, 10**7), np.float64, 2 * MiB, 16 * MiB) == 1


def test_shuffle_reproducible(db):
    root, X, y, xm, ym = db

    def order(**kw):
        return [int(xb[0, 0] * 1e6) for xb in ml.iter_batches(X, batch_rows=5000, **kw)]

    plain = order()
    assert order(shuffle=True, seed=1) == order(shuffle=True, seed=1)
    assert sorted(order(shuffle=True, seed=1)) == sorted(plain)
    assert order(shuffle=True, seed=1) != plain
    assert order(shuffle=True, seed=1) != order(shuffle=True, seed=2)

    from sklearn.linear_model import SGDRegressor
    r1 = ml.fit_incremental(SGDRegressor(random_state=0), X, xm[:, 0] * 2,
                            epochs=2, shuffle=True, seed=3, progress=False)
    r2 = ml.fit_incremental(SGDRegressor(random_state=0), X, xm[:, 0] * 2,
                            epochs=2, shuffle=True, seed=3, progress=False)
    np.testing.assert_array_equal(r1.coef_, r2.coef_)


# ~~~ fit_incremental == the same partial_fit calls on an in-memory array

def _estimators():
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA
    from sklearn.preprocessing import StandardScaler
    return [
        (lambda: StandardScaler(), ('mean_', 'var_', 'scale_', 'n_samples_seen_')),
        (lambda: IncrementalPCA(n_components=3),
         ('components_', 'explained_variance_', 'mean_', 'singular_values_')),
        (lambda: MiniBatchKMeans(n_clusters=4, random_state=0, n_init=1),
         ('cluster_centers_',)),
    ]


@pytest.mark.parametrize('k', range(3), ids=['StandardScaler', 'IncrementalPCA',
                                             'MiniBatchKMeans'])
def test_fit_incremental_equals_in_memory(db, k):
    root, X, y, xm, ym = db
    make, attrs = _estimators()[k]
    est = ml.fit_incremental(make(), X, progress=False)
    ref = make()
    br = ml.batch_rows_for(X.shape, X.dtype, 2 << 20)
    for i, j in _bounds(N, br):
        ref.partial_fit(xm[i:j])
    for a in attrs:
        np.testing.assert_allclose(getattr(est, a), getattr(ref, a), rtol=1e-12,
                                   atol=0, err_msg=a)


def test_fit_incremental_passes_kwargs(db):
    root, X, y, xm, ym = db
    from sklearn.linear_model import SGDClassifier
    from sklearn.naive_bayes import GaussianNB
    clf = ml.fit_incremental(SGDClassifier(random_state=0), X, y,
                             classes=np.array([0, 1]), progress=False)
    assert list(clf.classes_) == [0, 1]
    assert (clf.predict(xm[:5000]) == ym[:5000]).mean() > 0.9
    nb = ml.fit_incremental(GaussianNB(), X, y, classes=[0, 1], progress=False)
    assert nb.class_count_.sum() == N
    with pytest.raises(TypeError, match='partial_fit'):
        from sklearn.linear_model import LinearRegression
        ml.fit_incremental(LinearRegression(), X, y)
    with pytest.raises(ValueError, match='rows'):
        ml.fit_incremental(SGDClassifier(), X, ym[:10], classes=[0, 1])


# ~~~ writing results back

def test_transform_into_and_predict_into(db):
    root, X, y, xm, ym = db
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler
    sc = ml.fit_incremental(StandardScaler(), X, progress=False)
    root['Z'] = Z = ZBigArray((N, D), np.float64)
    root['L'] = L = ZBigArray((N,), np.int32)
    transaction.commit()
    storage = root._p_jar.db().storage
    ntxn = sum(1 for _ in storage.iterator())
    ml.transform_into(sc, X, Z, batch_rows=7000, commit_every=3)
    np.testing.assert_array_equal(Z[:], sc.transform(xm))
    # 15 batches, a commit every 3 of them: committed in (at least) 5 parts
    assert sum(1 for _ in storage.iterator()) - ntxn >= 5
    km = ml.fit_incremental(MiniBatchKMeans(n_clusters=3, random_state=0, n_init=1),
                            X, progress=False)
    ml.predict_into(km, X, L)
    np.testing.assert_array_equal(L[:], km.predict(xm))
    # committed: another connection sees the results
    assert not Z._fileh.isdirty() and not L._fileh.isdirty()
    tm = transaction.TransactionManager()
    c2 = root._p_jar.db().open(tm)
    try:
        np.testing.assert_array_equal(c2.root()['Z'][:], sc.transform(xm))
    finally:
        from wendelin_cy.bigfile.file_zodb import _close_handles_of
        _close_handles_of(c2)
        tm.abort()
        c2.close()
    # into a plain ndarray too
    out = np.empty((N, D))
    ml.transform_into(sc, X, out)
    np.testing.assert_array_equal(out, sc.transform(xm))


def test_into_shape_errors(db):
    root, X, y, xm, ym = db
    from sklearn.decomposition import IncrementalPCA
    pca = ml.fit_incremental(IncrementalPCA(n_components=2), X, progress=False)
    root['W'] = W = ZBigArray((N, 3), np.float64)
    root['S'] = S = ZBigArray((N - 1, 2), np.float64)
    transaction.commit()
    with pytest.raises(ValueError, match=r'rows of shape \(2,\).*\(3,\)'):
        ml.transform_into(pca, X, W)
    assert not W._fileh.isdirty()           # nothing written
    with pytest.raises(ValueError, match='out needs 100000 rows'):
        ml.transform_into(pca, X, S)
    with pytest.raises(TypeError, match='transform'):
        ml.transform_into(object(), X, W)


# ~~~ sharing by reference

def _batch_sum(ref):
    return float(np.sum(ref.open()))


def test_share_pickles_small_and_opens_snapshot(db):
    root, X, y, xm, ym = db
    v = X[1000:3000, 2:5]
    ref = ml.share(v)
    s = pickle.dumps(ref)
    assert len(s) < 400
    np.testing.assert_array_equal(ref.open(), xm[1000:3000, 2:5])
    ref2 = pickle.loads(s)
    ref2._pid = None                        # as in another process: reopen by URI
    # the sender changes the data: references keep the snapshot they were made at
    X[:] = 0
    transaction.commit()
    for r in (ref, ref2):
        w = r.open()
        np.testing.assert_array_equal(w, xm[1000:3000, 2:5])
        assert not w.flags.writeable
    np.testing.assert_array_equal(np.asarray(ml.share(X)), np.zeros((N, D)))


def test_share_errors(db, tmp_path):
    root, X, y, xm, ym = db
    with pytest.raises(TypeError, match='not a view of a ZBigArray'):
        ml.share(np.zeros(3))
    root['new'] = ZBigArray((10,), np.float64)
    with pytest.raises(ValueError, match='commit first'):
        ml.share(root['new'])
    transaction.abort()
    X[0, 0] = 42
    with pytest.warns(ml.SnapshotWarning, match='uncommitted'):
        ml.share(X[:10])
    transaction.abort()
    # memory:// cannot be reached from another process
    r2 = dbopen('memory://')
    try:
        r2['A'] = A = ZBigArray((10,), np.float64)
        r2._p_jar.transaction_manager.commit()
        ref = ml.share(A)
        assert ref.uri is None
        assert ref.open().shape == (10,)    # same process: fine
        ref._pid = None
        with pytest.raises(ml.DatabaseUnreachable, match='URI is unknown'):
            ref.open()
    finally:
        transaction.abort()
        dbclose(r2)


def test_unreachable_database(db, tmp_path):
    root, X, y, xm, ym = db
    ref = ml.share(X[:100])
    bad = pickle.loads(pickle.dumps(ref))
    bad.uri = str(tmp_path / 'gone' / 'ml.fs')
    bad._pid = None
    with pytest.raises(ml.DatabaseUnreachable, match='cannot reach database .*gone'):
        bad.open()
    with pytest.raises(ConnectionError):        # also a ConnectionError
        bad.open()
    z = ml.ArrayRef('zeo://127.0.0.1:1?wait_timeout=0.2', ref.oid, ref.before, 0,
                    (3,), (8,), np.float64, 2 << 20)
    with pytest.raises(ml.DatabaseUnreachable, match='zeo://127.0.0.1:1'):
        z.open()


def test_joblib_map_by_reference(db, tmp_path, monkeypatch):
    joblib = pytest.importorskip('joblib')
    root, X, y, xm, ym = db
    # bigger than the 8M budget of this process and of the workers
    root['B'] = B = ZBigArray((3 << 20,), np.float64)       # 24 MiB
    transaction.commit()
    b = B[:]
    for i in range(0, len(b), 1 << 18):
        b[i:i + (1 << 18)] = np.sin(np.arange(i, min(i + (1 << 18), len(b))))
    transaction.commit()
    batches = list(ml.iter_batches(B))
    assert len(batches) >= 8
    local = [float(np.sum(xb)) for xb in batches]
    refs = [ml.share(xb) for xb in batches]
    monkeypatch.setenv('WENDELIN_CY_RAM_BUDGET', '8M')
    monkeypatch.setenv('PYTHONPATH', SRC + os.pathsep + os.environ.get('PYTHONPATH', ''))
    par = joblib.Parallel(n_jobs=2, backend='loky')
    got = par(joblib.delayed(_batch_sum)(r) for r in refs)
    assert got == local
    # a worker that cannot reach the database gets the clear error
    bad = pickle.loads(pickle.dumps(refs[0]))
    bad.uri = str(tmp_path / 'nowhere.fs')
    with pytest.raises(ml.DatabaseUnreachable, match='nowhere.fs'):
        par(joblib.delayed(_batch_sum)(r) for r in [bad])


# ~~~ out of core: training on an array bigger than the budget, in a subprocess

OOC = r'''
import gc, os, resource, numpy as np, transaction, wendelin_cy
from wendelin_cy import ml
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
from sklearn.cluster import MiniBatchKMeans
from sklearn.linear_model import SGDRegressor

def hwm():
    for l in open('/proc/self/status'):
        if l.startswith('VmHWM:'):
            return int(l.split()[1]) * 1024

budget = wendelin_cy.get_ram_budget()
root = dbopen('ooc.fs')
root['X'] = X = ZBigArray((0, 16), np.float64)
transaction.commit()
rng = np.random.default_rng(0)
w = np.arange(16.0)
for i in range(48):                             # 48 x 2 MiB = 96 MiB = 6x budget
    X.append(rng.normal(size=(16384, 16)))
    transaction.commit()
    gc.collect()        # ZODB's ObjectWriter cycles keep each record's pickle
transaction.abort()
before = hwm()                # the ingest is not what we measure: reset the mark
with open('/proc/self/clear_refs', 'w') as f:   # Linux >= 4.0: reset VmHWM
    f.write('5')
base = hwm()
a = X[:]
km = ml.fit_incremental(MiniBatchKMeans(n_clusters=8, random_state=0, n_init=1),
                        X, progress=False)
reg = SGDRegressor(random_state=0)
for xb in ml.iter_batches(X, shuffle=True, seed=0):
    reg.partial_fit(xb, xb @ w)
st = wendelin_cy.pager_stats()
print(budget, X.nbytes, before, base, hwm(),
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      st['peak_resident'], st['evictions'], float(np.abs(reg.coef_ - w).max()))
del a
dbclose(root)
'''


def test_out_of_core_training_rss(tmp_path):
    env = dict(os.environ, WENDELIN_CY_RAM_BUDGET='16M',
               PYTHONPATH=SRC + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.run([sys.executable, '-c', OOC], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    budget, nbytes, before, base, hwm, maxrss, peak_res, evictions, err = \
        p.stdout.split()
    budget, nbytes, before, base, hwm, peak_res = map(
        int, (budget, nbytes, before, base, hwm, peak_res))
    MiB = 1 << 20
    assert nbytes >= 6 * budget
    assert int(evictions) > 0
    assert peak_res <= budget
    assert float(err) < 0.05
    # peak RSS of the training process: under budget + a fixed margin.
    # VmHWM, not ru_maxrss: on Linux ru_maxrss of a child started by a big
    # process (this pytest) starts at the parent's RSS.
    assert max(before, hwm) <= budget + 150 * MiB, (before / MiB, hwm / MiB, maxrss)
    # and what training added to the process is far below the array size
    assert hwm - base <= budget + 48 * MiB, ((hwm - base) / MiB, nbytes / MiB)


def test_share_over_zeo(tmp_path, budget):
    ZEO = pytest.importorskip('ZEO')
    budget('8M')
    addr, stop = ZEO.server(path=str(tmp_path / 'zeo.fs'))
    try:
        root = dbopen('zeo://%s:%d' % addr)
        try:
            root['A'] = A = ZBigArray((300_000,), np.float64)
            transaction.commit()
            A[:] = np.arange(300_000.0)
            transaction.commit()
            ref = ml.share(A[1000:500_000:7])
            assert ref.uri in ('zeo://%s:%d' % addr, 'zeo://%s:%d?storage=1' % addr)
            A[:] = -1
            transaction.commit()
            ref._pid = None                 # reopen by URI, at the snapshot
            np.testing.assert_array_equal(ref.open(), np.arange(300_000.0)[1000::7])
        finally:
            transaction.abort()
            ml.close_shared()
            dbclose(root)
    finally:
        stop()


def test_threads_share_the_senders_db(db):
    joblib = pytest.importorskip('joblib')
    root, X, y, xm, ym = db
    batches = list(ml.iter_batches(X, batch_rows=10_000))
    refs = [ml.share(b) for b in batches]
    got = joblib.Parallel(n_jobs=2, backend='threading')(
        joblib.delayed(_batch_sum)(r) for r in refs)
    assert got == [float(np.sum(b)) for b in batches]
    assert not ml._owned_dbs                # no second DB opened by URI


def test_reshare_from_a_historical_view(db):
    root, X, y, xm, ym = db
    ref = ml.share(X)
    X[:] = 1
    transaction.commit()
    v = ref.open()                          # historical, before the change
    ref2 = ml.share(v[10:20])               # a view of a view: same snapshot
    assert ref2.before == ref.before
    np.testing.assert_array_equal(ref2.open(), xm[10:20])


def test_array_ref_as_input(db):
    root, X, y, xm, ym = db
    from sklearn.preprocessing import StandardScaler
    ref = pickle.loads(pickle.dumps(ml.share(X)))
    ref._pid = None                         # as a worker would
    a = ml.fit_incremental(StandardScaler(), ref, progress=False)
    b = ml.fit_incremental(StandardScaler(), X, progress=False)
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_array_equal(a.var_, b.var_)
