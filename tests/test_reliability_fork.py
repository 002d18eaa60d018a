"""Reliability (issue 7, item 4): fork.

A child made with os.fork() or multiprocessing's 'fork' start method reads
blocks that were resident at fork time correctly, and local-file blocks; a
ZODB block that was not resident cannot be loaded (the pager refuses Python
loadblk in a forked child): a RuntimeError at entry points (prefault), a
diagnostic and SIGBUS inside a fault.  The parent's data and mappings are
untouched, whatever the child does.  (The pager-level variants over
BigFile_RAM/BigFile_File are in test_pager.py.)
"""
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transaction

import wendelin_cy
from wendelin_cy.bigarray import BigArray
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.testing.servers import env_with_src

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')
BS = 64 * 1024
N = 8 * BS // 8             # 8 blocks of int64


def _run(code, cwd, timeout=120):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def zarr(tmp_path, budget):
    budget(64 << 20)
    root = dbopen(str(tmp_path / 'data.fs'))
    root['A'] = A = ZBigArray((N,), np.int64, blksize=BS)
    A[:] = np.arange(N)
    transaction.commit()
    A._fileh.drop_clean(0, 8)                # nothing resident
    yield root, A
    transaction.abort()
    dbclose(root)


def _fork(fn):
    """Run fn() in an os.fork() child -> its exit status (signal: negative)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


def test_fork_child_reads_resident_zodb_blocks_parent_untouched(zarr):
    root, A = zarr
    a = A[:]
    a[:4 * BS // 8].sum()                   # blocks 0-3 resident
    a[5] = -5                               # dirty, not committed
    fh = A._fileh
    fh.drop_clean(4, 8)                     # (readahead may have loaded more)
    assert 5 not in fh.resident_blocks()

    def child():
        assert a[5] == -5 and (a[6:4 * BS // 8] == np.arange(6, 4 * BS // 8)).all()
        a[:100] = 77                        # the child's own copy
        b = A[:4 * BS // 8]                 # new views of resident blocks work
        assert b[200] == 200 and a[0] == 77
        with pytest.raises(RuntimeError, match='forked child'):
            fh.prefault(5, 6)
        return 0
    assert _fork(child) == 0
    # parent: its data, dirty state and mappings as before
    assert a[5] == -5 and a[0] == 0 and a[99] == 99
    assert fh.dirty_blocks() == [0]
    np.testing.assert_array_equal(a[6:], np.arange(6, N))
    transaction.commit()
    assert (A[:10] == [0, 1, 2, 3, 4, -5, 6, 7, 8, 9]).all()


def _mp_child(q, a, lo, hi):
    q.put(int(a[lo:hi].sum()))


def test_multiprocessing_fork_child_reads_resident(zarr):
    root, A = zarr
    a = A[:]
    a[:].sum()
    ctx = multiprocessing.get_context('fork')
    q = ctx.Queue()
    p = ctx.Process(target=_mp_child, args=(q, a, 10, N - 10))
    p.start()
    got = q.get(timeout=60)
    p.join(60)
    assert p.exitcode == 0
    assert got == int(np.arange(10, N - 10).sum())


def test_fork_child_reads_local_file_blocks(tmp_path):
    path = tmp_path / 'f.bin'
    np.arange(N, dtype=np.int64).tofile(path)
    B = BigArray((N,), np.int64, BigFile_File(path, BS).fileh_open())
    b = B[:]

    def child():        # nothing was resident: local-file blocks load anyway
        return 0 if (b == np.arange(N)).all() and (B[100:200] == np.arange(100, 200)).all() else 1
    assert _fork(child) == 0
    assert b[N - 1] == N - 1


def test_fork_child_faulting_on_zodb_block_gets_sigbus_and_diagnostic(tmp_path):
    r = _run("""
        import multiprocessing, numpy as np, transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        from wendelin_cy.lib.zodb import dbopen
        root = dbopen('data.fs')
        root['A'] = A = ZBigArray((%d,), np.int64, blksize=%d)
        A[:] = 1
        transaction.commit()
        A._fileh.drop_clean(0, 8)
        a = A[:]
        a[:10].sum()                      # block 0 resident only
        A._fileh.drop_clean(1, 8)         # (readahead may have loaded more)

        def child():
            print('resident', a[:10].sum(), flush=True)
            print('not resident', a[-1], flush=True)     # SIGBUS here

        p = multiprocessing.get_context('fork').Process(target=child)
        p.start(); p.join()
        print('exitcode', p.exitcode, flush=True)
        print('parent', a.sum(), flush=True)
    """ % (N, BS), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert 'resident 10' in r.stdout
    assert 'not resident' not in r.stdout
    assert 'exitcode %d' % -signal.SIGBUS in r.stdout
    assert 'parent %d' % N in r.stdout
    assert 'forked child' in r.stderr and 'block 7' in r.stderr


def test_fork_child_that_reopens_the_database_can_read(tmp_path):
    r = _run("""
        import os, numpy as np, transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        from wendelin_cy.lib.zodb import dbopen, dbclose
        root = dbopen('data.fs')
        root['A'] = A = ZBigArray((1000,), np.int64, blksize=65536)
        A[:] = np.arange(1000)
        transaction.commit()
        dbclose(root)
        pid = os.fork()
        if pid == 0:
            root = dbopen('data.fs')
            print('child sum', root['A'][:].sum(), flush=True)
            os._exit(0)
        _, st = os.waitpid(pid, 0)
        print('status', os.waitstatus_to_exitcode(st))
    """, cwd=str(tmp_path))
    assert 'child sum %d' % sum(range(1000)) in r.stdout, r.stdout + r.stderr


def test_fork_while_the_reader_lock_is_held_does_not_deadlock_the_child():
    # a thread of the parent holds the readahead reader's lock at fork(): the
    # child must get a reader of its own, not wait for a lock nobody frees
    code = textwrap.dedent("""
        import os, threading, time, numpy as np, transaction, ZODB
        from ZODB.MappingStorage import MappingStorage
        from wendelin_cy.bigfile import file_zodb
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        db = ZODB.DB(MappingStorage())
        c = db.open()
        c.root()['A'] = A = ZBigArray((1 << 16,), np.uint8, blksize=1 << 16)
        transaction.commit()
        A[:] = 7
        transaction.commit()
        oid = A.zfile.blktab[0]._p_oid
        held, go = threading.Event(), threading.Event()
        def hold():
            with file_zodb._READER._lock:
                held.set()
                go.wait()
        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            futs = file_zodb._READER.ask(c._storage, db.storage, [oid])
            os._exit(0 if futs and bytes(futs[0].result(timeout=30)[:1]) == b'\\x07' else 3)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = -1
        go.set()
        t.join()
        print('child', status)
    """)
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=120, env=env_with_src())
    assert r.stdout.split() == ['child', '0'], r.stdout + r.stderr
