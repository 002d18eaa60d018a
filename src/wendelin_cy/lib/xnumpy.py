"""``wendelin.lib.xnumpy`` names: extra ndarray views."""
import numpy as np

__all__ = ['structured']

try:        # numpy's own holder of an array interface (as wendelin.core: the
            # view's .base, or its .base's .base for a subclass, is one)
    from numpy.lib.stride_tricks import DummyArray as _DummyArray  # type: ignore[attr-defined]
except ImportError:                                     # numpy >= 2
    try:
        from numpy.lib._stride_tricks_impl import DummyArray as _DummyArray
    except ImportError:
        class _DummyArray:  # type: ignore[no-redef]
            def __init__(self, interface, base=None):
                self.__array_interface__ = interface
                self.base = base


def structured(arr, dtype):
    """View `arr` with its minor axis (the one of smallest absolute stride)
    folded into one element of structured `dtype`, whose itemsize must be
    that axis's size in bytes; the minor axis must be contiguous.

    The result shares memory with `arr`, has `arr`'s ndim-1 dimensions and
    keeps `arr`'s ndarray subclass."""
    dtype = np.dtype(dtype)
    if arr.ndim == 0:
        raise ValueError('structured: 0-dimensional array')
    axis = int(np.argmin(np.abs(arr.strides)))
    stride = arr.strides[axis]
    item = arr.dtype.itemsize
    if stride < 0:
        raise ValueError('minor-axis is not C-contiguous: stride (%d) < 0' % stride)
    if stride != item:
        raise ValueError('minor-axis is not C-contiguous: stride (%d) != itemsize (%d)'
                         % (stride, item))
    size = arr.shape[axis] * item
    if dtype.itemsize != size:
        raise ValueError('dtype.itemsize (%d) != sizeof(minor-axis) (%d)'
                         % (dtype.itemsize, size))
    shape = arr.shape[:axis] + arr.shape[axis + 1:]
    strides = arr.strides[:axis] + arr.strides[axis + 1:]
    # shape, strides and dtype change together: through an array interface
    # of the same memory whose base is `arr` (a .view(dtype) could refuse)
    iface = dict(arr.__array_interface__)
    iface.update(shape=shape, strides=strides, typestr='|V%d' % size,
                 descr=[('', '|V%d' % size)])

    out = np.asarray(_DummyArray(iface, base=arr))
    out.dtype = dtype
    if type(out) is not type(arr):
        out = out.view(type=type(arr))
    return out
