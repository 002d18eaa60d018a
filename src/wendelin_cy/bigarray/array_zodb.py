"""ZBigArray: a BigArray persisted in ZODB.

The persistent state is the geometry (shape, dtype, order) and a ZBigFile that
holds the bytes.  The file handle is opened on first use and kept in the
``_v_fileh`` attribute; while it is open the object is never turned into a
ghost by the cache (``_p_deactivate`` does nothing), and when another
transaction changes the geometry (e.g. an append from another process) the
invalidation reloads the state but keeps the handle, so views stay valid and
only the changed blocks are reloaded (see ``bigfile.file_zodb``).

The dtype is stored portably: ``dtype.str`` for plain dtypes, a description
of names / formats / offsets / itemsize for structured ones (recursively), so
the record does not depend on how numpy pickles its dtype objects.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike
from persistent import Persistent

from wendelin_cy.bigarray import BigArray
from wendelin_cy.bigfile.file_zodb import ZBigFile, DEFAULT_BLKSIZE
from wendelin_cy.bigarray._viewref import share
from wendelin_cy.bigarray import _joblib

__all__ = ['ZBigArray']

_joblib.install()       # views go to joblib's process workers by reference


def __getattr__(name):
    if name == 'ZBigArrayView':         # gone in 0.1.0: views are ndarrays
        from wendelin_cy.bigarray import _viewref
        return _viewref.__getattr__(name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


def _dtype_state(dt):
    if dt.fields is None:
        if dt.subdtype is not None:
            base, shape = dt.subdtype
            return {'subdtype': _dtype_state(base), 'shape': list(shape)}
        if dt.hasobject:
            raise TypeError('ZBigArray cannot persist object dtype %s' % (dt,))
        return dt.str
    names = list(dt.names)
    return {
        'names': names,
        'formats': [_dtype_state(dt.fields[n][0]) for n in names],
        'offsets': [dt.fields[n][1] for n in names],
        'itemsize': dt.itemsize,
    }


def _dtype_from_state(s):
    if isinstance(s, str):
        return np.dtype(s)
    if 'subdtype' in s:
        return np.dtype((_dtype_from_state(s['subdtype']), tuple(s['shape'])))
    return np.dtype({
        'names': list(s['names']),
        'formats': [_dtype_from_state(f) for f in s['formats']],
        'offsets': list(s['offsets']),
        'itemsize': s['itemsize'],
    })


def _identity(x):
    return x


# Several threads may touch one ZBigArray first at once (dask workers, a
# thread pool): its activation from the database and the opening of its file
# handle happen once, under this lock, and nobody sees the state half set.
_LOCK = threading.RLock()


class ZBigArray(BigArray, Persistent):
    """ZBigArray(shape, dtype, order='C', blksize=2 MiB, zblk_fmt=None)

    A BigArray whose data and geometry live in ZODB: store it in a persistent
    container (``root['A'] = ZBigArray(...)``) and ``transaction.commit()``.

    Parameters
    ----------
    shape : int or tuple of int
        The shape; ``append`` and ``resize`` change it later.
    dtype : numpy dtype-like
        Any fixed-size dtype, structured ones included (object dtypes are
        refused).
    order : {'C', 'F'}
        Memory order of the data, as numpy's.
    blksize : int
        Bytes per block (default 2 MiB), the unit of loading, storing and
        of the RAM budget.
    zblk_fmt : {None, 'auto', 'ZBlk0', 'ZBlk1', 'blob'}
        How blocks are stored; None: ``$WENDELIN_CY_ZBLK_FMT``, else 'auto'
        (see ``wendelin_cy.bigfile.file_zodb``).

    Notes
    -----
    ``A[...]`` is a ``numpy.ndarray`` view of the data (no copy): the pager
    loads the blocks that numpy touches and writes back the changed ones at
    ``transaction.commit()``; ``transaction.abort()`` drops the changes.
    """

    _STATE_VERSION = 1

    def __init__(self, shape: int | tuple[int, ...], dtype: DTypeLike, order: str = 'C',
                 blksize: int = DEFAULT_BLKSIZE, zblk_fmt: str | None = None) -> None:
        Persistent.__init__(self)
        self._init_geometry(shape, dtype, order)
        _dtype_state(self._dtype)          # refuse what cannot be stored
        self.zfile = ZBigFile(blksize, zblk_fmt=zblk_fmt)

    # -- file handle

    def _ensure_state(self):
        """Activate a ghost once, whichever threads ask at the same time.  While
        one thread loads the state the object is no ghost but its attributes
        are not there yet: wait for them.  (Called through the class:
        looking up a method on a ghost instance would activate it first,
        outside the lock.)"""
        d = self.__dict__                           # (does not unghostify)
        if 'zfile' in d:
            return
        with _LOCK:
            self._p_activate()
        t0 = time.monotonic()
        while 'zfile' not in d:     # being loaded by another thread, not through us
            if self._p_changed is None:             # (its load failed: a ghost again)
                with _LOCK:
                    self._p_activate()
                continue
            if time.monotonic() - t0 > 60:
                raise RuntimeError('%r: its state did not arrive' % (self,))
            time.sleep(0.0002)

    @property
    def _fileh(self):
        d = self.__dict__          # does not unghostify
        fh = d.get('_v_fileh')
        if fh is None or fh.closed:
            with _LOCK:
                self._p_activate()
                fh = d.get('_v_fileh')
                if fh is None or fh.closed:
                    # address space for the array and for it to double (the
                    # pager's default reservation is 64 GiB)
                    nbytes = self.nbytes
                    reserve = 4 * nbytes if nbytes > (16 << 30) else None
                    fh = self.zfile.fileh_open(reserve=reserve)
                    self.__dict__['_v_fileh'] = fh
                    io = self.zfile.__dict__.get('_v_io')
                    if io is not None and self._p_oid is not None:
                        io.array = '<ZBigArray oid=%s>' % self._p_oid.hex()   # (errors)
        else:
            fh.join_current()
        return fh

    @property
    def shape(self) -> tuple[int, ...]:
        ZBigArray._ensure_state(self)
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        ZBigArray._ensure_state(self)
        return self._dtype

    def __getitem__(self, idx: Any) -> Any:
        ZBigArray._ensure_state(self)
        return BigArray.__getitem__(self, idx)

    def __setitem__(self, idx: Any, value: ArrayLike) -> None:
        ZBigArray._ensure_state(self)
        BigArray.__setitem__(self, idx, value)

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        ZBigArray._ensure_state(self)
        return BigArray.__array__(self, dtype, copy)

    @_fileh.setter                  # type: ignore[no-redef, attr-defined]
    def _fileh(self, fh):
        self.__dict__['_v_fileh'] = fh

    def _p_deactivate(self):
        fh = self.__dict__.get('_v_fileh')
        if fh is not None and not fh.closed:
            return              # mapped: stay alive
        super()._p_deactivate()

    def _p_invalidate(self):
        # the state changed elsewhere: reload it on next access, keep the handle
        keep = {k: v for k, v in self.__dict__.items() if k.startswith('_v_')}
        super()._p_invalidate()
        self.__dict__.update(keep)

    # -- persistent state

    def __getstate__(self):
        state = {
            'version': self._STATE_VERSION,
            'shape': list(self._shape),
            'dtype': _dtype_state(self._dtype),
            'order': self.__dict__.get('_order'),
            'zfile': self.zfile,
        }
        if state['order'] is None:  # (no order: read back as 'C', as wendelin.core does)
            del state['order']
        return state

    def __setstate__(self, state):
        d = self.__dict__
        keep = {k: v for k, v in d.items() if k.startswith('_v_')}
        d.clear()
        if state.get('version') != self._STATE_VERSION:
            raise ValueError('ZBigArray: unsupported state version %r'
                             % (state.get('version'),))
        d['_shape'] = tuple(int(x) for x in state['shape'])
        d['_dtype'] = _dtype_from_state(state['dtype'])
        d['_order'] = state.get('order', 'C')
        d['zfile'] = state['zfile']
        d.update(keep)

    def __reduce__(self):
        """Pickling (for joblib, multiprocessing, ...) a ZBigArray stored in a
        database yields a small ``wendelin_cy.ml.ArrayRef`` (database URI, oid,
        snapshot), not a copy of the data: the receiver reopens the same
        snapshot lazily and reads it as a read-only array.  ZODB itself stores
        the array through __getstate__ and is not affected.  An array not
        stored yet pickles whole."""
        if self._p_jar is not None and self._p_oid is not None:
            return (_identity, (share(self),))
        return super().__reduce__()

    def __repr__(self):
        if self._p_state < 0:       # ghost: do not load for a repr
            return '<%s oid=%s (ghost)>' % (
                type(self).__name__, self._p_oid.hex() if self._p_oid else None)
        return BigArray.__repr__(self)
