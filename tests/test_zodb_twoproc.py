"""Two processes on one ZEO database: one appends and modifies, the other has
a view open and sees the change only after its transaction boundary, with
only the changed blocks reloaded."""

import json
import subprocess
import sys

import pytest

from _zodb_util import env_with_src, run_py

BS = 64 * 1024
N = 10 * BS // 8 + 100          # 11 blocks, the last one partly filled

REPL = r'''
import sys, json, traceback
ns = {}
exec("""
import numpy as np, transaction
from wendelin_cy.lib.zodb import dbopen, dbclose
""", ns)
for line in sys.stdin:
    code = json.loads(line)
    try:
        try:
            r = eval(code, ns)
        except SyntaxError:
            exec(code, ns)
            r = None
        out = {'ok': r if isinstance(r, (int, float, bool, str, list, type(None))) else repr(r)}
    except Exception as e:
        out = {'err': '%s: %s' % (type(e).__name__, e), 'tb': traceback.format_exc()}
    sys.stdout.write(json.dumps(out) + '\n')
    sys.stdout.flush()
'''


class Proc:
    def __init__(self, cwd):
        self.p = subprocess.Popen([sys.executable, '-c', REPL], cwd=cwd,
                                  env=env_with_src(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def __call__(self, code):
        self.p.stdin.write(json.dumps(code) + '\n')
        self.p.stdin.flush()
        r = json.loads(self.p.stdout.readline())
        if 'err' in r:
            raise AssertionError('in the other process: %s\n%s' % (r['err'], r['tb']))
        return r['ok']

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=60)


@pytest.fixture
def zeo_uri(tmp_path):
    import ZEO
    addr, stop = ZEO.server(path=str(tmp_path / 'zeo.fs'))
    yield 'zeo://%s:%d' % addr
    stop()


@pytest.mark.parametrize('fmt', ['ZBlk0', 'ZBlk1', 'auto'])
def test_two_processes(tmp_path, zeo_uri, fmt):
    env = dict(WENDELIN_CY_ZBLK_FMT=fmt)
    run_py('''
import numpy as np, transaction
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
root = dbopen(%r)
root['A'] = A = ZBigArray((%d,), np.int64, blksize=%d)
transaction.commit()
A[:] = np.arange(%d)
transaction.commit()
dbclose(root)
''' % (zeo_uri, N, BS, N), cwd=tmp_path, **env)

    r = Proc(tmp_path)
    try:
        r('root = dbopen(%r)' % zeo_uri)
        r('A = root["A"]')
        r('a = A[:]')
        assert r('int(a.sum())') == N * (N - 1) // 2        # every block loaded
        r('io = A._fileh.bigfile; loads = []; orig = type(io).loadblk')
        r('io.loadblk = lambda blk, buf: (loads.append(blk), orig(io, blk, buf))[1]')

        # the other process appends and modifies block 3
        run_py('''
import numpy as np, transaction
from wendelin_cy.lib.zodb import dbopen, dbclose
root = dbopen(%r)
A = root['A']
A.append(np.arange(1000, 1000 + 50))
A[3 * %d // 8 + 1] = -7
transaction.commit()
dbclose(root)
''' % (zeo_uri, BS), cwd=tmp_path, **env)

        i3 = 3 * BS // 8 + 1
        # before our boundary: the old snapshot, nothing reloaded
        assert r('list(A.shape)') == [N]
        assert r('int(a[%d])' % i3) == i3
        assert r('int(a[-1])') == N - 1
        assert r('loads') == []
        r('transaction.begin()')
        assert r('loads') == []                     # nothing re-read eagerly
        assert r('list(A.shape)') == [N + 50]
        assert r('int(a[%d])' % i3) == -7           # the view follows
        assert r('int(a.sum())') == N * (N - 1) // 2 - i3 - 7
        b = r('A[%d:].tolist()' % N)
        assert b == list(range(1000, 1050))
        # only the changed blocks were loaded again: 3 and the tail block
        assert sorted(set(r('loads'))) == [3, 10]
        r('del a')
        r('dbclose(root)')
    finally:
        r.close()


def test_concurrent_appends_conflict_then_retry(tmp_path, zeo_uri):
    run_py('''
import numpy as np, transaction
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
root = dbopen(%r)
root['A'] = ZBigArray((0,), np.int64, blksize=%d)
transaction.commit()
dbclose(root)
''' % (zeo_uri, BS), cwd=tmp_path)
    p1, p2 = Proc(tmp_path), Proc(tmp_path)
    try:
        for p in (p1, p2):
            p('root = dbopen(%r)' % zeo_uri)
            p('A = root["A"]')
            p('from ZODB.POSException import ConflictError')
        p1('A.append(np.arange(100))')
        p2('A.append(np.arange(100, 150))')
        p1('transaction.commit()')
        # the second appender conflicts (both changed the shape) ...
        p2("try:\n"
           "    transaction.commit()\n"
           "    ok = 'committed'\n"
           "except ConflictError:\n"
           "    ok = 'conflict'")
        assert p2('ok') == 'conflict'
        # ... aborts, sees the other's append, and retries
        p2('transaction.abort()')
        assert p2('list(A.shape)') == [100]
        p2('A.append(np.arange(100, 150))')
        p2('transaction.commit()')
        p1('transaction.begin()')
        assert p1('A[:].tolist()') == list(range(150))
        for p in (p1, p2):
            p('dbclose(root)')
    finally:
        p1.close()
        p2.close()
