"""Key paths: how the command line and ``wendelin_cy.io`` name an object
below a database root.

A key path is a ``/``-separated list of names, e.g. ``experiments/run1/X``:
each name is an item of a mapping (``PersistentMapping``, ``dict``, an
``OOBTree``, ...), an index into a list, or an attribute of another persistent
object.  A leading or trailing ``/`` is ignored.  A name that is all digits
also finds an integer key (an ``IOBTree``'s).  Names that themselves contain
``/`` cannot be written as key paths.

``walk(root)`` finds every ZBigArray reachable from the root that way (each
once, under the first path found), except the staging area of unfinished
imports (``STAGING_KEY``, see ``wendelin_cy.io``).
"""

from typing import Any, Iterable, Iterator

from wendelin_cy.errors import WendelinError

__all__ = ['KeyPathError', 'NotAnArray', 'STAGING_KEY', 'split', 'join',
           'resolve', 'resolve_array', 'parent_for_write', 'walk']

#: Root key under which ``wendelin_cy.io`` keeps the arrays of imports that
#: have not finished (one entry per target key path).
STAGING_KEY = '__wendelin_cy_imports__'


class KeyPathError(WendelinError, KeyError):
    """A key path that names nothing, or that cannot be written."""

    def __str__(self):          # KeyError would show the repr of its argument
        return str(self.args[0]) if self.args else ''


class NotAnArray(WendelinError, TypeError):
    """A key path that names something other than a ZBigArray."""


def split(key: str) -> list[str]:
    """'a/b/c' -> ['a', 'b', 'c']; KeyPathError for an empty path or name."""
    if not isinstance(key, str):
        raise TypeError('a key path must be a str, not %s' % type(key).__name__)
    s = key.strip('/')
    if not s:
        raise KeyPathError('empty key path %r: name an object below the root, '
                           'e.g. "A" or "group/A"' % (key,))
    parts = s.split('/')
    if '' in parts:
        raise KeyPathError('key path %r has an empty name (a double "/")' % (key,))
    return parts


def join(parts: Iterable[Any]) -> str:
    return '/'.join(str(p) for p in parts)


def _is_mapping(obj):
    return callable(getattr(obj, 'items', None)) and callable(getattr(obj, 'get', None))


def _is_sequence(obj):
    from persistent.list import PersistentList
    return isinstance(obj, (list, tuple, PersistentList))


def _is_array(obj):
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    return isinstance(obj, ZBigArray)


_MISSING = object()


def _child(obj, name):
    """obj's child called `name`, or _MISSING."""
    if _is_array(obj):
        return _MISSING
    if _is_mapping(obj):
        for k in _candidates(name):
            try:
                v = obj.get(k, _MISSING)
            except TypeError:           # a BTree with keys of another type
                continue
            if v is not _MISSING:
                return v
        return _MISSING
    if _is_sequence(obj):
        try:
            return obj[int(name)]
        except (ValueError, IndexError):
            return _MISSING
    state = _attrs(obj)
    if state is not None:
        return state.get(name, _MISSING)
    return _MISSING


def _candidates(name):
    yield name
    if name.isdigit():
        yield int(name)


def _attrs(obj):
    """The attributes of a persistent object (or of a broken one: an object
    whose class cannot be imported here) as a dict, or None."""
    from persistent import Persistent
    if not isinstance(obj, Persistent) and not hasattr(obj, '__Broken_state__'):
        return None
    state = getattr(obj, '__Broken_state__', None)
    if isinstance(state, dict):
        return state
    try:
        d = vars(obj)
    except TypeError:
        return None
    return {k: v for k, v in d.items()
            if not k.startswith('_p_') and not k.startswith('_v_')}


def resolve(root: Any, key: str) -> Any:
    """The object at key path `key` below `root`; KeyPathError if missing."""
    obj = root
    parts = split(key)
    for i, name in enumerate(parts):
        nxt = _child(obj, name)
        if nxt is _MISSING:
            where = join(parts[:i]) or 'the root'
            raise KeyPathError('no key %r in %s (key path %r)'
                               % (name, where, join(parts)))
        obj = nxt
    return obj


def resolve_array(root: Any, key: str) -> Any:
    """The ZBigArray at `key`; KeyPathError if missing, NotAnArray if it is
    something else."""
    obj = resolve(root, key)
    if not _is_array(obj):
        raise NotAnArray('%r is not a ZBigArray but a %s'
                         % (join(split(key)), _kind(obj)))
    return obj


def _kind(obj):
    t = type(obj)
    return '%s.%s' % (t.__module__, t.__qualname__) if t.__module__ != 'builtins' else t.__name__


def parent_for_write(root, key, create=False):
    """-> (container, name) where `key` is to be stored: its parent must be a
    mapping.  create=True makes missing parents (``PersistentMapping``s), as
    ``mkdir -p`` does."""
    parts = split(key)
    obj = root
    for i, name in enumerate(parts[:-1]):
        nxt = _child(obj, name)
        if nxt is _MISSING:
            if not create or not _is_mapping(obj):
                raise KeyPathError('no key %r in %s (key path %r)'
                                   % (name, join(parts[:i]) or 'the root', key))
            from persistent.mapping import PersistentMapping
            nxt = obj[name] = PersistentMapping()
        obj = nxt
    if not _is_mapping(obj) or _is_array(obj):
        raise KeyPathError('cannot store %r: %s is a %s, not a mapping'
                           % (key, join(parts[:-1]) or 'the root', _kind(obj)))
    return obj, parts[-1]


def walk(root: Any, skip_staging: bool = True) -> Iterator[tuple[str, Any]]:
    """Yield (key path, ZBigArray) for every ZBigArray reachable from `root`,
    depth first, in the order of the containers (each object once)."""
    seen = set()
    stack: list[tuple[tuple[Any, ...], Any]] = [((), root)]
    from wendelin_cy.bigfile.file_zodb import ZBigFile
    while stack:
        path, obj = stack.pop()
        ident = getattr(obj, '_p_oid', None) or id(obj)
        if ident in seen:
            continue
        seen.add(ident)
        if _is_array(obj):
            yield join(path), obj
            continue
        if isinstance(obj, ZBigFile):
            continue
        children = list(_children(obj))
        for name, child in reversed(children):
            if not path and skip_staging and name == STAGING_KEY:
                continue
            if _walkable(child):
                stack.append((path + (name,), child))


def _walkable(obj):
    if isinstance(obj, (str, bytes, int, float, complex, bool, type(None))):
        return False
    import numpy as np
    return not isinstance(obj, np.ndarray)


def _children(obj):
    if _is_mapping(obj):
        try:
            items = list(obj.items())
        except TypeError:
            return
        for k, v in items:
            yield str(k), v
    elif _is_sequence(obj):
        for i, v in enumerate(obj):
            yield str(i), v
    else:
        state = _attrs(obj)
        if state:
            for k, v in state.items():
                yield str(k), v
