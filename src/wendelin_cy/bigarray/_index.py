"""How an index of a BigArray is analysed: which box of the array it touches,
the index to apply with numpy to that box, and the byte spans of a view (the
blocks a prefault must reach).  Pure functions of an index and a shape: no
pager, no file."""

import operator

import numpy as np
from numpy.lib.array_utils import byte_bounds

__all__ = ['INDEX_ERROR']

INDEX_ERROR = ('only integers, slices (`:`), ellipsis (`...`), numpy.newaxis '
                '(`None`) and integer or boolean arrays are valid indices')


# ~~~ index analysis
#
# An index is turned into an _IndexPlan: for every axis of the array the
# half-open range [lo, hi) of positions the index touches, and a `final`
# index to apply with numpy to the box `A[lo0:hi0, lo1:hi1, ...]` that gives
# the same result as applying the original index to the whole array.

_NEWAXIS, _ELLIPSIS, _INT, _SLICE, _INTARR, _BOOLARR, _BOOL0 = range(7)


def _classify(x):
    """-> (kind, value) for one element of an index tuple."""
    if x is None:
        return _NEWAXIS, None
    if x is Ellipsis:
        return _ELLIPSIS, None
    if isinstance(x, slice):
        return _SLICE, x
    if isinstance(x, (bool, np.bool_)):
        return _BOOL0, x
    if not isinstance(x, np.ndarray):
        if isinstance(x, (int, np.integer)):
            return _INT, operator.index(x)
        if isinstance(x, (list, tuple)):
            arr = np.asarray(x)
            if arr.size == 0 and arr.dtype.kind == 'f':
                arr = arr.astype(np.intp)      # [] means "no positions"
            x = arr
        elif hasattr(type(x), '__index__'):
            return _INT, operator.index(x)
        else:
            raise IndexError(INDEX_ERROR)
    # ndarray
    if x.dtype == np.bool_:
        return (_BOOL0, x) if x.ndim == 0 else (_BOOLARR, x)
    if x.dtype.kind in 'iu':
        if x.ndim == 0:
            return _INT, int(x)
        return _INTARR, x
    if x.dtype.kind in 'fc' or x.dtype.kind in 'OSUV':
        raise IndexError('arrays used as indices must be of integer '
                         '(or boolean) type')
    raise IndexError(INDEX_ERROR)


def _check_intarr(a, axis, n):
    """Bounds-check integer index array `a` for an axis of size n and
    return it as intp with negatives wrapped."""
    if a.size:
        mn, mx = a.min(), a.max()
        if mn < -n or mx >= n:
            bad = mn if mn < -n else mx
            raise IndexError('index %d is out of bounds for axis %d with size %d'
                             % (bad, axis, n))
        if a.dtype.kind == 'i' and mn < 0:
            a = np.where(a < 0, a + n, a)
    return a.astype(np.intp, copy=False)


class _IndexPlan:
    __slots__ = ('advanced', 'final', 'has_ellipsis', 'lohi')

    def __init__(self, idx, shape):
        if not isinstance(idx, tuple):
            idx = (idx,)
        items = [_classify(x) for x in idx]
        ndim = len(shape)

        nell = sum(1 for k, _ in items if k == _ELLIPSIS)
        if nell > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        consumed = 0
        for k, v in items:
            if k in (_INT, _SLICE, _INTARR):
                consumed += 1
            elif k == _BOOLARR:
                consumed += v.ndim
        if consumed > ndim:
            raise IndexError('too many indices for array: array is '
                             '%d-dimensional, but %d were indexed'
                             % (ndim, consumed))

        lohi = [(0, n) for n in shape]   # axes not indexed: whole range
        final = []
        advanced = False
        axis = 0
        for k, v in items:
            if k == _NEWAXIS:
                final.append(None)
            elif k == _ELLIPSIS:
                final.append(Ellipsis)
                axis += ndim - consumed
            elif k == _BOOL0:
                final.append(v)
                advanced = True
            elif k == _INT:
                n = shape[axis]
                if not -n <= v < n:
                    raise IndexError('index %d is out of bounds for axis %d '
                                     'with size %d' % (v, axis, n))
                if v < 0:
                    v += n
                lohi[axis] = (v, v + 1)
                final.append(0)
                axis += 1
            elif k == _SLICE:
                n = shape[axis]
                start, stop, step = v.indices(n)
                count = len(range(start, stop, step))
                if count == 0:
                    lohi[axis] = (0, 0)
                    final.append(slice(None))
                else:
                    last = start + (count - 1) * step
                    lo, hi = min(start, last), max(start, last) + 1
                    lohi[axis] = (lo, hi)
                    # within [lo, hi) the selection is every |step|-th
                    # position from one end to the other end
                    final.append(slice(None, None, step))
                axis += 1
            elif k == _INTARR:
                a = _check_intarr(v, axis, shape[axis])
                lo, hi = (int(a.min()), int(a.max()) + 1) if a.size else (0, 0)
                lohi[axis] = (lo, hi)
                final.append(a - lo if lo else a)
                advanced = True
                axis += 1
            else:   # _BOOLARR: same as its .nonzero() arrays in its place
                for j in range(v.ndim):
                    if v.shape[j] != shape[axis + j]:
                        raise IndexError(
                            'boolean index did not match indexed array along '
                            'axis %d; size of axis is %d but size of '
                            'corresponding boolean axis is %d'
                            % (axis + j, shape[axis + j], v.shape[j]))
                for a in v.nonzero():
                    lo, hi = (int(a.min()), int(a.max()) + 1) if a.size else (0, 0)
                    lohi[axis] = (lo, hi)
                    final.append(a - lo if lo else a)
                    axis += 1
                advanced = True

        self.lohi = lohi
        self.final = tuple(final)
        self.advanced = advanced
        self.has_ellipsis = nell > 0


def _is_field_index(idx):
    return isinstance(idx, str) or (
        isinstance(idx, list) and idx and all(isinstance(x, str) for x in idx))


# ~~~ prefault helpers over ndarray views of a mapping

def _dense(t, blksize):
    """True if the bytes view `t` touches form one run with no whole block
    skipped between touched bytes."""
    axes = sorted((abs(s), n) for s, n in zip(t.strides, t.shape) if n > 1)
    ext = t.itemsize
    for s, n in axes:
        if s - ext >= blksize:
            return False
        ext = (n - 1) * s + ext
    return True


def _spans(t, blksize):
    """Yield absolute address ranges [lo, hi) covering the blocks view `t`
    touches, without covering whole blocks it skips."""
    if t.size == 0:
        return
    if _dense(t, blksize):
        yield byte_bounds(t)
        return
    k = max((j for j in range(t.ndim) if t.shape[j] > 1),
            key=lambda j: abs(t.strides[j]))
    idx = [slice(None)] * t.ndim
    for i in range(t.shape[k]):
        idx[k] = slice(i, i + 1)    # (an int would give a scalar for 1-d t)
        yield from _spans(t[tuple(idx)], blksize)


def _int_index_offsets(box, final):
    """Byte offsets (from box's first element) of box[final] when `final` is
    made of integer arrays / ints only, one per axis: computed from the indices
    themselves, in memory proportional to the selection (not to the box, which
    for a few elements far apart can be most of the array).  None otherwise."""
    idx = final if isinstance(final, tuple) else (final,)
    if len(idx) != box.ndim:
        return None
    arrs = []
    for k, n in zip(idx, box.shape):
        if isinstance(k, (bool, np.bool_)):
            return None
        if isinstance(k, (int, np.integer)):
            a = np.asarray(k, dtype=np.int64)
        elif isinstance(k, np.ndarray) and k.dtype.kind in 'iu':
            a = k.astype(np.int64, copy=False)
        else:
            return None
        if a.size and (a.min() < -n or a.max() >= n):
            raise IndexError('index out of bounds for axis with size %d' % n)
        arrs.append(np.where(a < 0, a + n, a))
    try:
        np.broadcast_shapes(*[a.shape for a in arrs])
    except ValueError:
        return None             # numpy's own indexing says what is wrong
    off = np.int64(0)
    for a, st in zip(arrs, box.strides):
        off = off + a * st
    return off
