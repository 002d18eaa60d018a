"""dask.distributed over ZBigArray, with worker processes (issue 15).

* A ``LocalCluster(processes=True)`` computes over ``da.from_array(A)``: the
  graph carries ``pickle.dumps(A)``, an ``ArrayRef`` (URI, oid, snapshot), and
  each worker opens the database by URI (ZEO, or a FileStorage read-only) and
  maps only the blocks of its chunks.
* The graph is small (a reference, not the data), and the workers read the
  snapshot the reference carries: a graph built from ``pickle.loads(
  pickle.dumps(A))`` (the ArrayRef itself) sees the data as it was then, even
  after the parent commits a change; a graph built from ``A`` takes its
  reference when the client serializes it (at ``compute``).
* Workers write back: each task opens the database (``dbopen``), writes its
  rows of ``root['Y']`` and commits in its own transaction, retrying on
  ``ConflictError``.  Tasks that write different blocks at the same time merge
  on the ZEO server (``ZBigFile._p_resolveConflict`` for the ``rev`` counter,
  BTrees' resolution for ``blktab``) and need no retry; two tasks writing
  different rows of one block conflict, and the retry makes both land.

Tasks wait for each other (``distributed.Event``) before committing, so that
their transactions overlap for sure.
"""

import contextlib
import pickle
import sys
import uuid

import cloudpickle
import numpy as np
import pytest
import transaction

import dask.array as da
import distributed

from storages import make_storage, zeo_server  # noqa: F401
from wendelin_cy.bigarray._viewref import ArrayRef, close_shared
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile._zblk_io import CHUNKSIZE
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 2 << 20                    # 2 MiB blocks
COLS = 8                        # float64 rows of 64 bytes
RPB = BS // (8 * COLS)          # rows per block: 32768
RPC = CHUNKSIZE // (8 * COLS)   # rows per ZBlk1 chunk: 512
NBLK = 8                        # arrays of 16 MiB
NROWS = NBLK * RPB
CHUNKS = (RPB // 2, COLS)       # 16 dask chunks of 1 MiB
REF_MAX = 64 << 10              # a pickled graph / reference is smaller
WORKER_BUDGET = '64M'
TIMEOUT = 60                    # s, for any one computation


# ~~~ fixtures

@pytest.fixture
def cluster():
    """A Client on 2 worker processes of 2 threads each, with a RAM budget."""
    # the task functions below live in this module, which the workers cannot
    # import (tests/ is not on their path): ship them by value
    mod = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(mod)
    cl = client = None
    try:
        cl = distributed.LocalCluster(
            processes=True, n_workers=2, threads_per_worker=2,
            dashboard_address=None, env={'WENDELIN_CY_RAM_BUDGET': WORKER_BUDGET})
        client = distributed.Client(cl, timeout=TIMEOUT)
        client.wait_for_workers(2, timeout=TIMEOUT)
        workers = set(client.scheduler_info()['workers'])
        yield client
        # a worker that died (SIGBUS of a failed page fault, ...) is restarted
        # by its nanny and dask recomputes its tasks: the results are right,
        # the crash would go unseen
        now = set(client.scheduler_info()['workers'])
        assert now == workers, ('worker processes died during the test (see '
                                'the captured stderr): %s' % sorted(workers - now))
    finally:
        if client is not None:
            client.close()
        if cl is not None:
            cl.close()
        cloudpickle.unregister_pickle_by_value(mod)


@pytest.fixture(params=['zeo', 'file', 'neo'])
def db_uri(request, tmp_path):
    if request.param == 'zeo':
        return request.getfixturevalue('zeo_server').uri
    if request.param == 'neo':
        # (the session's NEO cluster: 2 storage nodes, 1 replica; root emptied)
        st, cleanup = make_storage('neo', tmp_path, request)
        request.addfinalizer(cleanup)
        return st.uri
    return str(tmp_path / 'data.fs')


@contextlib.contextmanager
def opened(uri):
    root = dbopen(uri)
    try:
        yield root
    finally:
        transaction.abort()
        close_shared()
        dbclose(root)


def _model(shape, seed=0):
    """Integer-valued floats: sums are exact in any order."""
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.float64)


def _make_A(root):
    root['A'] = A = ZBigArray((NROWS, COLS), np.float64, blksize=BS)
    transaction.commit()
    A[:] = _model(A.shape)
    transaction.commit()
    return A


def _compute(client, *xs):
    return client.compute(list(xs), sync=True)


def _from_ref(ref):
    # an ArrayRef has shape and dtype but no ndim: give dask the meta
    return da.from_array(ref, chunks=CHUNKS,
                         meta=np.empty((0,) * len(ref.shape), ref.dtype))


def _graph_size(x):
    return len(cloudpickle.dumps(dict(x.__dask_graph__())))


def _worker_state():
    import os
    import wendelin_cy
    return os.environ.get('WENDELIN_CY_RAM_BUDGET'), wendelin_cy.get_ram_budget()


# ~~~ reading

def test_compute_sum_mean(cluster, db_uri):
    """sum and mean along axis 0 on 2 worker processes = numpy on A[:]."""
    with opened(db_uri) as root:
        A = _make_A(root)
        x = da.from_array(A, chunks=CHUNKS)
        s, m, mx = _compute(cluster, x.sum(), x.mean(axis=0), (2 * x).max(axis=1))
        ref = np.asarray(A[:])
        assert s == ref.sum()
        np.testing.assert_allclose(m, ref.mean(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(mx, (2 * ref).max(axis=1))
    # the workers got the RAM budget of the environment
    st = cluster.run(_worker_state)
    assert len(st) == 2
    for env, b in st.values():
        assert env == WORKER_BUDGET and b == 64 << 20


def test_graph_by_reference_and_snapshot(cluster, db_uri):
    """The graph carries a reference, not the data; workers read the snapshot
    the reference was made at, not what the parent committed later."""
    with opened(db_uri) as root:
        A = _make_A(root)
        assert A.nbytes == 16 << 20
        assert len(pickle.dumps(A)) < REF_MAX
        x = da.from_array(A, chunks=CHUNKS)
        assert _graph_size(x.sum()) < REF_MAX
        assert _graph_size(x.mean(axis=0)) < REF_MAX

        # a graph over the reference itself: snapshot now
        ref = pickle.loads(pickle.dumps(A))
        assert isinstance(ref, ArrayRef)
        xr = _from_ref(ref)
        assert _graph_size(xr.sum()) < REF_MAX
        old = np.array(A[:])

        # the parent changes A and commits
        A[:RPB] += 1                    # block 0
        A[-1] = -1e6                    # the last block
        transaction.commit()
        new = np.array(A[:])
        assert new.sum() != old.sum()

        # a graph over A takes its reference when the client serializes it:
        # after the commit, the new data
        x = da.from_array(A, chunks=CHUNKS)
        s, m = _compute(cluster, x.sum(), x.mean(axis=0))
        assert s == new.sum()
        np.testing.assert_allclose(m, new.mean(axis=0), rtol=1e-12)

        # the graph over the reference made before the commit: the old data
        s, m = _compute(cluster, xr.sum(), xr.mean(axis=0))
        assert s == old.sum()
        np.testing.assert_allclose(m, old.mean(axis=0), rtol=1e-12)


def test_workers_follow_later_snapshots(cluster, db_uri):
    """Long-lived workers: one computation, a commit in the parent, another
    computation over A: the second sees the new data (the workers have the
    database open already, at the older state)."""
    with opened(db_uri) as root:
        A = _make_A(root)
        for k in range(3):
            x = da.from_array(A, chunks=CHUNKS)
            (s,) = _compute(cluster, x.sum())
            assert s == np.asarray(A[:]).sum()
            A[k * RPB:(k + 1) * RPB] += 1
            transaction.commit()


# ~~~ writing from the workers

def _rows(i0, i1, value):
    """What a task writes to rows [i0, i1): distinct per value and row."""
    return value * 1e7 + np.arange(i0 * COLS, i1 * COLS, dtype=np.float64).reshape(-1, COLS)


def _write_rows(uri, i0, i1, value, names, me, attempts=6, wait=30):
    """In a worker: open the database, Y[i0:i1] = _rows(...), commit; retry
    on ConflictError (abort, new transaction, redo).  Before its first commit
    the task sets the Event names[me] and waits for all of `names`: the
    transactions of the tasks overlap.  -> what happened."""
    import os
    import threading
    import transaction
    from ZODB.POSException import ConflictError
    from distributed import Event
    from wendelin_cy.lib.zodb import dbopen, dbclose

    root = dbopen(uri)
    tm = transaction.manager
    conflicts = []
    serial = met = None
    try:
        for attempt in range(attempts):
            tm.begin()                  # a new transaction: the latest state
            Y = root['Y']
            Y[i0:i1] = _rows(i0, i1, value)
            if attempt == 0:
                serial = Y.zfile._p_serial      # the state it started from
            if attempt == 0 and names:
                Event(names[me]).set()
                met = all(Event(n).wait(wait) for n in names)
            try:
                tm.commit()
            except ConflictError as e:
                tm.abort()
                conflicts.append(repr(e)[:200])
                continue
            return {'conflicts': conflicts, 'attempts': attempt + 1,
                    'serial': serial, 'met': met, 'pid': os.getpid(),
                    'thread': threading.get_ident()}
        raise RuntimeError('rows [%d, %d) did not land after %d attempts: %s'
                           % (i0, i1, attempts, conflicts))
    finally:
        tm.abort()
        dbclose(root)


def _make_Y(root, fmt, init):
    root['Y'] = Y = ZBigArray((NROWS, COLS), np.float64, blksize=BS, zblk_fmt=fmt)
    transaction.commit()
    expect = np.zeros(Y.shape)
    if init == 'filled':
        Y[:] = expect[:] = -1
        transaction.commit()
    return Y, expect


def _run_writers(client, uri, regions):
    """regions: [(i0, i1, value)], one task each, spread over the workers in
    turn; all wait for each other before committing -> their reports."""
    workers = sorted(client.scheduler_info()['workers'])
    tag = uuid.uuid4().hex
    names = ['ready-%s-%d' % (tag, k) for k in range(len(regions))]
    futs = [client.submit(_write_rows, uri, i0, i1, v, names, k, pure=False,
                          workers=[workers[k % len(workers)]],
                          allow_other_workers=False)
            for k, (i0, i1, v) in enumerate(regions)]
    distributed.wait(futs, timeout=TIMEOUT)
    return client.gather(futs)


@pytest.mark.parametrize('init', ['holes', 'filled'])
def test_write_disjoint_blocks_merge(cluster, zeo_server, init):  # noqa: F811
    """4 tasks on 2 processes write 2 blocks each, all from the same state,
    and commit at the same time: the ZEO server merges their commits (no
    ConflictError reaches them), and all their rows land."""
    uri = zeo_server.uri
    with opened(uri) as root:
        Y, expect = _make_Y(root, 'auto', init)
        rev0 = Y.zfile.rev
        nt = 4                          # = the worker threads: all at once
        per = NBLK // nt * RPB
        regions = [(k * per, (k + 1) * per, k + 1) for k in range(nt)]
        reps = _run_writers(cluster, uri, regions)

        assert all(r['met'] for r in reps), reps
        assert len({r['serial'] for r in reps}) == 1, reps     # same start state
        assert len({r['pid'] for r in reps}) == 2, reps
        assert [r['conflicts'] for r in reps] == [[]] * nt, reps
        transaction.begin()             # the parent sees the latest state
        for i0, i1, v in regions:
            expect[i0:i1] = _rows(i0, i1, v)
        np.testing.assert_array_equal(Y[:], expect)
        if init == 'holes':
            # each commit added blocks and bumped rev: merged, not lost
            assert Y.zfile.rev == rev0 + nt
            assert sorted(Y.zfile.blktab.keys()) == list(range(NBLK))


@pytest.mark.parametrize('fmt', ['ZBlk0', 'ZBlk1', 'auto'])
def test_write_same_block_conflict_retry(cluster, zeo_server, fmt):  # noqa: F811
    """Two tasks in two processes write different rows of block 1 from the
    same state (the rows split inside a ZBlk1 chunk) and commit at once: one
    gets ConflictError, retries over the other's commit, and both land."""
    uri = zeo_server.uri
    with opened(uri) as root:
        Y, expect = _make_Y(root, fmt, 'filled')
        b0 = 1 * RPB
        split = b0 + RPB // 2 + RPC // 2        # inside a chunk
        regions = [(b0, split, 1), (split, b0 + RPB, 2)]
        reps = _run_writers(cluster, uri, regions)

        assert all(r['met'] for r in reps), reps
        assert reps[0]['serial'] == reps[1]['serial'], reps
        assert reps[0]['pid'] != reps[1]['pid'], reps
        transaction.begin()
        for i0, i1, v in regions:
            expect[i0:i1] = _rows(i0, i1, v)
        got = np.asarray(Y[:])
        bad = np.flatnonzero((got != expect).any(axis=1))
        assert not bad.size, ('%d rows differ, rows %d..%d (got %r, expected %r); '
                              'reports %r' % (bad.size, bad[0], bad[-1], got[bad[0], 0],
                                              expect[bad[0], 0], reps))
        assert sum(len(r['conflicts']) for r in reps) >= 1, reps
        assert sorted(r['attempts'] for r in reps) == [1, 2], reps
