"""BigArray: numpy.ndarray semantics over a BigFile handle mapping.

A BigArray is a geometry (shape, dtype, order) laid over the bytes of one
file handle (`BigFileH`): the whole array is stored contiguously from byte 0
of the file, in C or Fortran order, with no header and no padding.  The
array itself holds no data and may be far larger than RAM; what users compute
on are the real `numpy.ndarray` views that `A[index]` returns.  Each block of
a handle has one fixed address, so the file must fit the handle's address
reservation (64 GiB by default: open the handle with `fileh_open(reserve=...)`
for more; reservations are placed with free addresses after them, so they
usually grow in place up to 2 TiB) and views beyond the 128 TiB of user
address space raise MemoryError.  Up to MAX_NBYTES (2**64 - 1) can be
described.

Views
-----
`A[basic_index]` works out which byte range of the file the index touches,
mmaps only the blocks covering that range and returns an ndarray built
directly over the mapping (`np.ndarray(buffer=vma, offset=..., strides=...)`):
no data is copied, nothing is loaded until the view is touched, and the view
keeps its VMA alive through `.base`.  Every block of a handle has exactly one
address, so all views of one handle share memory: a write through one view is
seen by every other view and by views made later.  Changes stay in the handle
until `fileh.dirty_writeout()` (or are dropped by `fileh.dirty_discard()`).
The views of a BigArray and of a ZBigArray are exactly `numpy.ndarray`
(`type(A[:]) is np.ndarray`); sharing them with other processes by reference
is `wendelin_cy.share` and joblib's reducer (`bigarray._viewref`).

Advanced indices (integer arrays, boolean masks) are served the same way: the
index is narrowed to the bounding box of the elements it selects, that box is
mapped, and numpy's own fancy indexing runs on it with shifted indices, so
result shapes, broadcasting, ordering and duplicate handling are numpy's.  The
result is a copy, as in numpy.

Faults and syscalls
-------------------
Touching a view faults blocks in through the pager.  Three places do not
rely on that:

* large assignments (`A[...] = v`, `append`, the zeroing done by `resize`)
  proceed chunk by chunk along the major axis and call
  `vma.prefault(..., write=True)` on each chunk first, so an error in
  `loadblk` surfaces as an ordinary Python exception raised from prefault,
  with the chunks before it fully written and the chunks after it untouched;
* `tofile` prefaults each chunk before handing it to `write()`: a syscall on
  mapped memory that is not resident fails with EFAULT instead of faulting
  (should it happen anyway, the chunk is written from a copy).  Writing an
  F-ordered array in C order copies each chunk out of the mapping first,
  walking it in memory order; faults then happen in that copy.
* advanced indexing prefaults exactly the blocks holding the selected
  elements (a write must not dirty blocks it does not change).

A large value that overlaps the target with the same layout (`A[1:] =
A[:-1]`, `A[:, :-1] = A[:, 1:]`) is copied chunk by chunk in the address
order that reads each source before it is overwritten; any other overlapping
value (different strides or dtype) is copied to RAM first, as numpy does.

The chunk size is a quarter of `wendelin_cy.get_ram_budget()` (at least one
block; 64 MiB when no budget is known).

Resize
------
Like `numpy.ndarray.resize`, and like wendelin.core, `resize` never moves
data: the array keeps the first min(old, new) bytes of its memory-order data
and the new shape reinterprets them.  So for C order, changing only axis 0
keeps every surviving element in place (for F order: changing only the last
axis); any other change reinterprets the flat data, exactly as
`ndarray.resize` does.  Unlike wendelin.core, which just reassigns the shape,
shrinking zeroes the dropped tail of the file so that a later growth reads
zeros there and not resurrected old data ("only data in the kept region
stays").  Blocks of the tail that already read as zeros are not written, so
shrinking does not dirty holes.  The cost is O(dropped bytes) for the check;
growing is O(1).  If zeroing fails half-way (loadblk error), the shape is
already the new one and the error propagates; the partly zeroed tail is dirty
and `dirty_discard()` (or a transaction abort for ZBigArray) restores it.

Append
------
`append(values)` grows the array along its major axis (axis 0 for C, the last
axis for F, where the tail is contiguous in the file), then writes only the
new tail: O(len(values)).

Contract with subclasses (ZBigArray)
------------------------------------
State is exactly `self._shape` (tuple of ints), `self._dtype` (np.dtype) and
`self._order` ('C' or 'F').  Everything else (strides, size, ...) is derived
on each use.  The file handle is reached only through the attribute
`self._fileh`, which a subclass may turn into a property.  `resize()` and
`append()` change the shape only by assigning `self._shape = newshape`.

What is not provided
--------------------
No arithmetic, no `__eq__`, no `.T`, no text `tofile(sep=...)`.  A BigArray is
not an ndarray; `np.asarray(A)` (or `A[...]`) is.  `len(A)` is `shape[0]` as
in numpy (wendelin.core answers the major axis length for F order).  Field
names index structured arrays (`A['x']`) like numpy.
"""

from __future__ import annotations

import errno
import operator
import os

from typing import Any, Iterator

import numpy as np
from numpy.lib.array_utils import byte_bounds
from numpy.typing import ArrayLike, DTypeLike

from wendelin_cy.bigarray import _arrayref
from wendelin_cy.bigarray._arrayref import ArrayRef, _flatbytev  # wendelin.core's names
from wendelin_cy.bigarray._index import (_IndexPlan, _dense, _int_index_offsets,
                                        _is_field_index, _spans)

__all__ = ['MAX_NBYTES', 'BigArray', 'ArrayRef', '_flatbytev']

#: Largest array (in bytes) a BigArray may describe: 2**64 - 1, as in
#: wendelin.core.  Only what fits a handle's address reservation can be
#: mapped (a view, asarray()): beyond it mmap raises MemoryError; the user
#: address space is 2**47 bytes (128 TiB) on x86-64 Linux.
MAX_NBYTES = (1 << 64) - 1

_INTP_MAX = int(np.iinfo(np.intp).max)

_FALLBACK_CHUNK = 64 << 20      # chunk size when no RAM budget is known

_ORDERS = ('C', 'F')


# ~~~ geometry

def _prod(seq):
    p = 1
    for x in seq:
        p *= x
    return p


def _check_dtype(dtype):
    """dtype-like -> np.dtype that a BigArray can hold, or TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError('BigArray: invalid dtype %r: %s' % (dtype, e)) from None
    if dt.hasobject:
        raise TypeError('BigArray cannot hold Python objects: dtype %s '
                        'is or contains the object dtype' % (dt,))
    if dt.subdtype is not None:
        raise TypeError('BigArray: subarray dtype %s is not supported at top '
                        'level; add its dimensions %s to the shape instead'
                        % (dt, dt.subdtype[1]))
    if dt.itemsize == 0:
        raise TypeError('BigArray: dtype %s has itemsize 0 (unsized flexible '
                        'dtype); give it a size, e.g. "S8"' % (dt,))
    return dt


def _check_shape(shape, itemsize):
    """shape-like -> tuple of ints, or TypeError/ValueError."""
    try:
        shape = tuple(shape)
    except TypeError:
        shape = (shape,)
    out = []
    for d in shape:
        try:
            d = operator.index(d)
        except TypeError:
            raise TypeError('BigArray: shape entries must be integers, got %r '
                            'in shape %r' % (d, shape)) from None
        if d < 0:
            raise ValueError('BigArray: negative dimensions are not allowed: '
                             'shape %r' % (shape,))
        out.append(d)
    out = tuple(out)
    # Bound the product with zero dimensions counted as 1: it bounds every
    # stride as well as nbytes (uint64); a view whose strides or offset do
    # not fit int64 is refused when it is made (_index.py).
    span = _prod(max(d, 1) for d in out) * itemsize
    if span > MAX_NBYTES:
        raise ValueError('BigArray: shape %r of %d-byte items is too big: '
                         '%d bytes > MAX_NBYTES (%d)'
                         % (out, itemsize, _prod(out) * itemsize, MAX_NBYTES))
    return out


def _check_order(order):
    if not isinstance(order, str) or order.upper() not in _ORDERS:
        raise ValueError("BigArray: order must be 'C' or 'F', not %r" % (order,))
    return order.upper()


def _strides(shape, itemsize, order):
    """Byte strides of a contiguous array of that geometry (all > 0)."""
    st = [0] * len(shape)
    acc = itemsize
    axes = range(len(shape) - 1, -1, -1) if order == 'C' else range(len(shape))
    for j in axes:
        st[j] = acc
        acc *= shape[j]
    return tuple(st)


def _chunk_nbytes(blksize):
    """Bytes to touch per step in chunked loops, derived from the RAM budget."""
    budget = None
    try:
        from wendelin_cy.ram import get_ram_budget
    except ImportError:
        pass
    else:
        budget = get_ram_budget()
    if not budget or budget <= 0:
        return max(blksize, _FALLBACK_CHUNK)
    return max(blksize, (budget // 4) // blksize * blksize)


class AppendDtypeError(TypeError, ValueError):
    """append() of values whose dtype does not cast safely to the array's
    (a ValueError too, as in wendelin.core)."""


class _Mapping:
    """A VMA over file bytes [base, base + len) plus the address it starts at."""
    __slots__ = ('addr', 'base', 'blksize', 'vma')

    def __init__(self, vma, base, addr, blksize):
        self.vma, self.base, self.addr, self.blksize = vma, base, addr, blksize

    def prefault_range(self, lo, hi, write):
        """Prefault absolute addresses [lo, hi)."""
        if hi > lo:
            self.vma.prefault(lo - self.addr, hi - lo, write=write)

    def prefault_view(self, t, write):
        for lo, hi in _spans(t, self.blksize):
            self.prefault_range(lo, hi, write)


class BigArray:
    """numpy.ndarray-like array stored in a BigFile, seen through `fileh`.

    BigArray(shape, dtype, fileh, order='C')

    `A[index]` with a basic index returns an ndarray view (no copy) over the
    mapping; with an advanced index it returns a copy, as numpy does.  See
    the module docstring for resize/append semantics.
    """

    # NOTE no __slots__: ZBigArray mixes this class with Persistent.

    def __init__(self, shape: int | tuple[int, ...], dtype: DTypeLike, fileh: Any,
                 order: str = 'C') -> None:
        self._init_geometry(shape, dtype, order)
        self._fileh = fileh

    def _init_geometry(self, shape, dtype, order):
        """Validate and set _shape, _dtype, _order (not the file handle)."""
        dt = _check_dtype(dtype)
        order = _check_order(order)
        self._shape = _check_shape(shape, dt.itemsize)
        self._dtype = dt
        self._order = order

    # ~~~ ndarray-like attributes

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def order(self) -> str:
        return self._order

    @property
    def data(self):
        """No single buffer holds a BigArray (as ndarray.data): TypeError."""
        raise TypeError('%s has no .data buffer: use A[...] for an ndarray view'
                        % type(self).__name__)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return _prod(self._shape)

    @property
    def itemsize(self) -> int:
        return self._dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def strides(self) -> tuple[int, ...]:
        if self.size == 0:      # numpy's strides for empty arrays
            return np.empty(self._shape, self._dtype, order=self._order).strides
        return _strides(self._shape, self._dtype.itemsize, self._order)

    @property
    def _major_axis(self):
        """Axis along which append() grows: the one with the largest stride."""
        return 0 if self._order == 'C' else len(self._shape) - 1

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError('len() of unsized object')
        return self._shape[0]

    def __iter__(self) -> Iterator[Any]:
        if not self._shape:
            raise TypeError('iteration over a 0-d array')
        return (self[i] for i in range(self._shape[0]))

    def __repr__(self) -> str:
        return '<%s shape=%r dtype=%s order=%r>' % (
            type(self).__name__, self._shape, self._dtype, self._order)

    # ~~~ mapping

    def _geometry(self):
        shape, dt = self._shape, self._dtype
        return shape, dt, _strides(shape, dt.itemsize, self._order)

    def _map_box(self, lohi):
        """ndarray over the box prod([lo, hi)) of the array, and its _Mapping
        (None when the box is empty: nothing is mapped then)."""
        shape, dt, strides = self._geometry()
        bshape = tuple(hi - lo for lo, hi in lohi)
        if any(n == 0 for n in bshape):
            return np.ndarray(bshape, dt), None
        if max(strides, default=0) > _INTP_MAX:
            raise ValueError('BigArray: strides %r of shape %r do not fit numpy '
                             '(intp): no view of it can be made' % (strides, shape))
        start = sum(lo * s for (lo, _), s in zip(lohi, strides))
        end = sum((hi - 1) * s for (_, hi), s in zip(lohi, strides)) + dt.itemsize
        m = self._map_bytes(start, end)
        box = np.ndarray(bshape, dt, buffer=m.vma, offset=start - m.base,
                         strides=strides)
        return box, m

    def _map_bytes(self, start, end):
        """mmap the blocks covering file bytes [start, end) -> _Mapping."""
        fileh = self._fileh
        bs = fileh.blksize
        pg0 = start // bs
        pg1 = -(-end // bs)
        vma = fileh.mmap(pg0, pg1 - pg0)
        base = pg0 * bs
        # the address the VMA starts at, from numpy's view of its buffer
        # (making an ndarray over it touches no memory)
        probe = np.ndarray((1,), np.uint8, buffer=vma)
        addr = probe.__array_interface__['data'][0]
        _arrayref._register(vma, self, addr - base)     # for ArrayRef(view)
        return _Mapping(vma, base, addr, bs)

    def _bytes_view(self, start, end):
        """uint8 ndarray over file bytes [start, end) and its _Mapping."""
        m = self._map_bytes(start, end)
        u8 = np.ndarray((end - start,), np.uint8, buffer=m.vma,
                        offset=start - m.base)
        return u8, m

    def _chunk_nbytes(self):
        return _chunk_nbytes(self._fileh.blksize)

    # ~~~ indexing

    def __getitem__(self, idx: Any) -> Any:
        if _is_field_index(idx):        # A['x'], A[['x', 'y']]: field views
            return self[...][idx]
        plan = _IndexPlan(idx, self._shape)
        if plan.advanced:               # a copy: always a plain ndarray
            box, m = self._map_box(plan.lohi)
            if m is not None:
                self._prefault_selected(box, plan.final, m, write=False)
            return box[plan.final]
        box, m = self._map_box(plan.lohi)
        return box[plan.final]

    def __setitem__(self, idx: Any, value: ArrayLike) -> None:
        if _is_field_index(idx):
            box, m = self._map_box([(0, n) for n in self._shape])
            target = box[idx]
            if m is None:
                target[...] = value
            else:
                self._assign(target, value, m)
            return
        plan = _IndexPlan(idx, self._shape)
        box, m = self._map_box(plan.lohi)
        if plan.advanced:
            if m is not None:
                self._prefault_selected(box, plan.final, m, write=True)
            box[plan.final] = value
            return
        final = plan.final if plan.has_ellipsis else plan.final + (Ellipsis,)
        target = box[final]             # always an ndarray view, maybe 0-d
        if m is None:
            target[...] = value         # nothing to write; numpy's checks
            return
        self._assign(target, value, m)

    def _prefault_selected(self, box, final, m, write):
        """Prefault the blocks that `box[final]` (advanced) touches."""
        lo, hi = byte_bounds(box)
        limit = self._chunk_nbytes()
        if not write and hi - lo <= limit and _dense(box, m.blksize):
            m.prefault_range(lo, hi, False)
            return
        # Find the blocks the selection touches from the coordinates of the
        # selected elements, computed by applying `final` to zero-stride
        # coordinate grids: a write must not dirty blocks it does not change,
        # and a sparse read of a big box must not load all of it.
        off = _int_index_offsets(box, final)
        if off is None:
            off = 0
            for j, (n, s) in enumerate(zip(box.shape, box.strides)):
                grid = np.arange(n, dtype=np.int64).reshape(
                    (1,) * j + (n,) + (1,) * (box.ndim - j - 1))
                grid = np.broadcast_to(grid, box.shape)
                off = off + np.asarray(grid[final], dtype=np.int64) * s
        off = np.asarray(off, dtype=np.int64).ravel() + (lo - m.addr)
        bs = m.blksize
        blocks = np.union1d(off // bs, (off + box.itemsize - 1) // bs)
        if blocks.size == 0:
            return
        # prefault runs of consecutive blocks, each at most `limit` long
        maxrun = max(1, limit // bs)
        breaks = np.nonzero(np.diff(blocks) != 1)[0] + 1
        for run in np.split(blocks, breaks):
            for i in range(0, run.size, maxrun):
                b0 = int(run[i])
                b1 = int(run[min(i + maxrun, run.size) - 1]) + 1
                m.vma.prefault(b0 * bs, (b1 - b0) * bs, write=write)

    def _assign(self, target, value, m):
        """target[...] = value, chunk by chunk with write-prefault."""
        limit = self._chunk_nbytes()
        lo, hi = byte_bounds(target)
        if hi - lo <= limit:
            m.prefault_view(target, write=True)
            target[...] = value
            return

        # Large: bring value to an array broadcast to target's shape (or
        # keep a scalar), with numpy's conversion rules.
        if isinstance(value, np.ndarray):
            v = value
        elif np.ndim(value) == 0 and not isinstance(value, (tuple, list)):
            v = None    # scalar: numpy converts it on every chunk assignment
        else:
            v = np.asarray(value, dtype=target.dtype)
        if v is not None:
            # numpy ignores leading length-1 dimensions of the value
            while v.ndim > target.ndim and v.shape[0] == 1:
                v = v[0]
            try:
                vb = np.broadcast_to(v, target.shape)
            except ValueError:
                raise ValueError('could not broadcast input array from shape '
                                 '%s into shape %s' % (v.shape, target.shape)) \
                    from None
            if np.may_share_memory(target, v):
                # A[1:] = A[:-1]: a chunked copy could read what it already
                # wrote.  Same layout: go through the chunks in the address
                # order that reads every source before overwriting it.
                # Otherwise copy the value first (as numpy does).
                taddr = target.__array_interface__['data'][0]
                vaddr = v.__array_interface__['data'][0]
                if (v.shape == target.shape and v.strides == target.strides
                        and v.dtype == target.dtype):
                    if vaddr != taddr:
                        direction = 1 if vaddr > taddr else -1
                        self._assign_chunks(target, v, False, m, limit, direction)
                    return              # (vaddr == taddr: x[...] = x)
                vb = np.broadcast_to(v.copy(), target.shape)
        else:
            vb = value
        self._assign_chunks(target, vb, v is None, m, limit)

    def _assign_chunks(self, t, v, scalar, m, limit, direction=0):
        """Assign chunk by chunk.  direction > 0: write in increasing address
        order, < 0: decreasing, 0: any (index order).  Chunks along the
        largest stride are address-ordered for views of one BigArray: the
        extent of the smaller axes fits in one step of the largest."""
        if t.size == 0:
            return
        lo, hi = byte_bounds(t)
        axes = [j for j in range(t.ndim) if t.shape[j] > 1]
        if hi - lo <= limit or not axes:
            m.prefault_view(t, write=True)
            t[...] = v
            return
        k = max(axes, key=lambda j: abs(t.strides[j]))
        idx = [slice(None)] * t.ndim
        idx[k] = slice(0, 1)
        rlo, rhi = byte_bounds(t[tuple(idx)])
        row = rhi - rlo
        s = abs(t.strides[k])
        if row > limit or s - row >= m.blksize:
            r = 1
        else:
            r = max(1, (limit - row) // s + 1)
        n = t.shape[k]
        starts = range(0, n, r)
        if direction and (direction > 0) != (t.strides[k] > 0):
            starts = reversed(starts)
        for i in starts:
            idx[k] = slice(i, min(i + r, n))
            sl = tuple(idx)
            self._assign_chunks(t[sl], v if scalar else v[sl], scalar, m, limit,
                                direction)

    # ~~~ numpy interop

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        # The whole array as one view: fails (MemoryError from mmap) if it
        # does not fit in the address space; process it in chunks then.
        a = self[...]
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError('BigArray: converting to dtype %s needs a copy '
                                 'but copy=False was requested' % (np.dtype(dtype),))
            return a.astype(dtype)
        if copy:
            return a.copy()
        return a

    def view(self, dtype: DTypeLike | None = None) -> 'BigArray':
        """A BigArray over the same file handle with another dtype.

        Like ndarray.view(dtype): if the itemsize changes, the minor axis
        (the last axis for C order; for F order axis 0, which is the axis
        contiguous in memory - numpy 2 would refuse F-ordered arrays) is
        rescaled.  Returns a plain BigArray even for subclasses.
        """
        if dtype is None:
            return BigArray(self._shape, self._dtype, self._fileh, self._order)
        new = _check_dtype(dtype)
        old = self._dtype
        shape = list(self._shape)
        if new.itemsize != old.itemsize:
            if not shape:
                raise ValueError('Changing the dtype of a 0d array is only '
                                 'supported if the itemsize is unchanged')
            ax = len(shape) - 1 if self._order == 'C' else 0
            if new.itemsize < old.itemsize:
                if old.itemsize % new.itemsize:
                    raise ValueError('When changing to a smaller dtype, its size '
                                     'must be a divisor of the size of original '
                                     'dtype')
            else:
                if (shape[ax] * old.itemsize) % new.itemsize:
                    raise ValueError('When changing to a larger dtype, its size '
                                     'must be a divisor of the total size in '
                                     'bytes of axis %d of the array' % ax)
            shape[ax] = shape[ax] * old.itemsize // new.itemsize
        return BigArray(tuple(shape), new, self._fileh, self._order)

    # ~~~ changing the shape

    def resize(self, new_shape: int | tuple[int, ...], refcheck: bool = True) -> None:
        """Change the shape in place, keeping the first min(old, new) bytes
        of memory-order data; on shrink the dropped tail is zeroed.

        Already made views keep their shape.  `refcheck` is accepted for
        numpy compatibility and ignored: no data moves.
        """
        dt = self._dtype
        new_shape = _check_shape(new_shape, dt.itemsize)
        old_nbytes = self.nbytes
        new_nbytes = _prod(new_shape) * dt.itemsize
        self._shape = new_shape
        if new_nbytes < old_nbytes:
            self._zero_bytes(new_nbytes, old_nbytes)

    def _zero_bytes(self, start, end):
        """Zero file bytes [start, end), writing only blocks that are not
        already zero there."""
        bs = self._fileh.blksize
        chunk = self._chunk_nbytes()
        pos = start
        while pos < end:
            stop = min(end, (pos // bs) * bs + chunk)
            u8, m = self._bytes_view(pos, stop)
            m.prefault_view(u8, write=False)
            # block by block within the chunk
            b = pos
            while b < stop:
                e = min(stop, (b // bs + 1) * bs)
                piece = u8[b - pos:e - pos]
                if piece.any():
                    m.prefault_view(piece, write=True)
                    piece[...] = 0
                b = e
            del u8, m
            pos = stop

    def append(self, values: ArrayLike) -> None:
        """Append `values` along the major axis (axis 0 for C order, the last
        axis for F order) in O(len(values)).

        `values` must have the array's shape on every other axis.  Arrays
        must cast to the array's dtype under 'safe' casting; plain Python
        numbers and lists may also be integers that fit an integer dtype or
        floats for a float dtype.
        """
        shape = self._shape
        if not shape:
            raise ValueError('cannot append to a 0-d %s' % type(self).__name__)
        v = self._coerce_append(values)
        M = self._major_axis
        if (v.ndim != len(shape) or v.shape[:M] != shape[:M]
                or v.shape[M + 1:] != shape[M + 1:]):
            expect = list(shape)
            expect[M] = 'n'
            raise ValueError('cannot append values of shape %s to %s of shape '
                             '%s: values must have shape (%s)' % (
                                 v.shape, type(self).__name__, shape,
                                 ', '.join(str(x) for x in expect)))
        delta = v.shape[M]
        n = shape[M]
        newshape = shape[:M] + (n + delta,) + shape[M + 1:]
        newshape = _check_shape(newshape, self._dtype.itemsize)
        if delta == 0:
            return
        self._shape = newshape
        tail = [slice(None)] * len(shape)
        tail[M] = slice(n, n + delta)
        try:
            self[tuple(tail)] = v
        except BaseException:
            try:
                self.resize(shape)          # zeroes what was written
            finally:
                self._shape = shape
            raise

    def _coerce_append(self, values):
        dt = self._dtype
        if isinstance(values, BigArray):
            values = values[...]
        if isinstance(values, (np.ndarray, np.generic)):
            v = np.asarray(values)
            if not np.can_cast(v.dtype, dt, 'safe'):
                raise AppendDtypeError('cannot append values of dtype %s to %s of dtype '
                                '%s: cast is not safe' % (
                                    v.dtype, type(self).__name__, dt))
            return v
        # Python objects (lists, numbers)
        if dt.names is not None:
            try:
                return np.asarray(values, dtype=dt)
            except (TypeError, ValueError, OverflowError) as e:
                raise TypeError('cannot convert values to structured dtype %s: %s'
                                % (dt, e)) from None
        try:
            v = np.asarray(values)
        except ValueError as e:     # ragged nesting
            raise ValueError('cannot append values: %s' % e) from None
        if v.dtype.hasobject:
            raise TypeError('cannot append Python objects to %s of dtype %s'
                            % (type(self).__name__, dt))
        if np.can_cast(v.dtype, dt, 'safe'):
            return v
        if v.dtype.kind in 'iu' and dt.kind in 'iu':
            info = np.iinfo(dt)
            if v.size == 0 or (int(v.min()) >= info.min and int(v.max()) <= info.max):
                return v.astype(dt)
        if v.dtype.kind in 'iuf' and dt.kind in 'fc':
            return v.astype(dt)
        if v.dtype.kind == 'c' and dt.kind == 'c':
            return v.astype(dt)
        raise TypeError('cannot append values of dtype %s to %s of dtype %s: '
                        'cast is not safe' % (v.dtype, type(self).__name__, dt))

    # ~~~ output

    def tofile(self, fid: Any, order: str = 'C') -> None:
        """Write the array's data to a file object (or path) as raw bytes.

        order='C' (numpy's ndarray.tofile behaviour) writes in C order;
        order='A' or 'K' writes in the array's memory order (the file's raw
        bytes; fastest).  For a C-ordered array all are the same.  Data is
        written chunk by chunk; each chunk handed to write() is prefaulted
        first (a syscall on non-resident mapped memory fails with EFAULT).
        """
        if order not in ('C', 'A', 'K'):
            raise ValueError("tofile: order must be 'C', 'A' or 'K', not %r"
                             % (order,))
        if isinstance(fid, (str, bytes, os.PathLike)):
            with open(fid, 'wb') as f:
                self._tofile(f, order)
        else:
            self._tofile(fid, order)

    def _tofile(self, f, order):
        nbytes = self.nbytes
        if nbytes == 0:
            return
        if order in ('A', 'K') or self._order == 'C' or self.ndim <= 1:
            bs = self._fileh.blksize
            chunk = self._chunk_nbytes()
            pos = 0
            while pos < nbytes:
                stop = min(nbytes, (pos // bs) * bs + chunk)
                u8, m = self._bytes_view(pos, stop)
                m.prefault_view(u8, write=False)
                _write_all(f, u8)
                del u8, m
                pos = stop
        else:
            # F-ordered array written in C order: rows of the C order are
            # scattered over the whole file; copy each chunk out (faults
            # happen in user space then) and write the copy.
            self._tofile_copy(f, self[...], self._chunk_nbytes())

    def _tofile_copy(self, f, t, limit):
        if t.ndim == 0 or t.nbytes <= limit:
            _write_all(f, _c_bytes(t))
            return
        row = t.nbytes // t.shape[0]    # (not t[0].nbytes: a bytes scalar drops trailing NULs)
        if row > limit:
            for i in range(t.shape[0]):
                self._tofile_copy(f, t[i], limit)
            return
        r = max(1, limit // row)
        for i in range(0, t.shape[0], r):
            _write_all(f, _c_bytes(t[i:i + r]))


def _c_bytes(t):
    """C-order bytes of mapped view `t` as a uint8 array in RAM.  The copy
    out of the mapping follows t's memory order (a C-order walk of an F-order
    view would visit every block once per row and thrash the budget); the
    reordering is then done in RAM."""
    tmp = np.empty_like(t, order='K')
    tmp[...] = t
    return np.ascontiguousarray(tmp).reshape(-1).view(np.uint8)


def _write_all(f, u8):
    """f.write() all bytes of uint8 array u8, handling short writes; if the
    kernel still refuses the mapped memory (EFAULT), write a copy."""
    mv = memoryview(u8)
    while len(mv):
        try:
            n = f.write(mv)
        except OSError as e:
            if e.errno != errno.EFAULT:
                raise
            n = f.write(mv.tobytes())
        if n is None:       # non-blocking raw file with nothing written
            continue
        mv = mv[n:]
