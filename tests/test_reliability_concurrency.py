"""Reliability (issue 7, items 2 and 3): concurrent processes and threads.

* One writer process commits random changes to two ZBigArrays of a
  FileStorage while reader processes open the same file read-only
  (``FileStorage(path, read_only=True)``: dbopen has no read-only mode) again
  and again.  Every snapshot a reader sees must be a state the writer
  committed - never a mix of two transactions - and reading it a second time
  (every block loaded again, while the writer goes on) gives the same bytes.
  The ZEO variant lives in the ZEO tests.
* Threads: each thread has its own connection and transaction manager (the
  legal way to use ZODB from threads); each writes its own ZBigArray, reads
  all of them, and commits, under a RAM budget of a few blocks.  No crash, no
  deadlock (the test runs in a child with a timeout), every snapshot read is
  one whole generation of each array, and the final data equal the
  reference.  A second test lets threads write different rows of one shared
  array and resolves conflicts by retrying.

WCY_SLOW=1 makes the runs longer.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import transaction

from wendelin_cy.testing.crash import read_records
from wendelin_cy.testing.isolate import isolated

SLOW = os.environ.get('WCY_SLOW') == '1'
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _run_threads(work):
    """work(t) in NTHREADS threads; each must finish (or the test says deadlock)."""
    threads = [threading.Thread(target=work, args=(t,)) for t in range(NTHREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(240)
        assert not th.is_alive(), 'deadlock: a thread did not finish'


def _wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError('timed out waiting for ' + what)


# ~~~ one writer process, several reader processes

def test_readers_see_only_committed_snapshots(tmp_path):
    db = str(tmp_path / 'data.fs')
    rec = str(tmp_path / 'writer.rec')
    duration = 30.0 if SLOW else 4.0
    nreaders = 3
    writer = subprocess.Popen(
        [sys.executable, '-m', 'wendelin_cy.testing.crash', 'writer', db, rec,
         '1', str(1 << 20)], env=_env(), stderr=subprocess.PIPE, text=True)
    readers = []
    try:
        _wait_for(lambda: any(k == 'C' for k, _, _ in read_records(rec))
                  or writer.poll() is not None, 60, 'the first commit')
        assert writer.poll() is None, writer.stderr.read()
        for i in range(nreaders):
            out = str(tmp_path / ('reader%d.out' % i))
            readers.append((out, subprocess.Popen(
                [sys.executable, '-m', 'wendelin_cy.testing.crash', 'reader', db,
                 out, str(duration), str((1 << 20) * (i + 1))],
                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)))
        for out, p in readers:
            o, e = p.communicate(timeout=duration + 120)
            assert p.returncode == 0, 'reader failed (%s)\n%s' % (p.returncode, e[-4000:])
        assert writer.poll() is None, 'the writer died:\n' + writer.stderr.read()[-4000:]
    finally:
        for _, p in readers:
            if p.poll() is None:
                p.kill()
                p.wait()
        writer.kill()
        writer.wait()

    states = {}                 # digest -> n of every state the writer recorded
    for kind, n, d in read_records(rec):
        states[d] = n
    ncommits = sum(1 for k, _, _ in read_records(rec) if k == 'C')
    seen = set()
    total = errors = 0
    for out, _ in readers:
        with open(out) as f:
            for line in f:
                parts = line.split()
                if parts[0] == 'E':
                    errors += 1
                    continue
                _, n, d1, d2 = parts
                total += 1
                assert d1 == d2, 'a snapshot read twice gave different data (n=%s)' % n
                assert d1 in states, ('a reader saw a state the writer never '
                                      'committed (n=%s): torn or mixed snapshot' % n)
                assert states[d1] == int(n)
                seen.add(d1)
    print('writer commits %d, reads %d, distinct states seen %d, open errors %d'
          % (ncommits, total, len(seen), errors))
    assert total >= nreaders
    assert len(seen) >= 2, 'readers never saw the writer progress'


# ~~~ threads

def _pattern(g, i, n):
    """Content of generation g of array i (n elements)."""
    return np.arange(n, dtype=np.int64) * 7 + g * 1000003 + i * 10**12


def _generation(a, i):
    """The generation that `a` (all of it) is, or fail if it is a mix."""
    g = int((a[0] - i * 10**12) // 1000003)
    exp = _pattern(g, i, a.shape[0])
    bad = np.flatnonzero(a != exp)
    assert bad.size == 0, ('array %d mixes generations: element %d is %d, '
                           'generation %d expects %d' % (i, bad[0], a[bad[0]], g, exp[bad[0]]))
    return g


NTHREADS = 4
N = 128 * 1024            # 1 MiB per array: 4 blocks of 256 KiB
TBS = 256 * 1024


def _spill_once(db):
    """Make the pager spill dirty data once, from this thread alone.

    Works around a pager bug (reported; see the report of issue 7): the
    first spill of a process opens the scratch file with the GIL taken while
    the pager lock is held, which deadlocks when another thread holds the GIL
    and waits for the pager lock (about 1 run in 5 of the test below hung).
    Later spills do not take the GIL."""
    import wendelin_cy
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    root = conn.root()
    spills0 = wendelin_cy.pager_stats()['spills']
    for i in range(NTHREADS):
        root['A%d' % i][:] = -1          # 4 MiB dirty under a 1 MiB budget
    assert wendelin_cy.pager_stats()['spills'] > spills0
    tm.abort()
    from wendelin_cy.bigfile.file_zodb import _close_handles_of
    _close_handles_of(conn)
    conn.close()


@isolated(timeout=300)
def test_threads_with_own_connections(tmp_path):
    import ZODB
    from ZODB.FileStorage import FileStorage
    import wendelin_cy
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbclose

    rounds = 100 if SLOW else 30
    db = ZODB.DB(FileStorage(str(tmp_path / 'data.fs')))
    tm = transaction.TransactionManager()
    c = db.open(tm)
    r = c.root()
    for i in range(NTHREADS):
        r['A%d' % i] = ZBigArray((N,), np.int64, blksize=TBS)
        r['A%d' % i][:] = _pattern(0, i, N)
    tm.commit()
    c.close()
    # a budget of 4 blocks for 4 threads x 4 arrays of 4 blocks each
    wendelin_cy.set_ram_budget(1 << 20)
    _spill_once(db)
    seen = [[] for _ in range(NTHREADS)]
    errors = []

    def work(t):
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            root = conn.root()
            rng = np.random.default_rng(t)
            for g in range(1, rounds + 1):
                tm.begin()
                # read all arrays in this snapshot, in random order and pieces
                for i in rng.permutation(NTHREADS):
                    a = root['A%d' % i][:]
                    gi = _generation(a, i)
                    seen[t].append((i, gi))
                    del a
                A = root['A%d' % t]
                a = A[:]
                assert _generation(a, t) == g - 1
                # rewrite in random pieces, then commit
                for lo in rng.permutation(np.arange(0, N, 4096)):
                    a[lo:lo + 4096] = _pattern(g, t, N)[lo:lo + 4096]
                del a
                tm.commit()
            tm.abort()
            from wendelin_cy.bigfile.file_zodb import _close_handles_of
            _close_handles_of(conn)
            conn.close()
        except BaseException as e:      # reported by the main thread
            import traceback
            errors.append((t, traceback.format_exc()))
            raise

    _run_threads(work)
    assert not errors, errors[0][1]
    # generations seen of each array never go backwards in one thread
    for t in range(NTHREADS):
        last = {}
        for i, g in seen[t]:
            assert g >= last.get(i, 0)
            last[i] = g
    root = db.open().root()
    for i in range(NTHREADS):
        np.testing.assert_array_equal(root['A%d' % i][:], _pattern(rounds, i, N))
    dbclose(root)


@isolated(timeout=300)
def test_threads_write_rows_of_one_array(tmp_path):
    # different blocks of one ZBigFile from several connections: the writers'
    # changes merge (conflict resolution of ZBigFile.rev / blktab buckets) or
    # conflict and are retried; in the end each row holds its last value
    import ZODB
    from ZODB.FileStorage import FileStorage
    from ZODB.POSException import ConflictError
    import wendelin_cy
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbclose

    rounds = 200 if SLOW else 30
    rowlen = 8192                   # one 64 KiB block per row
    db = ZODB.DB(FileStorage(str(tmp_path / 'data.fs')))
    tm = transaction.TransactionManager()
    c = db.open(tm)
    c.root()['S'] = ZBigArray((NTHREADS, rowlen), np.int64, blksize=64 * 1024)
    tm.commit()
    c.close()
    wendelin_cy.set_ram_budget(1 << 20)
    errors = []
    conflicts = [0]

    def work(t):
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            for g in range(1, rounds + 1):
                for attempt in range(50):
                    try:
                        tm.begin()
                        S = conn.root()['S']
                        row = S[t]
                        assert (row == (g - 1) * 100 + t).all() or g == 1
                        row[:] = g * 100 + t
                        del row
                        tm.commit()
                        break
                    except ConflictError:
                        conflicts[0] += 1
                        tm.abort()
                else:
                    raise AssertionError('thread %d: 50 conflicts in a row' % t)
            tm.abort()
            from wendelin_cy.bigfile.file_zodb import _close_handles_of
            _close_handles_of(conn)
            conn.close()
        except BaseException:
            import traceback
            errors.append(traceback.format_exc())
            raise

    _run_threads(work)
    assert not errors, errors[0]
    root = db.open().root()
    S = root['S'][:]
    for t in range(NTHREADS):
        assert (S[t] == rounds * 100 + t).all(), t
    print('conflicts retried:', conflicts[0])
    del S
    dbclose(root)
