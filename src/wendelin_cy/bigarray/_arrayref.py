"""wendelin.core's ``bigarray.ArrayRef`` and ``_flatbytev``.

``ArrayRef(x)`` describes an ndarray ``x`` as "root object + how to make the
view again": ``root`` is the object whose memory ``x`` views (the BigArray
``x`` was taken from, else the outermost ndarray of ``x.base``'s chain);
``[lo, hi)`` the byte range of ``root``'s memory (in address order, see
``_flatbytev``) that ``x`` touches; ``z0`` the byte offset of ``x``'s first
element inside that range; ``shape``, ``stridev``, ``dtype`` those of ``x``.
``deref()`` makes the view again from ``root``, touching only bytes
``[lo, hi)`` (for a BigArray root only those blocks are mapped).

(Not to be confused with ``bigarray._viewref.ArrayRef``, wendelin_cy's
reference that crosses processes; this one is in-process.)
"""

import weakref

import numpy as np

# VMA -> (weakref to the BigArray that mapped it, address of that array's
# byte 0 in the VMA's address space); filled by BigArray._map_bytes
_owners = weakref.WeakKeyDictionary()


def _register(vma, array, addr0):
    try:
        _owners[vma] = (weakref.ref(array), addr0)
    except TypeError:       # a VMA without weak references: no ArrayRef root
        pass


def _addr(a):
    return a.__array_interface__['data'][0]


def _extent(a):
    """(lowest, highest + 1) address of the bytes ndarray a touches."""
    p = _addr(a)
    lo = p + sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s < 0)
    hi = p + sum((n - 1) * s for n, s in zip(a.shape, a.strides) if s > 0)
    return lo, hi + a.itemsize


class _Bytes:
    """__array_interface__ holder: a uint8 view at an address, keeping base."""

    def __init__(self, addr, n, readonly, base):
        self.__array_interface__ = {'data': (addr, readonly), 'shape': (n,),
                                    'typestr': '|u1', 'version': 3}
        self.base = base


def _flatbytev(a):
    """1-d uint8 view of all the memory of ndarray a, lowest address first."""
    a = np.asarray(a)
    if a.size == 0:
        return np.ndarray((0,), np.uint8)
    lo, hi = _extent(a)
    return np.asarray(_Bytes(lo, hi - lo, not a.flags.writeable, a))


class ArrayRef:
    """Reference to ndarray x as root + [lo, hi) + z0 + shape/stridev/dtype."""

    def __init__(self, x):
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        top = x
        while True:
            b = top.base
            if not isinstance(b, np.ndarray):
                # numpy's as_strided holder (DummyArray) and ours keep the
                # ndarray they view in .base: go through them
                b = getattr(b, 'base', None) if hasattr(b, '__array_interface__') else None
                if not isinstance(b, np.ndarray):
                    break
            top = b
        try:
            owner = _owners.get(top.base) if top.base is not None else None
        except (TypeError, ValueError):     # unhashable base (a memoryview)
            owner = None
        array = owner[0]() if owner is not None else None
        if array is not None:
            root, addr0 = array, owner[1]
        else:
            root, addr0 = top, _extent(top)[0]
        self.root = root
        self.dtype = x.dtype
        self.shape = x.shape
        self._type = type(x)
        if x.size == 0:
            # nothing is viewed: any one byte of the root will do
            self.lo, self.hi, self.z0 = 0, 1, 0
            self.stridev = x.strides
            return
        lo, hi = _extent(x)
        self.lo, self.hi = lo - addr0, hi - addr0
        self.z0 = _addr(x) - lo
        self.stridev = x.strides

    def deref(self):
        """The view again, made from self.root's bytes [lo, hi)."""
        root = self.root
        if isinstance(root, np.ndarray):
            b = _flatbytev(root)[self.lo:self.hi]
        else:           # a BigArray: map only the bytes needed
            b = root._bytes_view(self.lo, self.hi)[0]
        v = np.ndarray(self.shape, self.dtype, buffer=b, offset=self.z0,
                       strides=self.stridev)
        if not b.flags.writeable:
            v.flags.writeable = False
        if self._type is not np.ndarray:
            v = v.view(self._type)
        return v

    def __repr__(self):
        return '<ArrayRef root=%s lo=%d hi=%d z0=%d shape=%r stridev=%r dtype=%s>' % (
            type(self.root).__name__, self.lo, self.hi, self.z0, self.shape,
            self.stridev, self.dtype)
