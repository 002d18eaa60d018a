"""wendelin.core's small helpers under its names (lib.mem, calc, utils,
xnumpy), against numpy / Python models."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from wendelin_cy.lib import calc, mem, utils, xnumpy


@settings(max_examples=50, deadline=None)
@given(a=st.binary(max_size=300), b=st.binary(max_size=300),
       c=st.integers(0, 255))
def test_mem_against_bytes(a, b, c):
    buf = bytearray(a)
    mem.memset(buf, c)
    assert buf == bytes([c]) * len(a)
    mem.bzero(buf)
    assert buf == bytes(len(a))
    dst = bytearray(len(a) + len(b))
    mem.memcpy(dst, a)
    assert dst[:len(a)] == a and dst[len(a):] == bytes(len(b))
    n = min(len(a), len(b))
    want = sum(x != y for x, y in zip(a[:n], b[:n])) + abs(len(a) - len(b))
    assert mem.memdelta(a, b) == want


def test_mem_errors():
    with pytest.raises(TypeError):
        mem.bzero(b'read-only')
    with pytest.raises(ValueError):
        mem.memset(bytearray(3), 256)
    with pytest.raises(ValueError):
        mem.memcpy(bytearray(2), b'abc')


@given(st.lists(st.integers(-10**6, 10**6), max_size=8), st.integers(-5, 5))
def test_mul_is_exact(xs, start):
    want = start
    for x in xs:
        want *= x
    assert calc.mul(xs, start) == want
    assert calc.mul([2**40, 2**40]) == 2**80       # no int64 overflow


def test_inttuple():
    assert utils.inttuple(3) == (3,)
    assert utils.inttuple([1, 2]) == (1, 2)
    assert utils.inttuple(np.array([4, 5])) == (4, 5)
    for bad in (1.5, 'ab', [1, 2.0]):
        with pytest.raises(TypeError, match='cannot be interpreted as integer'):
            utils.inttuple(bad)


def test_structured_view():
    a = np.arange(24, dtype=np.int32).reshape(4, 6)
    dt = np.dtype([('x', np.int32), ('y', np.int32, 5)])
    s = xnumpy.structured(a, dt)
    assert s.shape == (4,) and s.dtype == dt and np.shares_memory(s, a)
    np.testing.assert_array_equal(s['x'], a[:, 0])
    np.testing.assert_array_equal(s['y'], a[:, 1:])
    s['x'] = -1                                    # same memory
    assert (a[:, 0] == -1).all()
    with pytest.raises(ValueError, match='itemsize'):
        xnumpy.structured(a, np.dtype([('x', np.int32)]))
    with pytest.raises(ValueError, match='not C-contiguous'):
        xnumpy.structured(a[:, ::2], np.dtype([('x', np.int32, 3)]))
