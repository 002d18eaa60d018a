"""Hypothesis strategies for array geometries, indices and data.

Shared by the BigArray and ZBigArray suites (and usable by anyone testing
code built on them).  Data is produced from a drawn seed with numpy's
generator instead of element by element: arrays of a few MiB are needed to
exercise paging, and hypothesis would be slow drawing them one item at a time.
Everything is still reproducible and shrinks (towards seed 0, small shapes).
"""
import contextlib

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    'SCALAR_DTYPES',
    'STRUCTURED_DTYPES',
    'advanced_indices',
    'array_values',
    'basic_indices',
    'dtypes',
    'indices',
    'orders',
    'ram_budget',
    'random_array',
    'resize_shapes',
    'scalar_dtypes',
    'shapes',
    'values_for',
]

#: Plain dtypes BigArray must handle, both byte orders, flexible sizes.
#: longdouble is left out: its padding bytes are not guaranteed to be copied,
#: which makes byte-exact comparisons meaningless.
SCALAR_DTYPES = tuple(np.dtype(d) for d in (
    '?', 'i1', 'u1', '<i2', '>i2', '<u2', '<i4', '>i4', '<u4', '<i8', '>u8',
    '<f2', '<f4', '>f4', '<f8', '>f8', '<c8', '<c16',
    'S1', 'S7', '<U3', 'V5', '<M8[s]', '<m8[ms]',
))

#: Packed structured dtypes (no padding bytes), incl. nested and subarray fields.
STRUCTURED_DTYPES = (
    np.dtype([('a', '<i4'), ('b', '<f8')]),
    np.dtype([('x', 'u1'), ('y', 'S3'), ('z', '>i2', (2,))]),
    np.dtype([('p', [('q', '<u2'), ('r', '?')]), ('s', '<f4', (3, 2))]),
)


def scalar_dtypes():
    return st.sampled_from(SCALAR_DTYPES)


def dtypes(structured=True):
    """Dtypes a BigArray accepts (no objects)."""
    s = scalar_dtypes()
    if structured:
        s = s | st.sampled_from(STRUCTURED_DTYPES)
    return s


def orders():
    return st.sampled_from(['C', 'F'])


@st.composite
def shapes(draw, itemsize=8, max_nbytes=1 << 20, min_dims=0, max_dims=3,
           allow_zero=True):
    """Shapes of min_dims..max_dims dimensions whose nbytes <= max_nbytes.

    The byte size is drawn first, so large arrays are as likely as small
    ones; the dimensions then split it.
    """
    ndim = draw(st.integers(min_dims, max_dims))
    if ndim == 0:
        return ()
    if allow_zero and draw(st.integers(0, 9)) == 0:
        shape = [draw(st.integers(0, 5)) for _ in range(ndim)]
        shape[draw(st.integers(0, ndim - 1))] = 0
        return tuple(shape)
    maxn = max(1, max_nbytes // itemsize)
    n = draw(st.integers(1, maxn))
    shape = []
    for j in range(ndim - 1):
        d = draw(st.integers(1, max(1, min(n, int(round(n ** (1 / (ndim - j))) * 2)))))
        shape.append(d)
        n = max(1, n // d)
    shape.append(n)
    perm = draw(st.permutations(range(ndim)))
    return tuple(shape[p] for p in perm)


def basic_indices(shape, allow_newaxis=True, allow_ellipsis=True):
    """Basic numpy indices (ints, slices with any step, ..., None)."""
    return hnp.basic_indices(shape, min_dims=0, allow_newaxis=allow_newaxis,
                             allow_ellipsis=allow_ellipsis)


@st.composite
def _int_array(draw, n, bshape):
    """Integer index array of shape bshape valid for an axis of size n, as a
    list or an ndarray, with negative indices and duplicates."""
    size = int(np.prod(bshape))
    if n == 0:
        a = np.zeros(bshape, dtype=np.intp)
        assert size == 0
    else:
        vals = draw(st.lists(st.integers(-n, n - 1), min_size=size, max_size=size))
        dt = draw(st.sampled_from([np.intp, np.int32, np.uint16])) \
            if all(v >= 0 for v in vals) and n < 65536 else np.intp
        a = np.array(vals, dtype=dt).reshape(bshape)
    if draw(st.booleans()) and a.ndim == 1:
        return a.tolist()
    return a


@st.composite
def advanced_indices(draw, shape):
    """Indices with at least one integer array or boolean mask, mixed with
    ints, slices, None and Ellipsis.  Integer arrays broadcast together."""
    ndim = len(shape)
    if ndim == 0:
        return draw(st.sampled_from([True, False, np.True_]))
    # a boolean mask over axes [b0, b1), or integer arrays on chosen axes
    use_mask = draw(st.booleans())
    items = []
    if use_mask:
        b0 = draw(st.integers(0, ndim - 1))
        b1 = draw(st.integers(b0 + 1, ndim))
        mshape = shape[b0:b1]
        seed = draw(st.integers(0, 2 ** 32 - 1))
        density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
        mask = np.random.default_rng(seed).random(mshape) < density
        for j in range(b0):
            items.append(draw(_other_index(shape[j])))
        items.append(mask if draw(st.booleans()) or mask.ndim > 1 else mask.tolist())
        for j in range(b1, ndim):
            items.append(draw(_other_index(shape[j])))
    else:
        nadv = draw(st.integers(1, ndim))
        axes = set(draw(st.permutations(range(ndim)))[:nadv])
        bshape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
        if any(shape[j] == 0 for j in axes):
            bshape = (0,) + bshape[1:]
        for j in range(ndim):
            if j in axes:
                # some arrays are broadcast from length-1 dims
                sub = tuple(1 if draw(st.integers(0, 3)) == 0 else d for d in bshape)
                if shape[j] == 0:
                    sub = bshape
                items.append(draw(_int_array(shape[j], sub)))
            else:
                items.append(draw(_other_index(shape[j])))
        # drop trailing full slices sometimes (numpy fills them in)
        while items and isinstance(items[-1], slice) and items[-1] == slice(None) \
                and draw(st.booleans()):
            items.pop()
    # insert a None or replace a leading run by Ellipsis sometimes
    if draw(st.integers(0, 3)) == 0:
        items.insert(draw(st.integers(0, len(items))), None)
    if draw(st.integers(0, 3)) == 0:
        k = draw(st.integers(0, len(items)))
        if all(isinstance(x, slice) and x == slice(None) for x in items[:k]):
            items[:k] = [Ellipsis]
    if len(items) == 1 and draw(st.booleans()):
        return items[0]
    return tuple(items)


def _other_index(n):
    """A non-advanced index for an axis of size n: full slice, slice, int."""
    ints = st.integers(-n, n - 1) if n > 0 else st.nothing()
    return st.one_of(
        st.just(slice(None)),
        st.builds(slice, st.none() | st.integers(-n - 2, n + 2),
                  st.none() | st.integers(-n - 2, n + 2),
                  st.none() | st.sampled_from([1, 2, 3, -1, -2])),
        ints,
    )


def indices(shape):
    """Basic or advanced indices."""
    return basic_indices(shape) | advanced_indices(shape)


def random_array(dtype, shape, seed):
    """Array of `shape` with random bytes for `dtype` (bools are 0/1;
    every other bit pattern is allowed, NaNs included)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape, dtype=object)) if shape else 1
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    raw = rng.integers(0, 256, size=n * dtype.itemsize, dtype=np.uint8)
    a = raw.view(dtype).reshape(shape)
    if dtype.names:
        # bool fields need 0/1 as well, or comparisons depend on copy paths
        _fix_bools(a)
    return a


def _fix_bools(a):
    for name in a.dtype.names:
        f = a[name]
        if f.dtype.names:
            _fix_bools(f)
        elif f.dtype.base == np.bool_:
            f.view(np.uint8)[...] &= 1


def array_values(dtype, shape):
    """Strategy: random_array(dtype, shape, seed) with a drawn seed."""
    return st.integers(0, 2 ** 32 - 1).map(lambda s: random_array(dtype, shape, s))


@st.composite
def values_for(draw, dtype, shape):
    """A value to assign to a target of `shape`: an array of that shape, of
    a shape that broadcasts to it (length-1 or missing leading dims), or a
    scalar."""
    kind = draw(st.integers(0, 3))
    if kind == 0 or len(shape) == 0:
        return draw(array_values(dtype, ()))[()]
    if kind == 1:
        k = draw(st.integers(0, len(shape)))
        bshape = tuple(1 if draw(st.integers(0, 2)) == 0 else d for d in shape[k:])
        return draw(array_values(dtype, bshape))
    return draw(array_values(dtype, tuple(shape)))


@st.composite
def resize_shapes(draw, shape, order='C', itemsize=8, max_nbytes=1 << 20):
    """New shapes for resize(): mostly a changed major axis (0 for C, last
    for F) - the data-preserving case - sometimes any shape of same ndim."""
    ndim = len(shape)
    if ndim and draw(st.integers(0, 3)) > 0:
        M = 0 if order == 'C' else ndim - 1
        other = _prod_nonzero(shape[:M] + shape[M + 1:])
        maxmajor = max(0, max_nbytes // itemsize // other)
        new = list(shape)
        new[M] = draw(st.integers(0, maxmajor))
        return tuple(new)
    return draw(shapes(itemsize=itemsize, max_nbytes=max_nbytes, min_dims=ndim,
                       max_dims=ndim))


def _prod_nonzero(shape):
    p = 1
    for d in shape:
        p *= max(d, 1)
    return p


@contextlib.contextmanager
def ram_budget(nbytes):
    """Run with the pager's RAM budget set to nbytes; restore it after."""
    import wendelin_cy
    old = wendelin_cy.get_ram_budget()
    wendelin_cy.set_ram_budget(nbytes)
    try:
        yield
    finally:
        wendelin_cy.set_ram_budget(old)
