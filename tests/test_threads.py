"""Any thread may touch any view (issue 15): faults in threads other than the
one of the array's connection load at that connection's snapshot, in
parallel, and writes from them belong to the owner's transaction.

Over FileStorage with blobs, ZEO and RelStorage on SQLite; the block loads
from other threads go through a connection of their own at the same
snapshot (wendelin_cy.bigfile._zforeign)."""

import ctypes
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
import transaction
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import BigFile, file_zodb
from wendelin_cy.lib.zodb import dbclose, dbopen

from storages import make_storage
from _zodb_util import env_with_src

MiB = 1 << 20
BS = 2 * MiB
ROWS = BS // (16 * 8)           # rows of (n, 16) float64 in one block
THREAD_STORAGES = ['file', 'zeo', 'sqlite']


@pytest.fixture(params=THREAD_STORAGES)
def uri(request, tmp_path):
    st, cleanup = make_storage(request.param, tmp_path, request)
    yield st.uri
    cleanup()


def _data(n, seed=0):
    """(n, 16) float64, each row different."""
    return (np.arange(n, dtype=np.float64)[:, None] * 16 + np.arange(16) + seed)


def _store(uri, n, seed=0, key='X'):
    root = dbopen(uri)
    root[key] = A = ZBigArray((n, 16), np.float64)
    transaction.commit()
    v = A[:]
    for i in range(0, n, ROWS):
        v[i:i + ROWS] = _data(n, seed)[i:i + ROWS]
    del v
    transaction.commit()
    dbclose(root)


def _commit_elsewhere(root, fn):
    """Change X through a second connection of the same database and commit."""
    tm = transaction.TransactionManager()
    conn = root._p_jar.db().open(tm)
    try:
        w = conn.root()['X'][:]
        fn(w)
        del w
        tm.commit()
    finally:
        file_zodb._close_handles_of(conn)
        conn.close()


def _in_threads(fn, args, workers):
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, args))


# ~~~ loads from any thread, at the owner's snapshot

def test_loads_from_threads_at_the_snapshot(uri, budget):
    budget(4 * BS)                       # 4 blocks: reclaim runs during the loads
    n = 12 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        A = root['X']
        v = A[:]
        ref = _data(n)
        rows = [(i, i + ROWS // 2) for i in range(0, n, ROWS // 2)]
        got = _in_threads(lambda r: v[r[0]:r[1]].sum(axis=0), rows[::-1], 4)
        np.testing.assert_array_equal(np.array(got[::-1]),
                                      np.array([ref[a:b].sum(axis=0) for a, b in rows]))

        # another connection commits a change: the owner still sees its
        # snapshot, from every thread, until its next transaction boundary
        _commit_elsewhere(root, lambda w: w.__setitem__(slice(None), -1))
        A._fileh.drop_clean()
        got = _in_threads(lambda r: v[r[0]:r[1]].sum(), rows, 4)
        assert got == [ref[a:b].sum() for a, b in rows]

        transaction.begin()                 # the owner moves on: the change shows
        got = _in_threads(lambda r: v[r[0]:r[1]].sum(), rows, 4)
        assert got == [-16.0 * (b - a) for a, b in rows]
        del v
    finally:
        dbclose(root)


def test_block_loaded_in_a_thread_then_changed_elsewhere(uri, budget):
    """A block that another thread loaded is watched by the owner: a change
    committed by another connection drops it at the owner's next boundary,
    although it stays in RAM (no reclaim)."""
    budget(64 * MiB)
    n = 4 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        v = root['X'][:]
        t = threading.Thread(target=lambda: v[:].sum())       # loads all 4 blocks
        t.start()
        t.join()
        _commit_elsewhere(root, lambda w: w.__setitem__(slice(ROWS, ROWS + 1), 7))
        transaction.begin()
        np.testing.assert_array_equal(v[ROWS], np.full(16, 7.0))
        np.testing.assert_array_equal(v[0], _data(n)[0])
        del v
    finally:
        dbclose(root)


def test_parallel_loads_and_one_load_per_block(budget):
    """The pager's lock is not held across loadblk: loads of different blocks
    from different threads overlap (a barrier of 3 inside loadblk would time
    out otherwise); two threads faulting one block load it once."""
    budget(64 * MiB)
    barrier = threading.Barrier(3, timeout=20)
    loads = {}
    lock = threading.Lock()

    class F(BigFile):
        def loadblk(self, blk, buf):
            with lock:
                loads[blk] = loads.get(blk, 0) + 1
            if blk < 3:
                barrier.wait()              # 3 loads of 3 blocks at once
            else:
                threading.Event().wait(0.2)     # the others wait for this one
            np.frombuffer(buf, np.uint8)[:] = blk + 1

        def storeblk(self, blk, buf):
            raise AssertionError

    f = F(BS)
    fh = f.fileh_open()
    vma = fh.mmap(0, 4)
    a = np.frombuffer(vma, np.uint8)
    got = _in_threads(lambda b: int(a[b * BS + 7]), [0, 1, 2], 3)
    assert got == [1, 2, 3]
    got = _in_threads(lambda i: int(a[3 * BS + i]), range(6), 6)
    assert got == [4] * 6
    assert loads == {0: 1, 1: 1, 2: 1, 3: 1}
    del a, vma
    fh.close()


# ~~~ writes from any thread belong to the owner's transaction

def test_writes_from_threads_commit_abort_savepoint(uri, budget):
    budget(4 * BS)
    n = 8 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        A = root['X']
        v = A[:]
        parts = [(i, i + ROWS // 3) for i in range(0, n, ROWS // 3)]

        def write(args):
            (a, b), val = args
            v[a:b] = val
        _in_threads(write, [(p, k) for k, p in enumerate(parts)], 4)
        transaction.commit()

        # aborted: undone
        _in_threads(write, [(p, -1.0) for p in parts], 4)
        transaction.abort()
        model = np.empty((n, 16))
        for k, (a, b) in enumerate(parts):
            model[a:b] = k
        np.testing.assert_array_equal(v[:], model)

        # a savepoint covers what threads wrote before it
        _in_threads(write, [(p, 5.0) for p in parts[::2]], 4)
        sp = transaction.savepoint()
        _in_threads(write, [(p, 9.0) for p in parts], 4)
        sp.rollback()
        for a, b in parts[::2]:
            model[a:b] = 5
        np.testing.assert_array_equal(v[:], model)
        transaction.commit()
        del v
    finally:
        dbclose(root)
    root = dbopen(uri)
    try:
        np.testing.assert_array_equal(root['X'][:], model)
    finally:
        dbclose(root)


def test_array_first_touched_by_workers(uri, budget):
    """The array's file is first opened by worker threads (the main thread
    never touched it): they still load at the snapshot, and their writes
    belong to the main thread's transaction."""
    budget(4 * BS)
    n = 8 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        root['Z'] = ZBigArray((n, 16), np.float64)
        transaction.commit()
    finally:
        dbclose(root)
    root = dbopen(uri)
    try:
        X, Z = root['X'], root['Z']
        rows = [(i, i + ROWS // 2) for i in range(0, n, ROWS // 2)]
        sums = _in_threads(lambda r: X[r[0]:r[1]].sum(), rows, 4)
        assert sums == [_data(n)[a:b].sum() for a, b in rows]

        def write(r):
            Z[r[0]:r[1]] = X[r[0]:r[1]] + 1
        _in_threads(write, rows, 4)
        transaction.commit()
    finally:
        dbclose(root)
    root = dbopen(uri)
    try:
        np.testing.assert_array_equal(root['Z'][:], _data(n) + 1)
    finally:
        dbclose(root)


def test_numpy_without_the_gil_in_threads(uri, budget):
    """numpy loops that release the GIL fault in 4 threads, reading one view
    and writing another."""
    budget(4 * BS)
    n = 8 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        root['Y'] = Y = ZBigArray((n, 16), np.float64)
        transaction.commit()
        x, y = root['X'][:], Y[:]
        chunks = [(i, min(n, i + 3000)) for i in range(0, n, 3000)]

        def work(c):
            a, b = c
            np.multiply(x[a:b], 2.0, out=y[a:b])
            return float(np.sort(x[a:b], axis=None)[-1])
        tops = _in_threads(work, chunks, 4)
        ref = _data(n)
        assert tops == [ref[a:b].max() for a, b in chunks]
        transaction.commit()
        del x, y
    finally:
        dbclose(root)
    root = dbopen(uri)
    try:
        np.testing.assert_array_equal(root['Y'][:], 2 * _data(n))
    finally:
        dbclose(root)


_C_SUM = r'''
#include <pthread.h>
#include <stddef.h>
struct job { const double* p; size_t n; double s; };
static void* run(void* arg) {
    struct job* j = arg;
    double s = 0;
    for (size_t i = 0; i < j->n; i++) s += j->p[i];
    j->s = s;
    return NULL;
}
double sum_in_thread(const double* p, size_t n) {
    pthread_t t;
    struct job j = {p, n, 0};
    if (pthread_create(&t, NULL, run, &j)) return -1;
    pthread_join(t, NULL);
    return j.s;
}
'''


def test_thread_started_from_c(tmp_path, budget):
    """A thread Python does not know (pthread_create in C) reads a view: its
    faults load at the snapshot of the array's connection."""
    cc = 'gcc'
    src = tmp_path / 'csum.c'
    src.write_text(_C_SUM)
    so = tmp_path / 'csum.so'
    subprocess.run([cc, '-O1', '-shared', '-fPIC', '-pthread', '-o', str(so), str(src)],
                   check=True)
    lib = ctypes.CDLL(str(so))
    lib.sum_in_thread.restype = ctypes.c_double
    lib.sum_in_thread.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    budget(4 * BS)
    n = 8 * ROWS
    uri = str(tmp_path / 'data.fs')
    _store(uri, n)
    root = dbopen(uri)
    try:
        v = root['X'][:]
        root['X']._fileh.drop_clean()
        # (ctypes releases the GIL around the call: the C thread's faults
        # take it to load)
        s = lib.sum_in_thread(v.ctypes.data, v.size)
        assert s == _data(n).sum()
        del v
    finally:
        dbclose(root)


# ~~~ dask, threaded

def test_dask_store_from_threads(uri, budget):
    budget(4 * BS)
    n = 8 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        root['Y'] = Y = ZBigArray((n, 16), np.float64)
        transaction.commit()
        d = da.from_array(root['X'], chunks=(ROWS // 2, 16))
        da.store(d * 3 + 1, Y, lock=False, scheduler='threads', num_workers=4)
        transaction.commit()
        d2 = da.from_array(root['X'], chunks=(ROWS // 2, 16))
        da.store(d2 * 0 - 5, Y, lock=False, scheduler='threads', num_workers=4)
        transaction.abort()
    finally:
        dbclose(root)
    root = dbopen(uri)
    try:
        np.testing.assert_array_equal(root['Y'][:], _data(n) * 3 + 1)
    finally:
        dbclose(root)


def test_dask_threaded_on_each_storage(uri, budget):
    """The same computations on FileStorage, ZEO and SQLite, in this process,
    with 4 workers over an array 4x the budget."""
    budget(4 * BS)
    n = 16 * ROWS
    _store(uri, n)
    root = dbopen(uri)
    try:
        X = root['X']
        ref = _data(n)
        W = np.random.default_rng(1).standard_normal((16, 3))
        d = da.from_array(X, chunks=(ROWS // 2, 16))
        with dask.config.set(scheduler='threads', num_workers=4):
            got = dask.compute(d.sum(axis=0), d.mean(axis=0), d.std(axis=0),
                               (d @ W).sum(axis=0),
                               d.map_blocks(lambda b: b[:, :2] + 1, chunks=(ROWS // 2, 2))
                               .sum(axis=0))
        want = (ref.sum(axis=0), ref.mean(axis=0), ref.std(axis=0), (ref @ W).sum(axis=0),
                (ref[:, :2] + 1).sum(axis=0))
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-9)
    finally:
        dbclose(root)


_DASK_RUN = '''
import json, sys
import numpy as np, transaction
import dask, dask.array as da
from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.ram import pager_stats

def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024

uri, n, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
root = dbopen(uri)
X = root['X']
v = X[:]
ref_sum = ref_mean = ref_std = ref_mm = ref_mb = None
rng = np.random.default_rng(0)
W = rng.standard_normal((16, 3))
out = {}
base = hwm()
CH = 16384                      # rows: 2 MiB chunks, one block each
for workers in (1, 2, 4, 8):
    d = da.from_array(X, chunks=(CH, 16))
    with dask.config.set(scheduler='threads', num_workers=workers):
        r = dict(sum=d.sum(axis=0).compute(), mean=d.mean(axis=0).compute(),
                 std=d.std(axis=0).compute(), mm=(d @ W).sum(axis=0).compute(),
                 mb=d.map_blocks(lambda b: b[:, :4] * 2, chunks=(CH, 4))
                      .sum(axis=0).compute())
    out[workers] = {k: np.asarray(x).tolist() for k, x in r.items()}
    X._fileh.drop_clean()
# numpy over one view, block by block, in this thread
acc = np.zeros(16); acc2 = np.zeros(16); mm = np.zeros(3); mb = np.zeros(4)
for i in range(0, n, 65536):
    c = v[i:i + 65536]
    acc += c.sum(axis=0); mm += (c @ W).sum(axis=0); mb += (c[:, :4] * 2).sum(axis=0)
mean = acc / n
for i in range(0, n, 65536):
    acc2 += ((v[i:i + 65536] - mean) ** 2).sum(axis=0)
out['numpy'] = dict(sum=acc.tolist(), mean=mean.tolist(),
                    std=np.sqrt(acc2 / n).tolist(), mm=mm.tolist(), mb=mb.tolist())
out['hwm'] = hwm()
out['base'] = base
out['peak_resident'] = pager_stats()['peak_resident']
del v
dbclose(root)
print(json.dumps(out))
'''


def test_dask_threaded_4x_budget(tmp_path):
    """mean, sum, std, a matmul and a map_blocks over a ZBigArray 4x the RAM
    budget, with 1, 2, 4 and 8 workers, equal to numpy over one view; peak
    RSS within budget + 128 MiB (measured in a fresh process: VmHWM)."""
    import json
    budget = 32 * MiB
    n = 4 * budget // (16 * 8)
    uri = str(tmp_path / 'data.fs')
    _store(uri, n)
    p = subprocess.run([sys.executable, '-c', _DASK_RUN, uri, str(n), str(budget)],
                       env=env_with_src(WENDELIN_CY_RAM_BUDGET=str(budget)),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    ref = out['numpy']
    for workers in ('1', '2', '4', '8'):
        for k in ('sum', 'mean', 'std', 'mm', 'mb'):
            np.testing.assert_allclose(out[workers][k], ref[k], rtol=1e-9,
                                       err_msg='%s with %s workers' % (k, workers))
    assert out['peak_resident'] <= budget
    assert out['hwm'] <= budget + 128 * MiB + out['base'], out


# ~~~ a numpy model, several threads, commits and aborts from the owner

SBS = 256 * 1024                # blocks of the stateful test: 16 of them,
SN = 16 * SBS // 8              # float64 items; the budget holds 4


class ThreadsMachine(RuleBasedStateMachine):
    """Threads read and write views of one ZBigArray, each in its own stripe
    (stripes cut inside blocks, so threads share blocks), under a budget of
    4 blocks: loads, reclaim and spills run in every thread.  The owner
    commits, aborts, takes and rolls back savepoints, drops clean pages;
    everything is compared with a numpy model."""

    path = None
    pool = None

    def __init__(self):
        super().__init__()
        self.root = dbopen(self.path)
        key = 'A%d' % len(self.root)
        self.root[key] = ZBigArray((SN,), np.float64, blksize=SBS)
        transaction.commit()
        self.A = self.root[key]
        self.v = self.A[:]
        self.model = np.zeros(SN)
        self.committed = self.model.copy()
        self.sp = None

    def teardown(self):
        transaction.abort()
        del self.v
        dbclose(self.root)

    @rule(data=st.data(), k=st.integers(2, 4))
    def threads(self, data, k):
        cuts = sorted(data.draw(st.lists(st.integers(1, SN - 1), min_size=k - 1,
                                         max_size=k - 1, unique=True)))
        stripes = list(zip([0] + cuts, cuts + [SN]))
        plans = []
        for a, b in stripes:
            ops = data.draw(st.lists(st.tuples(st.booleans(), st.integers(a, b),
                                               st.integers(a, b), st.integers(-9, 9)),
                                     min_size=1, max_size=6))
            plans.append([(w, min(x, y), max(x, y), val) for w, x, y, val in ops])
        v = self.v

        def run(plan):
            out = []
            for write, x, y, val in plan:
                if write:
                    v[x:y] = val
                else:
                    out.append(float(v[x:y].sum()))
            return out
        got = list(self.pool.map(run, plans))
        for plan, res in zip(plans, got):
            expect = []
            for write, x, y, val in plan:
                if write:
                    self.model[x:y] = val
                else:
                    expect.append(float(self.model[x:y].sum()))
            assert res == expect

    @rule()
    def commit(self):
        transaction.commit()
        self.committed = self.model.copy()
        self.sp = None

    @rule()
    def abort(self):
        transaction.abort()
        self.model = self.committed.copy()
        self.sp = None

    @rule()
    def savepoint(self):
        self.sp = (transaction.savepoint(), self.model.copy())

    @precondition(lambda self: self.sp is not None)
    @rule()
    def rollback(self):
        sp, m = self.sp
        sp.rollback()
        self.model = m.copy()

    @rule()
    def drop_clean(self):
        self.A._fileh.drop_clean()

    @invariant()
    def same_as_model(self):
        # read by a thread of the pool, as the workers do
        got = self.pool.submit(lambda: np.array(self.v)).result()
        np.testing.assert_array_equal(got, self.model)


def test_stateful_threads(uri):
    import wendelin_cy
    old = wendelin_cy.get_ram_budget()
    wendelin_cy.set_ram_budget(4 * SBS)
    ThreadsMachine.path = uri
    ThreadsMachine.pool = ThreadPoolExecutor(4)
    try:
        run_state_machine_as_test(ThreadsMachine, settings=settings(
            max_examples=25, stateful_step_count=15, deadline=None,
            suppress_health_check=[HealthCheck.too_slow]))
    finally:
        ThreadsMachine.pool.shutdown()
        wendelin_cy.set_ram_budget(old)
