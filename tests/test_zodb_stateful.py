"""A ZBigArray driven by random operations against a numpy model.

Operations: append, resize, assignment through the array and through views
made earlier, commit, abort, savepoint and rollback, close and reopen of the
connection.  A second connection checks at its transaction boundaries that it
sees exactly the committed state, and between them the snapshot it saw."""

import os
import tempfile

import numpy as np
import transaction
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import (RuleBasedStateMachine, rule, invariant,
                                 precondition, initialize)

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import file_zodb

from _zodb_util import Conn, mapping_db, file_db

BS = 16 * 1024                  # 4 chunks of 4 KiB
ITEMS = BS // 8
MAXLEN = 6 * ITEMS


def _major(shape_or_x, order):
    return 0 if order == 'C' else len(getattr(shape_or_x, 'shape', shape_or_x)) - 1


def _sl(ndim, M, lo, hi):
    idx = [slice(None)] * ndim
    idx[M] = slice(lo, hi)
    return tuple(idx)


def _padded(x, n, M=0):
    """x cut or zero-extended to length n along axis M."""
    shape = list(x.shape)
    shape[M] = n
    out = np.zeros(shape, x.dtype)
    k = min(n, x.shape[M])
    out[_sl(x.ndim, M, 0, k)] = x[_sl(x.ndim, M, 0, k)]
    return out


class _FailingVote:
    def sortKey(self):
        return '~~~ last'

    def abort(self, txn): pass
    def tpc_begin(self, txn): pass
    def commit(self, txn): pass
    def tpc_finish(self, txn): pass
    def tpc_abort(self, txn): pass

    def tpc_vote(self, txn):
        raise RuntimeError('vote failed')


class ZBigArrayMachine(RuleBasedStateMachine):
    FMT = 'auto'
    MINOR = ()          # shape of the other axes
    ORDER = 'C'

    def _shape(self, n):
        return (n,) + self.MINOR if self.ORDER == 'C' else self.MINOR + (n,)

    @property
    def M(self):
        return 0 if self.ORDER == 'C' else len(self.MINOR)

    def _len(self, x):
        return x.shape[self.M]

    def open_db(self):
        return mapping_db()

    def close_db(self):
        self.db.close()

    def __init__(self):
        super().__init__()
        self._oldfmt = os.environ.get(file_zodb.ZBLK_FMT_ENV)
        os.environ[file_zodb.ZBLK_FMT_ENV] = self.FMT
        self.db = self.open_db()
        self.c1 = Conn(self.db)
        self.c1.root['A'] = ZBigArray(self._shape(0), np.int64, order=self.ORDER,
                                      blksize=BS)
        self.c1.commit()
        self.A = self.c1.root['A']
        self.model = np.zeros(self._shape(0), np.int64, order=self.ORDER)
        self.committed = self.model.copy()
        self.views = []             # ndarray views of A (current handle)
        self.savepoints = []        # (savepoint, model copy)
        self.c2 = Conn(self.db)
        self.B = self.c2.root['A']
        self.seen = self.committed.copy()   # what c2's snapshot shows
        self.bviews = []            # views of B

    def teardown(self):
        del self.views[:], self.bviews[:]
        try:
            self.c1.close()
            self.c2.close()
        finally:
            self.close_db()
            if self._oldfmt is None:
                os.environ.pop(file_zodb.ZBLK_FMT_ENV, None)
            else:
                os.environ[file_zodb.ZBLK_FMT_ENV] = self._oldfmt

    # -- changes

    @property
    def maxlen(self):
        return MAXLEN // max(1, int(np.prod(self.MINOR)))

    @rule(n=st.integers(0, 3 * ITEMS), seed=st.integers(0, 2**31))
    def append(self, n, seed):
        n = min(n, self.maxlen - self._len(self.model))
        v = np.random.RandomState(seed).randint(-1000, 1000, size=self._shape(n))
        v = v.astype(np.int64)
        self.A.append(v)
        self.model = np.concatenate([self.model, v], axis=self.M)

    @rule(n=st.integers(0, MAXLEN))
    def resize(self, n):
        n = min(n, self.maxlen)
        self.A.resize(self._shape(n))
        self.model = _padded(self.model, n, self.M)

    @rule(data=st.data())
    def setitem(self, data):
        n = self._len(self.model)
        if n == 0:
            return
        lo = data.draw(st.integers(0, n - 1))
        hi = data.draw(st.integers(lo, min(n, lo + 2 * ITEMS)))
        v = data.draw(st.sampled_from([0, 1, -5, 'arange']))
        sl = _sl(self.model.ndim, self.M, lo, hi)
        if v == 'arange':
            val = np.arange(self.model[sl].size, dtype=np.int64).reshape(
                self.model[sl].shape)
        else:
            val = np.int64(v)
        self.A[sl] = val
        self.model[sl] = val

    @rule()
    def make_view(self):
        if len(self.views) < 4:
            self.views.append(self.A[...])

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def write_view(self, data):
        a = data.draw(st.sampled_from(self.views))
        n = min(self._len(a), self._len(self.model))
        if n == 0:
            return
        i = data.draw(st.integers(0, n - 1))
        j = data.draw(st.integers(i, min(n, i + ITEMS + 7)))
        k = data.draw(st.integers(-3, 3))
        sl = _sl(a.ndim, self.M, i, j)
        a[sl] = k
        self.model[sl] = k

    # -- transaction

    @rule()
    def commit(self):
        self.c1.commit()
        self.committed = self.model.copy()
        self.savepoints = []

    @rule()
    def abort(self):
        self.c1.abort()
        self.model = self.committed.copy()
        self.savepoints = []

    @rule()
    def failed_commit(self):
        """A participant fails its vote: nothing is stored, abort reverts."""
        self.c1.tm.get().join(_FailingVote())
        try:
            self.c1.commit()
        except RuntimeError as e:
            assert 'vote failed' in str(e)
        else:
            raise AssertionError('commit did not fail')
        self.c1.abort()
        self.model = self.committed.copy()
        self.savepoints = []

    @rule()
    def savepoint(self):
        self.savepoints.append((self.c1.tm.savepoint(), self.model.copy()))

    @precondition(lambda self: self.savepoints)
    @rule(data=st.data())
    def rollback(self, data):
        i = data.draw(st.integers(0, len(self.savepoints) - 1))
        sp, m = self.savepoints[i]
        sp.rollback()
        self.model = m.copy()
        del self.savepoints[i + 1:]     # later ones are invalid now

    @rule(commit=st.booleans())
    def close_reopen(self, commit):
        if commit:
            self.commit()
        else:
            self.abort()
        del self.views[:]
        self.A = None
        self.c1.close()
        self.c1 = Conn(self.db)
        self.A = self.c1.root['A']

    # -- the other connection

    @rule()
    def other_boundary(self):
        self.c2.abort()
        self.seen = self.committed.copy()
        self.check_other()

    @rule()
    def other_view(self):
        if len(self.bviews) < 3:
            self.bviews.append(self.B[...])

    # -- checks

    @invariant()
    def same_as_model(self):
        A = self.A
        assert A.shape == self.model.shape
        assert (A[...] == self.model).all()
        for a in self.views:
            n = min(self._len(a), self._len(self.model))
            sl = _sl(a.ndim, self.M, 0, n)
            assert (a[sl] == self.model[sl]).all()
        assert (np.asarray(A) == self.model).all()

    @invariant()
    def other_sees_its_snapshot(self):
        self.check_other()

    def check_other(self):
        B = self.B
        assert B.shape == self.seen.shape
        assert (B[...] == self.seen).all()
        for b in self.bviews:
            # a view of an older, longer shape reads zeros past the end
            assert (b == _padded(self.seen, self._len(b), self.M)).all()


SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None,
                    suppress_health_check=list(HealthCheck))


class ZBlk0Machine(ZBigArrayMachine):
    FMT = 'ZBlk0'


class ZBlk1Machine(ZBigArrayMachine):
    FMT = 'ZBlk1'


class CMatrixMachine(ZBigArrayMachine):
    MINOR = (3, 5)


class FMatrixMachine(ZBigArrayMachine):
    FMT = 'ZBlk1'
    MINOR = (7,)
    ORDER = 'F'


TestCMatrix = CMatrixMachine.TestCase
TestCMatrix.settings = SETTINGS
TestFMatrix = FMatrixMachine.TestCase
TestFMatrix.settings = SETTINGS
class _TmpDir:
    def open_db(self):
        self._tmp = tempfile.TemporaryDirectory(prefix='wcy-stateful-')
        return self.open_db_in(self._tmp.name)

    def close_db(self):
        try:
            self.db.close()
        finally:
            self._tmp.cleanup()


class FileStorageMachine(_TmpDir, ZBigArrayMachine):
    # as dbopen(path) opens it: with a blob directory, so that 'auto' stores
    # full blocks as blobs (mapped), small changes as ZBlk1 overlays on them
    def open_db_in(self, d):
        return file_db(os.path.join(d, 'data.fs'), blobs=True)


class BlobMachine(_TmpDir, ZBigArrayMachine):
    FMT = 'blob'

    def open_db_in(self, d):
        return mapping_db(blob_dir=os.path.join(d, 'blobs'))


class SqliteMachine(_TmpDir, ZBigArrayMachine):
    FMT = 'ZBlk0'

    def open_db_in(self, d):
        from wendelin_cy.lib.zodb import dbstoropen_kw as dbstoropen
        import ZODB
        st, kw = dbstoropen('sqlite://?data_dir=' + d)
        return ZODB.DB(st, **kw)


class ZEOMachine(_TmpDir, ZBigArrayMachine):
    FMT = 'ZBlk1'

    def open_db_in(self, d):
        import ZEO
        import ZODB
        from wendelin_cy.lib.zodb import dbstoropen_kw as dbstoropen
        addr, self._stop = ZEO.server(path=os.path.join(d, 'zeo.fs'))
        st, kw = dbstoropen('zeo://%s:%d' % addr)
        return ZODB.DB(st, **kw)

    def close_db(self):
        try:
            self.db.close()
            self._stop()
        finally:
            self._tmp.cleanup()


FEW = settings(SETTINGS, max_examples=12)
TestFileStorage = FileStorageMachine.TestCase
TestFileStorage.settings = FEW
TestBlob = BlobMachine.TestCase
TestBlob.settings = FEW
TestSqlite = SqliteMachine.TestCase
TestSqlite.settings = FEW
TestZEO = ZEOMachine.TestCase
TestZEO.settings = FEW
TestAuto = ZBigArrayMachine.TestCase
TestAuto.settings = SETTINGS
TestZBlk0 = ZBlk0Machine.TestCase
TestZBlk0.settings = SETTINGS
TestZBlk1 = ZBlk1Machine.TestCase
TestZBlk1.settings = SETTINGS
