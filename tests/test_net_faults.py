"""The ZEO server dies (SIGKILL) while a process scans a ZBigArray.

* nobody restarts it: the scan does not hang - after a bounded wait a load
  inside a page fault ends the process with SIGBUS and a message naming the
  block, the file and ZEO's error; at an entry point (assignment, which
  prefaults) the caller gets ZEO's ClientDisconnected instead;
* in both cases what was committed is intact once the server is back;
* the server back within the wait: the scan goes on and gets the right sum.

The wait: ZEO's ``wait_timeout`` per attempt, and the pager's retries of
transient errors inside a fault (see ``wendelin_cy.lib._netfaults``).
"""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import transaction

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib._netfaults import fault_wait_bound
from wendelin_cy.lib.zodb import dbopen, dbclose

from storages import zeo_server, env_with_src  # noqa: F401

BS = 64 * 1024
ITEMS = BS // 8
NBLK = 40
SLACK = 15              # s, for a loaded machine (process start, imports)

CHILD = r'''
import sys, time
import numpy as np, transaction
from wendelin_cy.lib.zodb import dbopen, dbclose   # (dbopen registers ZEO's retries)
uri, mode = sys.argv[1], sys.argv[2]
root = dbopen(uri)
A = root['A']
items = A.zfile.blksize // 8
total = 0
for blk in range(len(A) // items):
    sl = slice(blk * items, (blk + 1) * items)
    if mode == 'scan':              # numpy touches the memory: page faults
        total += int(A[sl].sum())
    else:                           # entry point: assignment prefaults
        try:
            A[sl] = -1
        except Exception as e:
            print('EXC %s.%s: %s' % (type(e).__module__, type(e).__name__, e),
                  flush=True)
            transaction.abort()
            sys.exit(3)
    print('blk', blk, flush=True)
    time.sleep(0.05)
print('SUM', total, flush=True)
transaction.abort()
dbclose(root)
'''


def _fill(uri):
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.int64, blksize=BS)
        transaction.commit()
        A.append(np.arange(NBLK * ITEMS))
        transaction.commit()
    finally:
        dbclose(root)


def _check_intact(uri):
    root = dbopen(uri)
    try:
        a = root['A'][:]
        assert a.shape == (NBLK * ITEMS,)
        assert (a == np.arange(NBLK * ITEMS)).all()
        del a
    finally:
        dbclose(root)


def _scan(server, mode, wait, restart_after=None):
    """Run the child, kill the server once the child is 3 blocks in;
    restart it after `restart_after` s if given.
    -> (returncode, stdout, stderr, seconds from the kill to the end)."""
    p = subprocess.Popen(
        [sys.executable, '-c', CHILD, server.uri + '?wait_timeout=%s' % wait, mode],
        env=env_with_src(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        out = []
        for line in p.stdout:
            out.append(line)
            if line.startswith('blk 3'):
                break
        else:
            raise AssertionError('child failed early:\n%s%s'
                                 % (''.join(out), p.stderr.read()))
        server.kill()
        t = time.monotonic()
        if restart_after is not None:
            time.sleep(restart_after)
            server.start()
        rest, err = p.communicate(timeout=fault_wait_bound(wait) + 2 * SLACK)
        return p.returncode, ''.join(out) + rest, err, time.monotonic() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_killed_server_page_fault_sigbus(zeo_server):
    _fill(zeo_server.uri)
    wait = 1.5
    rc, out, err, dt = _scan(zeo_server, 'scan', wait)
    assert rc == -signal.SIGBUS, (rc, out, err)
    assert 'SUM' not in out
    assert dt < fault_wait_bound(wait) + SLACK
    assert dt >= wait                   # it did wait for the server
    assert 'loading block' in err and 'ZBigFile oid=' in err, err
    assert 'ClientDisconnected' in err, err
    zeo_server.start()
    _check_intact(zeo_server.uri)


def test_killed_server_entry_point_raises(zeo_server):
    _fill(zeo_server.uri)
    wait = 1.5
    rc, out, err, dt = _scan(zeo_server, 'setitem', wait)
    assert rc == 3, (rc, out, err)
    # a LoadError naming the block, that is also the storage's ClientDisconnected
    assert 'EXC wendelin_cy.errors.LoadError' in out and 'ClientDisconnected' in out, out
    assert dt < wait + SLACK
    zeo_server.start()
    _check_intact(zeo_server.uri)       # no -1 got in: nothing committed


def test_server_back_within_wait(zeo_server):
    _fill(zeo_server.uri)
    rc, out, err, dt = _scan(zeo_server, 'scan', wait=4, restart_after=0.2)
    assert rc == 0, (rc, out, err)
    n = NBLK * ITEMS
    assert 'SUM %d' % (n * (n - 1) // 2) in out, out


def test_register_zeo():
    from ZEO.Exceptions import ClientDisconnected
    from wendelin_cy._pager import virtmem
    from wendelin_cy.lib._netfaults import register_zeo
    assert register_zeo() and register_zeo()
    assert virtmem.TRANSIENT_ERRORS.count(ClientDisconnected) == 1
    # 4 attempts of wait_timeout each, plus the backoff 0.05 + 0.2 + 0.8
    assert fault_wait_bound(2) == pytest.approx(4 * 2 + 1.05)


def test_commit_while_server_down(zeo_server):
    """A commit with the server gone fails after wait_timeout (no hang);
    abort discards the change; the database keeps the committed state."""
    from ZEO.Exceptions import ClientDisconnected
    _fill(zeo_server.uri)
    root = dbopen(zeo_server.uri + '?wait_timeout=1')
    try:
        A = root['A']
        A[:ITEMS] = -1
        zeo_server.kill()
        t = time.monotonic()
        with pytest.raises(ClientDisconnected):
            transaction.commit()
        assert time.monotonic() - t < 1 + SLACK
        transaction.abort()
        assert A[0] == 0                # back to the committed state (in RAM)
    finally:
        transaction.abort()
        dbclose(root)
    zeo_server.start()
    _check_intact(zeo_server.uri)
