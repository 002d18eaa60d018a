"""A hypothesis state machine checking a BigArray against a numpy model.

The model is the *file*, not the array: a growable uint8 buffer `cur` (the
bytes the handle shows now) and `stored` (the bytes after the last
writeout).  The array model is always `cur[:nbytes]` reinterpreted with the
array's (shape, dtype, order), and every operation is applied to both sides
with the same numpy operation.  Modelling bytes is what lets the machine
check things an array model cannot: views taken earlier keep showing the
file (after resizes, writes through other views, discard), data dropped by a
shrink does not come back, and discard restores the bytes of the last
writeout even where the array no longer reaches.

Subclass it to run the same checks on another stack (ZBigArray over ZODB):
override `make_array`, `writeout` and `discard`, and set
`transactional_shape = True` when discard also restores the shape (a
transaction abort does, a plain BigArray's dirty_discard does not).  Views
taken earlier are re-checked after every step; set `max_views = 0` on a
stack where views do not follow writeout/discard.  The invariant
`same_file_bytes` reads the file through `A._fileh` with a uint8 BigArray.
Set the RAM budget around the run (`strategies.ram_budget`).
"""
import io

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from . import strategies as wst

__all__ = ['BigArrayMachine', 'to_bytes']


def to_bytes(x):
    """Raw bytes of an ndarray or numpy scalar, in C order.

    The copy out of `x` follows x's memory order (a C-order walk over an
    F-ordered mapped array would reload every block once per row)."""
    x = np.asarray(x)
    return np.array(x, order='K', copy=True).tobytes(order='C')


def _same(got, expect, what):
    got_a = np.asarray(got)
    exp_a = np.asarray(expect)
    assert type(got) is type(expect) or (isinstance(got, np.ndarray)
                                         and isinstance(expect, np.ndarray)), \
        '%s: got %s, expected %s' % (what, type(got), type(expect))
    assert got_a.shape == exp_a.shape, '%s: shape %s != %s' % (
        what, got_a.shape, exp_a.shape)
    assert got_a.dtype == exp_a.dtype, '%s: dtype %s != %s' % (
        what, got_a.dtype, exp_a.dtype)
    if to_bytes(got_a) != to_bytes(exp_a):
        raise AssertionError('%s: data differs\n got %r\n expected %r'
                             % (what, got_a, exp_a))


class BigArrayMachine(RuleBasedStateMachine):
    #: bytes per block of the file the array lives in
    blksize = 256 * 1024
    #: largest array the machine creates / grows to
    max_nbytes = 9 * 256 * 1024
    #: how many views taken earlier are kept and re-checked
    max_views = 4
    #: does discard() also restore the shape of the last writeout?
    transactional_shape = False
    #: include structured dtypes
    structured = True

    # ~~~ hooks

    def make_array(self, shape, dtype, order):
        """-> (array, fileh): a new array over a new, all-zero file."""
        from wendelin_cy.bigarray import BigArray
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        f = BigFile_RAM(self.blksize)
        fileh = f.fileh_open()
        return BigArray(shape, dtype, fileh, order), fileh

    def writeout(self):
        self.fileh.dirty_writeout()
        assert not self.fileh.isdirty()
        assert self.fileh.dirty_blocks() == []

    def discard(self):
        self.fileh.dirty_discard()
        assert not self.fileh.isdirty()

    def close(self):
        pass

    # ~~~ model

    def _ensure(self, n):
        if n > len(self.cur):
            grow = max(n, 2 * len(self.cur))
            self.cur = np.concatenate([self.cur, np.zeros(grow - len(self.cur), np.uint8)])
            self.stored = np.concatenate(
                [self.stored, np.zeros(grow - len(self.stored), np.uint8)])

    def _model_of(self, shape, dtype, order):
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape \
            else dtype.itemsize
        self._ensure(nbytes)
        return self.cur[:nbytes].view(dtype).reshape(shape, order=order)

    def model(self):
        return self._model_of(self.shape, self.dtype, self.order)

    def _nbytes(self, shape):
        return int(np.prod(shape, dtype=object)) * self.dtype.itemsize

    # ~~~ rules

    @initialize(data=st.data())
    def init(self, data):
        self.dtype = data.draw(wst.dtypes(self.structured), 'dtype')
        self.order = data.draw(wst.orders(), 'order')
        self.shape = data.draw(wst.shapes(self.dtype.itemsize, self.max_nbytes),
                               'shape')
        self.A, self.fileh = self.make_array(self.shape, self.dtype, self.order)
        self.cur = np.zeros(0, np.uint8)
        self.stored = np.zeros(0, np.uint8)
        self.stored_shape = self.shape
        self.views = []        # (view, shape, dtype, order, idx) at creation

    def teardown(self):
        if hasattr(self, 'A'):
            self.views = []
            self.close()

    def _keep_view(self, view, idx):
        if isinstance(view, np.ndarray) and view.size:
            self.views.append((view, self.shape, self.dtype, self.order, idx))
            del self.views[:-self.max_views]

    @rule(data=st.data())
    def getitem_basic(self, data):
        idx = data.draw(wst.basic_indices(self.shape), 'idx')
        got = self.A[idx]
        expect = self.model()[idx]
        _same(got, expect, 'A[%r]' % (idx,))
        if isinstance(got, np.ndarray):
            # a view of the mapping, not a copy
            assert not got.flags.owndata
            if got.size:
                b = got
                while isinstance(b, np.ndarray):
                    b = b.base
                assert b is not None and not isinstance(b, (bytes, bytearray)), b
            self._keep_view(got, idx)

    @rule(data=st.data())
    def getitem_advanced(self, data):
        idx = data.draw(wst.advanced_indices(self.shape), 'idx')
        try:
            expect = self.model()[idx]
        except IndexError as e:
            # broadcast mismatch of index arrays etc.: BigArray must agree
            try:
                self.A[idx]
            except IndexError:
                return
            raise AssertionError('A[%r] did not raise %r' % (idx, e))
        got = self.A[idx]
        _same(got, expect, 'A[%r]' % (idx,))
        if isinstance(got, np.ndarray) and got.size:
            assert got.flags.owndata or got.base is not None
            # a copy: writing to it must not change the array
            before = to_bytes(self.model())
            got[...] = np.zeros((), got.dtype)
            assert to_bytes(self.A[...]) == before

    @rule(data=st.data())
    def setitem_basic(self, data):
        idx = data.draw(wst.basic_indices(self.shape), 'idx')
        target_shape = np.shape(self.model()[idx])
        value = data.draw(wst.values_for(self.dtype, target_shape), 'value')
        self.A[idx] = value
        self.model()[idx] = value

    @rule(data=st.data())
    def setitem_advanced(self, data):
        idx = data.draw(wst.advanced_indices(self.shape), 'idx')
        try:
            target_shape = self.model()[idx].shape
        except IndexError:
            return
        value = data.draw(wst.values_for(self.dtype, target_shape), 'value')
        self.A[idx] = value
        self.model()[idx] = value

    @rule(data=st.data())
    def setitem_from_self(self, data):
        # A[dst] = A[src] with overlapping, shifted or reversed slices
        if not self.shape:
            return
        ax = data.draw(st.integers(0, len(self.shape) - 1), 'axis')
        n = self.shape[ax]
        if n < 2:
            return
        L = data.draw(st.integers(1, n - 1), 'length')
        a = data.draw(st.integers(0, n - L), 'dst start')
        b = data.draw(st.integers(0, n - L), 'src start')
        dst = [slice(None)] * len(self.shape)
        src = list(dst)
        dst[ax] = slice(a, a + L)
        if data.draw(st.booleans(), 'reversed'):
            src[ax] = slice(b + L - 1, b - 1 if b else None, -1)
        else:
            src[ax] = slice(b, b + L)
        dst, src = tuple(dst), tuple(src)
        self.A[dst] = self.A[src]
        m = self.model()
        m[dst] = m[src].copy()

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def write_through_view(self, data):
        i = data.draw(st.integers(0, len(self.views) - 1), 'view')
        view, shape, dtype, order, idx = self.views[i]
        value = data.draw(wst.values_for(dtype, view.shape), 'value')
        view[...] = value
        self._model_of(shape, dtype, order)[idx] = value

    @rule(data=st.data())
    def append(self, data):
        if not self.shape:
            return
        M = 0 if self.order == 'C' else len(self.shape) - 1
        other = int(np.prod(self.shape[:M] + self.shape[M + 1:], dtype=object))
        room = self.max_nbytes // self.dtype.itemsize // max(other, 1) - self.shape[M]
        n = data.draw(st.integers(0, max(0, min(room, 2000))), 'n')
        vshape = self.shape[:M] + (n,) + self.shape[M + 1:]
        values = data.draw(wst.array_values(self.dtype, vshape), 'values')
        self.A.append(values)
        old = self.shape
        self.shape = self.shape[:M] + (old[M] + n,) + self.shape[M + 1:]
        tail = [slice(None)] * len(old)
        tail[M] = slice(old[M], old[M] + n)
        self.model()[tuple(tail)] = values
        assert self.A.shape == self.shape

    @rule(data=st.data())
    def resize(self, data):
        new = data.draw(wst.resize_shapes(self.shape, self.order, self.dtype.itemsize,
                                          self.max_nbytes), 'newshape')
        self.A.resize(new)
        oldn, newn = self._nbytes(self.shape), self._nbytes(new)
        if newn < oldn:
            self.cur[newn:oldn] = 0
        self.shape = tuple(new)
        assert self.A.shape == self.shape

    @rule()
    def do_writeout(self):
        self.writeout()
        n = max(len(self.cur), len(self.stored))
        self._ensure(n)
        self.stored = self.cur.copy()
        self.stored_shape = self.shape

    @rule()
    def do_discard(self):
        self.discard()
        self.cur = self.stored.copy()
        if self.transactional_shape:
            self.shape = self.stored_shape

    @rule(data=st.data())
    def view_dtype(self, data):
        new = data.draw(wst.dtypes(self.structured), 'newdtype')
        old = self.dtype
        if self.order == 'F' and len(self.shape) > 1 and new.itemsize != old.itemsize:
            # BigArray rescales axis 0, the one contiguous in memory (numpy 2
            # refuses F-ordered arrays here)
            n0 = self.shape[0] * old.itemsize
            if new.itemsize < old.itemsize:
                ok = old.itemsize % new.itemsize == 0
            else:
                ok = n0 % new.itemsize == 0
            if not ok:
                try:
                    self.A.view(new)
                except ValueError:
                    return
                raise AssertionError('A.view(%s) did not raise' % new)
            eshape = (n0 // new.itemsize,) + self.shape[1:]
            nbytes = self._nbytes(self.shape)
            expect = self.cur[:nbytes].view(new).reshape(eshape, order='F')
        else:
            try:
                expect = self.model().view(new)
            except ValueError:
                try:
                    self.A.view(new)
                except ValueError:
                    return
                raise AssertionError('A.view(%s) did not raise' % new)
        B = self.A.view(new)
        assert B.shape == expect.shape, (B.shape, expect.shape)
        assert B.dtype == new and B.order == self.order
        _same(B[...], expect, 'A.view(%s)' % new)

    @rule()
    def tofile(self):
        f = io.BytesIO()
        self.A.tofile(f)
        assert f.getvalue() == to_bytes(self.model())

    # ~~~ invariants

    @invariant()
    def same_shape(self):
        if hasattr(self, 'A'):
            assert self.A.shape == self.shape
            assert self.A.dtype == self.dtype
            assert self.A.order == self.order

    @invariant()
    def same_data(self):
        if hasattr(self, 'A'):
            _same(np.asarray(self.A), self.model(), 'np.asarray(A)')

    @invariant()
    def same_file_bytes(self):
        # every byte the file may show, also past the end of the array
        if hasattr(self, 'A') and len(self.cur):
            from wendelin_cy.bigarray import BigArray
            raw = BigArray((len(self.cur),), np.uint8, self.A._fileh)
            got = raw[:]
            assert got.tobytes() == self.cur.tobytes(), 'file bytes differ at %s' % (
                np.nonzero(got != self.cur)[0][:10],)

    @invariant()
    def views_see_file(self):
        if hasattr(self, 'A'):
            for view, shape, dtype, order, idx in self.views:
                _same(view, self._model_of(shape, dtype, order)[idx],
                      'view taken as A[%r] of shape %s' % (idx, shape))
