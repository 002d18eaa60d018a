"""ZBigArray over every storage (FileStorage, ZEO, RelStorage on SQLite and
PostgreSQL), through one parametrized fixture: the tutorial, two
connections' snapshots, and the random-operations state machine."""

import numpy as np
import pytest
import transaction
import ZODB
from hypothesis import settings, HealthCheck
from hypothesis.stateful import run_state_machine_as_test

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose, dbstoropen_kw

from _zodb_util import Conn, run_py
from storages import storage, storage_uri, pg_cluster  # noqa: F401

BS = 64 * 1024


def test_tutorial(storage_uri, tmp_path):
    """The tutorial's sessions, each in its own process."""
    imports = ('from wendelin_cy.bigarray.array_zodb import ZBigArray\n'
               'from wendelin_cy.lib.zodb import dbopen, dbclose\n'
               'import transaction, numpy as np\n')
    out = run_py(imports + '''
root = dbopen(%r)
root['A'] = A = ZBigArray((10,), np.int64)
transaction.commit()
a = A[:]
print(repr(a))
a[:] = np.arange(10)
a[7] = 22
transaction.commit()
del a
dbclose(root)
''' % storage_uri, cwd=tmp_path)
    assert out.strip() == 'array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])'

    out = run_py(imports + '''
root = dbopen(%r)
A = root['A']
a = A[:]
print(repr(a))
print(np.mean(a))
for i in range(2):
    A.append(np.arange(1024*1024))
    transaction.commit()
print(A.shape)
a = A[:]
print(np.mean(a))
del a
dbclose(root)
''' % storage_uri, cwd=tmp_path)
    lines = out.splitlines()
    assert lines[0] == 'array([ 0,  1,  2,  3,  4,  5,  6, 22,  8,  9])'
    assert lines[1] == '6.0'
    assert lines[2] == '(2097162,)'
    n = 1024 * 1024
    assert float(lines[3]) == pytest.approx((60 + 2 * n * (n - 1) // 2) / (2 * n + 10))

    out = run_py(imports + '''
root = dbopen(%r)
a = root['A'][:]
want = np.concatenate([[0, 1, 2, 3, 4, 5, 6, 22, 8, 9]] + [np.arange(1024*1024)] * 2)
print(bool((a == want).all()))
del a
dbclose(root)
''' % storage_uri, cwd=tmp_path)
    assert out.strip() == 'True'


def test_snapshots(storage_uri):
    """Two connections: each sees its snapshot until its transaction
    boundary, then the other's commits, with only changed blocks reloaded."""
    import wendelin_cy
    st, kw = dbstoropen_kw(storage_uri)
    db = ZODB.DB(st, **kw)
    c1, c2 = Conn(db), Conn(db)
    try:
        n = 4 * BS // 8
        c1.root['A'] = A = ZBigArray((n,), np.int64, blksize=BS)
        c1.commit()
        A[:] = np.arange(n)
        c1.commit()
        c2.abort()
        B = c2.root['A']
        b = B[:]
        assert (b == np.arange(n)).all()
        A[BS // 8 + 3] = -1
        A.append(np.array([7, 8, 9]))
        c1.commit()
        # c2 is still in its transaction: old data, old shape
        assert b[BS // 8 + 3] == BS // 8 + 3 and B.shape == (n,)
        loads = wendelin_cy.pager_stats()['loads']
        c2.abort()                      # boundary
        assert B.shape == (n + 3,)
        bb = B[:]
        assert bb[BS // 8 + 3] == -1 and (bb[-3:] == [7, 8, 9]).all()
        assert int(bb.sum()) == int(np.arange(n).sum()) - (BS // 8 + 3) - 1 + 24
        # block 1 changed, block 4 is new: the other two stay
        assert wendelin_cy.pager_stats()['loads'] - loads == 2
        del b, bb
    finally:
        transaction.abort()
        c1.close()
        c2.close()
        db.close()


# ~~~ the state machine of tests/test_zodb_stateful.py over each storage

def test_state_machine(storage_uri):
    from test_zodb_stateful import ZBigArrayMachine

    class Machine(ZBigArrayMachine):
        FMT = 'auto'

        def open_db(self):
            st, kw = dbstoropen_kw(storage_uri)
            return ZODB.DB(st, **kw)

    run_state_machine_as_test(
        Machine, settings=settings(max_examples=10, stateful_step_count=25,
                                   deadline=None, database=None,
                                   suppress_health_check=list(HealthCheck)))
