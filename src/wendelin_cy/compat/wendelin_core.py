"""wendelin.core's persistent classes, on wendelin_cy: what a database
written by wendelin.core gives when opened with wendelin_cy (``dbopen``, or
a database given ``wendelin_cy.compat.install``).

``ZBigArray`` here is wendelin_cy's ZBigArray (``A[...]`` is a numpy array
mapped by wendelin_cy's pager, ``append``, ``resize``, views to joblib...)
whose record is wendelin.core's: class ``wendelin.bigarray.array_zodb.ZBigArray``,
state ``({'_dtype': numpy.dtype, '_shape': tuple, '_order': 'C' or 'F',
'_stridev': tuple}, {'zfile': ZBigFile})`` (a record without ``_order``, as
early versions wrote, is C order).  Its ``zfile`` is a ZBigFile in
wendelin.core's format (``wendelin_cy.bigfile._wcore``: ZBlk0 / ZBlk1
blocks only).  Writes keep the database readable by wendelin.core.

``ZBigArray(shape, dtype, order='C', blksize=2 MiB)`` made here is a new
array in wendelin.core's format (for a database that wendelin.core keeps
using); plain ``wendelin_cy.bigarray.array_zodb.ZBigArray`` is wendelin_cy's
own.  (wendelin.core without WCFS reads only 2 MiB blocks.)
"""

import numpy as np
from persistent import Persistent

from wendelin_cy.bigarray.array_zodb import ZBigArray as _ZBigArray
from wendelin_cy.bigfile._wcore import (ARRAY_MODULE, WendelinCoreImported, ZBigFile,
                                        ZBlk0, ZBlk1, ZData, _ensure_names,
                                        names_installed, register)
from wendelin_cy.bigfile.file_zodb import DEFAULT_BLKSIZE

__all__ = ['ZBigArray', 'ZBigFile', 'ZBlk0', 'ZBlk1', 'ZData',
           'WendelinCoreImported', 'names_installed']


def _stridev(shape, itemsize, order):
    """Strides in bytes of the array (as wendelin.core records them)."""
    n = len(shape)
    out = []
    for i in range(n):
        k = 1
        for d in (shape[i + 1:] if order == 'C' else shape[:i]):
            k *= d
        out.append(k * itemsize)
    return tuple(out)


class ZBigArray(_ZBigArray):
    """A wendelin_cy ZBigArray stored in wendelin.core's format."""

    __module__ = ARRAY_MODULE

    def __init__(self, shape, dtype, order='C', blksize=DEFAULT_BLKSIZE):
        _ensure_names()
        Persistent.__init__(self)
        self._init_geometry(shape, dtype, order)
        if self._dtype.hasobject:
            raise TypeError('ZBigArray cannot persist object dtype %s' % (self._dtype,))
        self.zfile = ZBigFile(blksize)

    def __getstate__(self):
        _ensure_names()
        shape = tuple(int(x) for x in self._shape)
        d = {
            '_dtype': self._dtype,
            '_shape': shape,
            '_order': self._order,
            '_stridev': _stridev(shape, self._dtype.itemsize, self._order),
        }
        return (d, {'zfile': self.zfile})

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError('ZBigArray (wendelin.core format): corrupt state of type %s'
                            % type(state).__name__)
        attrs, slots = state
        attrs = dict(attrs or {})
        attrs.update(slots or {})
        try:
            dtype = np.dtype(attrs['_dtype'])
            shape = tuple(int(x) for x in attrs['_shape'])
            zfile = attrs['zfile']
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError('ZBigArray (wendelin.core format): corrupt state (%s)' % (e,))
        order = attrs.get('_order', 'C')
        if order not in ('C', 'F') or dtype.hasobject or min(shape, default=0) < 0:
            raise ValueError('ZBigArray (wendelin.core format): corrupt state '
                             '(order %r, dtype %s, shape %r)' % (order, dtype, shape))
        d = self.__dict__
        keep = {k: v for k, v in d.items() if k.startswith('_v_')}
        d.clear()
        d.update(_shape=shape, _dtype=dtype, _order=order, zfile=zfile)
        d.update(keep)


register(ARRAY_MODULE, ZBigArray=ZBigArray)
