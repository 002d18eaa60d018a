"""Views of ZBigArrays go to joblib's process workers by reference.

joblib's process backends (loky: scikit-learn's ``n_jobs``, and
multiprocessing) pickle task arguments with their own reducers: an ndarray
bigger than ``max_nbytes`` (1 MB by default) is dumped into a temp folder
and memory-mapped by the workers (``ArrayMemmapForwardReducer``), others are
pickled whole.  For a view of a ZBigArray both mean copying data that the
workers can open themselves.  ``install`` makes that reducer ask
``_viewref._view_reduce`` first: a view whose database other processes can
open, with no uncommitted changes under it, goes as an ``ArrayRef`` (a few
hundred bytes; the worker unpickles the read-only view at the sender's
snapshot); everything else, every ndarray that is not such a view
included, goes on to joblib's own code unchanged.  Plain ``pickle`` is not
touched.

The reducer's shape is checked (joblib's
``joblib._memmapping_reducer.ArrayMemmapForwardReducer`` with a
``__call__(self, a)``): if the installed joblib has another, views are sent
as joblib sends any array (correct, slower) and one warning says so.
joblib is patched when it is imported (an import hook), or at once if it
already is; importing wendelin_cy does not import joblib.
"""

import importlib.abc
import importlib.machinery
import logging
import sys
import threading

_log = logging.getLogger(__name__)

__all__ = ['install', 'installed']

_MOD = 'joblib._memmapping_reducer'
_lock = threading.Lock()
_state = {'patched': False, 'hook': None}


def installed():
    """True when joblib's array reducer sends views by reference."""
    return _state['patched']


def _patch(mod):
    with _lock:
        if _state['patched']:
            return
        cls = getattr(mod, 'ArrayMemmapForwardReducer', None)
        call = getattr(cls, '__call__', None) if isinstance(cls, type) else None
        if getattr(call, '_wcy', False):
            _state['patched'] = True
            return
        if call is None:
            _log.warning('this joblib (%s) has no ArrayMemmapForwardReducer.'
                         '__call__; views of ZBigArrays go to its process workers '
                         'as data', getattr(sys.modules.get('joblib'), '__version__', '?'))
            return
        from wendelin_cy.bigarray._viewref import _view_reduce, _vma_of

        def __call__(self, a):
            # only an ndarray whose .base chain ends at a pager mapping can be
            # a view of ZBigArray: others skip _view_reduce entirely
            if _vma_of(a) is not None:
                r = _view_reduce(a)
                if r is not None:
                    return r
            return call(self, a)

        __call__._wcy = True
        __call__.__wrapped__ = call
        cls.__call__ = __call__
        _state['patched'] = True


class _Finder(importlib.abc.MetaPathFinder):
    """Patches joblib's reducer module right after it is imported."""

    def find_spec(self, name, path=None, target=None):
        if name != _MOD:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _remove_hook()
            try:
                _patch(module)
            except Exception as e:      # never break importing joblib
                _log.warning('could not hook joblib (%s: %s); views go to its '
                             'workers as data', type(e).__name__, e)
        spec.loader = _Loader(loader, exec_then_patch)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, exec_module):
        self._loader = loader
        self.exec_module = exec_module

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _remove_hook():
    with _lock:
        hook = _state['hook']
        if hook is not None:
            try:
                sys.meta_path.remove(hook)
            except ValueError:
                pass
            _state['hook'] = None


def install():
    """Make joblib's process workers receive ZBigArray views by reference
    (at once if joblib is imported, else when it is).  Idempotent."""
    mod = sys.modules.get(_MOD)
    if mod is not None:
        _patch(mod)
        return
    with _lock:
        if _state['patched'] or _state['hook'] is not None:
            return
        _state['hook'] = _Finder()
        sys.meta_path.insert(0, _state['hook'])
