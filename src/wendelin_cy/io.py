"""Data in and out of ZBigArrays: ``.npy`` files, HDF5 datasets, zarr arrays.

Import (a new ZBigArray at a key path below a database root)::

    from_npy('x.npy', root, 'X')
    from_hdf5('f.h5', root, 'group/X', dataset='/path/to/dataset')
    from_zarr('store.zarr', root, 'X', path='a/b')

Export (any BigArray, e.g. a ZBigArray, to a new file or dataset)::

    to_npy(root['X'], 'x.npy')
    to_hdf5(root['X'], 'f.h5', dataset='/X')
    to_zarr(root['X'], 'store.zarr', path='X')

``import_from(spec, root, key)`` and ``export_to(A, spec)`` take the command
line's spelling of a source or destination: ``file.npy``, ``file.h5:/dataset``
(also ``.hdf5``, ``.hdf``, ``.he5``) or ``store.zarr[/path/in/store]``.

h5py and zarr are optional: ``pip install 'wendelin_cy[io]'``; without them the
HDF5 and zarr functions raise ``MissingExtra`` (an ImportError) saying so.

Memory
------
Data moves in boxes of at most ``limit`` bytes (default: an eighth of the RAM
budget, between one block and 64 MiB), each a contiguous run of the array's
memory order, so the process stays within the RAM budget plus about two boxes
whatever the size of the data.  A ``.npy`` file is read and written with plain
reads and writes (no mmap: mapped file pages would count against the process's
memory).  HDF5 and zarr read and write whole chunks: their chunks must be
small beside the budget.

Import: atomic, or resumable
----------------------------
An import builds the new array in a staging area of the root,
``root['__wendelin_cy_imports__'][key]`` (``keypath.STAGING_KEY``), together with
a description of the source and the number of bytes (in memory order) already
committed.  It commits every ``commit_every`` bytes (default: a quarter of the
RAM budget, at most 256 MiB).  The final commit stores the array at ``key``
(making missing parent mappings) and removes the staging entry, in one
transaction.  So at any moment the database is either as before the import
(plus, at most, the staging entry) or has the complete array at ``key``; the
key itself is never seen half written.

An import that was interrupted (Ctrl-C, kill, a crash, a lost storage) leaves
its staging entry.  ``resume=True`` continues it from the last commit, after
checking that the source is the same (same kind, name, shape, dtype and
order; for files also the same size and modification time).  ``restart=True``
drops it and starts again.  With neither, an import to a key that has a
staging entry is refused (``PartialImport``), as is one to a key that exists
(``DestinationExists``) unless ``overwrite=True`` (the old array is replaced
in the final commit).  ``partial_imports(root)`` lists the staging entries;
``discard_partial(root, key)`` removes one.

An import commits through the root's connection's transaction manager: do
not leave other changes pending on that connection while importing.

Export writes to a temporary name beside the destination (``.npy``: a file;
HDF5: a dataset in the same group; a zarr store root: a directory) and renames
it at the end, so an interrupted export leaves no half-written destination
(a zarr array inside a store's group is written in place).
"""

import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from wendelin_cy import keypath
from wendelin_cy.errors import WendelinError

if TYPE_CHECKING:
    from wendelin_cy.bigarray import BigArray
    from wendelin_cy.bigarray.array_zodb import ZBigArray

__all__ = ['from_npy', 'from_hdf5', 'from_zarr', 'to_npy', 'to_hdf5', 'to_zarr',
           'import_from', 'export_to', 'parse_spec', 'partial_imports',
           'discard_partial', 'MissingExtra', 'UnsupportedDtype', 'SourceError',
           'DestinationExists', 'PartialImport']

MAX_BOX = 64 << 20              # bytes: the largest box by default
MAX_COMMIT = 256 << 20          # bytes: the largest default commit
_TMP = '.wendelin_cy-tmp'


# ~~~ errors

class MissingExtra(WendelinError, ImportError):
    """An optional package (h5py, zarr) is needed and missing."""


class UnsupportedDtype(WendelinError, TypeError):
    """A dtype that the source, the destination or a ZBigArray cannot hold."""


class SourceError(WendelinError, ValueError):
    """A source that is missing, not of the format named, or damaged."""


class DestinationExists(WendelinError, FileExistsError):
    """The destination (a key, a file, a dataset) exists and overwrite is off."""


class PartialImport(WendelinError, ValueError):
    """An unfinished import to the same key is in the way (or does not match
    the source given to resume it)."""


def _require(name):
    try:
        return __import__(name)
    except ImportError as e:
        raise MissingExtra('%s is needed for this format and is not installed: '
                           "pip install 'wendelin_cy[io]'  (%s)" % (name, e)) from None


def _check_holdable(dt, what):
    if dt.hasobject:
        raise UnsupportedDtype('%s has dtype %s (Python objects, or variable-length '
                               'strings): a ZBigArray holds fixed-size items only'
                               % (what, dt))
    from wendelin_cy.bigarray import _check_dtype
    try:
        _check_dtype(dt)
    except TypeError as e:
        raise UnsupportedDtype('%s: %s' % (what, e)) from None


def _dtype_key(dt):
    return str(np.lib.format.dtype_to_descr(dt))


# ~~~ boxes: contiguous runs of the memory order

def _major_to_minor(ndim, order):
    return list(range(ndim)) if order == 'C' else list(range(ndim - 1, -1, -1))


def boxes(shape, order, itemsize, limit, align=1):
    """Yield (index tuple of slices, byte offset, nbytes) covering an array of
    that geometry in memory order, each box contiguous in memory and at most
    `limit` bytes (one element at least).  Along the major axis, boxes are a
    multiple of `align` long when that fits."""
    nd = len(shape)
    if nd == 0:
        yield (), 0, itemsize
        return
    axes = _major_to_minor(nd, order)
    unit = [0] * nd             # bytes per step of axes[k]
    acc = itemsize
    for k in range(nd - 1, -1, -1):
        unit[k] = acc
        acc *= shape[axes[k]]
    if acc == 0:
        return

    def rec(k, idx, off):
        ax, n, u = axes[k], shape[axes[k]], unit[k]
        if u <= limit or k == nd - 1:
            rows = max(1, limit // u)
            if k == 0 and align > 1 and rows >= align:
                rows -= rows % align
            for i in range(0, n, rows):
                j = min(n, i + rows)
                idx[ax] = slice(i, j)
                yield tuple(idx), off + i * u, (j - i) * u
        else:
            for i in range(n):
                idx[ax] = slice(i, i + 1)
                yield from rec(k + 1, idx, off + i * u)
        idx[ax] = slice(None)

    yield from rec(0, [slice(None)] * nd, 0)


def _box_shape(box, shape):
    return tuple(len(range(*s.indices(n))) for s, n in zip(box, shape))


def _budget():
    from wendelin_cy.ram import get_ram_budget
    try:
        return get_ram_budget() or 0
    except Exception:
        return 0


def _default_limit(blksize):
    b = _budget()
    if b <= 0:
        return MAX_BOX
    return max(blksize, min(MAX_BOX, b // 8 // blksize * blksize))


def _default_commit(limit):
    b = _budget()
    if b <= 0:
        return MAX_COMMIT
    return max(limit, min(MAX_COMMIT, b // 4))


# ~~~ progress

def progress_bar(enabled: bool, total: int, desc: str, initial: int = 0,
                 unit: str = 'B') -> Any:
    """A tqdm bar on stderr (a do-nothing one when not enabled)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:             # tqdm is a dependency; be lenient anyway
        return _NoBar()
    scale = unit == 'B'
    return tqdm(total=total, initial=initial, desc=desc, unit=unit,
                unit_scale=scale, unit_divisor=1024 if scale else 1000,
                file=sys.stderr, dynamic_ncols=True, leave=False)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


# ~~~ specs: the command line's names of sources and destinations

_H5_RE = re.compile(r'^(.*?\.(?:h5|hdf5|hdf|he5))(?::(.*))?$', re.IGNORECASE)
_H5_MAGIC = b'\x89HDF\r\n\x1a\n'


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """'x.npy' -> ('npy', 'x.npy', None); 'f.h5:/d' -> ('hdf5', 'f.h5', '/d');
    's.zarr/a/b' -> ('zarr', 's.zarr', 'a/b').  Without a known extension,
    an existing file is recognised by its magic bytes (and then 'file:dataset'
    is split at the last ':'), a directory holding zarr metadata is a zarr
    store.  SourceError if none of these."""
    spec = os.fspath(spec)
    if spec.lower().endswith('.npy'):
        return 'npy', spec, None
    m = _H5_RE.match(spec)
    if m:
        return 'hdf5', m.group(1), (m.group(2) or None)
    parts = spec.rstrip('/').split('/')
    for i, p in enumerate(parts):
        if p.lower().endswith('.zarr'):
            return 'zarr', '/'.join(parts[:i + 1]) or '/', '/'.join(parts[i + 1:]) or None
    if os.path.isdir(spec) and any(os.path.exists(os.path.join(spec, n))
                                   for n in ('zarr.json', '.zarray', '.zgroup')):
        return 'zarr', spec, None
    path, _, ds = spec.rpartition(':')
    for cand, sub in ((spec, None), (path, ds or None)):
        if cand and os.path.isfile(cand):
            with open(cand, 'rb') as f:
                head = f.read(8)
            if head.startswith(b'\x93NUMPY') and sub is None:
                return 'npy', cand, None
            if head == _H5_MAGIC:
                return 'hdf5', cand, sub
    raise SourceError('cannot tell the format of %r: name a .npy file, an HDF5 '
                      'dataset as file.h5:/path/to/dataset, or a zarr array as '
                      'store.zarr or store.zarr/path' % (spec,))


# ~~~ sources

class _Source:
    kind: str | None = None
    align = 1

    def fingerprint(self):
        return {'kind': self.kind, 'name': self.name, 'shape': list(self.shape),
                'dtype': _dtype_key(self.dtype), 'order': self.order}

    def _file_fingerprint(self, path):
        st = os.stat(path)
        fp = _Source.fingerprint(self)
        fp.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        return fp

    def close(self):
        pass


def _read_header_v3(f, version):
    try:
        from numpy.lib._format_impl import _read_array_header
    except ImportError:
        from numpy.lib.format import _read_array_header
    return _read_array_header(f, version)


class _NpySource(_Source):
    kind = 'npy'

    def __init__(self, path):
        path = os.fspath(path)
        self.name = os.path.abspath(path)
        try:
            self.f = open(path, 'rb')
        except OSError as e:
            raise SourceError('cannot open %s: %s' % (path, e.strerror or e)) from None
        try:
            fmt = np.lib.format
            try:
                version = fmt.read_magic(self.f)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(self.f)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(self.f)
                else:                               # 3.0: a 2.0 header in utf-8
                    shape, fortran, dtype = _read_header_v3(self.f, version)
            except (ValueError, OSError, SyntaxError) as e:
                raise SourceError('%s is not a readable .npy file: %s' % (path, e)) from None
            self.shape, self.dtype = tuple(shape), dtype
            self.order = 'F' if fortran and len(shape) > 1 else 'C'
            self.data_offset = self.f.tell()
            _check_holdable(dtype, path)
            need = self.data_offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
            size = os.fstat(self.f.fileno()).st_size
            if size < need:
                raise SourceError('%s is truncated: %d bytes, its header needs %d'
                                  % (path, size, need))
        except BaseException:
            self.f.close()
            raise

    def fingerprint(self):
        return self._file_fingerprint(self.name)

    def read(self, box, off, nbytes):
        buf = np.empty(nbytes, np.uint8)
        self.f.seek(self.data_offset + off)
        mv, got = memoryview(buf), 0
        while got < nbytes:
            n = self.f.readinto(mv[got:])
            if not n:
                raise SourceError('%s: unexpected end of file' % (self.name,))
            got += n
        return np.ndarray(_box_shape(box, self.shape), self.dtype, buffer=buf,
                          order=self.order)

    def close(self):
        self.f.close()


class _H5Source(_Source):
    kind = 'hdf5'

    def __init__(self, path, dataset=None):
        h5py = _require('h5py')
        path = os.fspath(path)
        try:
            self.f = h5py.File(path, 'r')
        except (OSError, ValueError) as e:
            raise SourceError('cannot open HDF5 file %s: %s' % (path, e)) from None
        try:
            if dataset is None:
                names = []
                self.f.visititems(lambda n, o: names.append(n)
                                  if isinstance(o, h5py.Dataset) else None)
                if len(names) != 1:
                    raise SourceError(
                        '%s holds %s: name one as %s:/path/to/dataset'
                        % (path, '%d datasets (%s)' % (len(names), ', '.join(
                            '/' + n for n in names[:5]) + (', ...' if len(names) > 5 else ''))
                           if names else 'no dataset', path))
                dataset = names[0]
            ds = self.f.get(dataset)
            if ds is None:
                raise SourceError('no dataset %r in %s' % (dataset, path))
            if not isinstance(ds, h5py.Dataset):
                raise SourceError('%s:%s is a %s, not a dataset'
                                  % (path, dataset, type(ds).__name__))
            self.ds = ds
            self.name = '%s:%s' % (os.path.abspath(path), ds.name)
            self.path = path
            self.shape, self.dtype, self.order = tuple(ds.shape), ds.dtype, 'C'
            if ds.shape is None:
                raise SourceError('%s:%s is an empty (null) dataset' % (path, dataset))
            _check_holdable(ds.dtype, '%s:%s' % (path, ds.name))
            if ds.chunks:
                self.align = ds.chunks[0]
        except BaseException:
            self.f.close()
            raise

    def fingerprint(self):
        return self._file_fingerprint(self.path)

    def read(self, box, off, nbytes):
        return np.asarray(self.ds[box] if box else self.ds[()])

    def close(self):
        self.f.close()


class _ZarrSource(_Source):
    kind = 'zarr'

    def __init__(self, store, path=None):
        zarr = _require('zarr')
        store = os.fspath(store)
        if not os.path.exists(store):
            raise SourceError('no zarr store %s' % (store,))
        try:
            z = zarr.open(store, mode='r', path=path or '')
        except Exception as e:
            raise SourceError('cannot open zarr array %s%s: %s'
                              % (store, '/' + path if path else '', e)) from None
        if not isinstance(z, zarr.Array):
            raise SourceError('%s%s is a zarr group, not an array: name one as '
                              'store.zarr/path/to/array (it holds: %s)'
                              % (store, '/' + path if path else '',
                                 ', '.join(sorted(z.array_keys())[:5]) or 'no array'))
        self.z = z
        self.name = os.path.abspath(store) + ('/' + path if path else '')
        self.shape, self.dtype, self.order = tuple(z.shape), np.dtype(z.dtype), 'C'
        _check_holdable(self.dtype, self.name)
        if z.ndim:
            self.align = z.chunks[0]

    def read(self, box, off, nbytes):
        return np.asarray(self.z[box] if box else self.z[()])


def _open_source(kind, path, sub):
    if kind == 'npy':
        return _NpySource(path)
    if kind == 'hdf5':
        return _H5Source(path, sub)
    return _ZarrSource(path, sub)


# ~~~ import

def partial_imports(root: Any) -> dict[str, Any]:
    """{key path: {'array', 'source', 'done', 'nbytes', 'started'}} of the
    imports that have not finished."""
    staging = root.get(keypath.STAGING_KEY) if hasattr(root, 'get') else None
    return dict(staging.items()) if staging is not None else {}


def discard_partial(root: Any, key: str, commit: bool = True) -> bool:
    """Remove the staging entry of an unfinished import to `key` (True if
    there was one)."""
    staging = root.get(keypath.STAGING_KEY)
    k = keypath.join(keypath.split(key))
    if staging is None or k not in staging:
        return False
    del staging[k]
    if not len(staging):
        del root[keypath.STAGING_KEY]
    if commit:
        root._p_jar.transaction_manager.commit()
    return True


def _import(src, root, key, overwrite=False, resume=False, restart=False,
            commit_every=None, limit=None, progress=False, blksize=None,
            zblk_fmt=None, on_commit=None):
    from persistent.mapping import PersistentMapping
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.bigfile.file_zodb import DEFAULT_BLKSIZE
    conn = getattr(root, '_p_jar', None)
    if conn is None:
        raise TypeError('import: root must be a database root (from dbopen), not %r'
                        % (root,))
    tm = conn.transaction_manager
    k = keypath.join(keypath.split(key))
    if keypath.split(key)[0] == keypath.STAGING_KEY:
        raise keypath.KeyPathError('%r is reserved for unfinished imports' % (k,))
    _check_target(root, k, overwrite)
    staging = root.get(keypath.STAGING_KEY)
    rec = staging.get(k) if staging is not None else None
    fp = src.fingerprint()
    if rec is not None and restart:
        discard_partial(root, k, commit=False)
        staging, rec = root.get(keypath.STAGING_KEY), None
    elif rec is not None and not resume:
        raise PartialImport('an unfinished import to %r is in the database (%s of '
                            '%s): resume it (--resume) or drop it (--restart)'
                            % (k, _mib(rec['done']), _mib(rec['nbytes'])))
    elif rec is not None and dict(rec['source']) != fp:
        raise PartialImport('the unfinished import to %r was from another source '
                            '(%s, %s %s): give that source to resume, or --restart'
                            % (k, rec['source'].get('name'), rec['source'].get('dtype'),
                               tuple(rec['source'].get('shape', ()))))
    if rec is None:
        blksize = blksize or DEFAULT_BLKSIZE
        A = ZBigArray(src.shape, src.dtype, order=src.order, blksize=blksize,
                      zblk_fmt=zblk_fmt)
        rec = PersistentMapping({
            'array': A, 'source': fp, 'done': 0, 'nbytes': A.nbytes,
            'limit': int(limit or _default_limit(blksize)), 'align': int(src.align),
            'started': time.time()})
        if staging is None:
            staging = root[keypath.STAGING_KEY] = PersistentMapping()
        staging[k] = rec
        tm.commit()
    A, done = rec['array'], rec['done']
    every = commit_every or _default_commit(rec['limit'])
    bar = progress_bar(progress, A.nbytes, 'import ' + k, initial=done)
    try:
        pending = 0
        for box, off, n in boxes(A.shape, A.order, A.itemsize, rec['limit'],
                                 rec['align']):
            if off + n <= done:
                continue
            A[box] = src.read(box, off, n)
            pending += n
            bar.update(n)
            if pending >= every:
                rec['done'] = off + n
                tm.commit()
                pending = 0
                if on_commit is not None:
                    on_commit(off + n, A.nbytes)
        parent, name = keypath.parent_for_write(root, k, create=True)
        parent[name] = A
        discard_partial(root, k, commit=False)
        tm.commit()
        if on_commit is not None:
            on_commit(A.nbytes, A.nbytes)
    except BaseException:
        tm.abort()
        raise
    finally:
        bar.close()
    return A


def _check_target(root, k, overwrite):
    try:
        obj = keypath.resolve(root, k)
    except keypath.KeyPathError:
        obj = None
    if obj is not None and not overwrite:
        raise DestinationExists('key %r exists in the database: choose another '
                                'key, or replace it (--force, overwrite=True)' % (k,))
    parts = keypath.split(k)
    if len(parts) > 1:
        try:
            parent = keypath.resolve(root, keypath.join(parts[:-1]))
        except keypath.KeyPathError:
            return          # made at the end
        if not keypath._is_mapping(parent) or keypath._is_array(parent):
            raise keypath.KeyPathError('cannot store %r: %s is a %s, not a mapping'
                                       % (k, keypath.join(parts[:-1]),
                                          keypath._kind(parent)))


def _mib(n):
    return '%.1f MiB' % (n / (1 << 20))


_IMPORT_DOC = """

    Returns the new ZBigArray, stored at key path `key` below `root` (see the
    module's documentation for the staging area, `resume`, `restart` and
    `overwrite`).  `commit_every` and `limit` are in bytes (defaults: a
    quarter and an eighth of the RAM budget); `progress=True` shows a tqdm
    bar on stderr; `blksize` and `zblk_fmt` are given to ZBigArray;
    `on_commit(done, total)` is called after each commit.
    """


def import_from(spec: str, root: Any, key: str, **kw: Any) -> 'ZBigArray':
    """Import the source named by `spec` (``x.npy``, ``f.h5:/dataset``,
    ``store.zarr[/path]``)."""
    kind, path, sub = parse_spec(spec)
    src = _open_source(kind, path, sub)
    try:
        return _import(src, root, key, **kw)
    finally:
        src.close()


def from_npy(path: str | os.PathLike, root: Any, key: str, **kw: Any) -> 'ZBigArray':
    """Import the ``.npy`` file at `path` (C or Fortran order, kept)."""
    src = _NpySource(path)
    try:
        return _import(src, root, key, **kw)
    finally:
        src.close()


def from_hdf5(path: str | os.PathLike, root: Any, key: str, dataset: str | None = None,
              **kw: Any) -> 'ZBigArray':
    """Import HDF5 dataset `dataset` of file `path` (None: the file's only
    dataset)."""
    src = _H5Source(path, dataset)
    try:
        return _import(src, root, key, **kw)
    finally:
        src.close()


def from_zarr(store: str | os.PathLike, root: Any, key: str, path: str | None = None,
              **kw: Any) -> 'ZBigArray':
    """Import the zarr array at `path` in the store (a directory) `store`
    (None: the store's root array)."""
    src = _ZarrSource(store, path)
    return _import(src, root, key, **kw)


for _f in (import_from, from_npy, from_hdf5, from_zarr):
    _f.__doc__ += _IMPORT_DOC       # type: ignore[operator]
del _f


# ~~~ export

class _BoxWriter:
    """A file-like object for ``BigArray.tofile(order='K')`` that cuts the
    memory-order bytes it is given into boxes and hands each, as an array,
    to ``sink(box, array)``."""

    def __init__(self, A, sink, bar, limit, align):
        self.shape, self.dtype, self.order = A.shape, A.dtype, A.order
        self.it = boxes(A.shape, A.order, A.itemsize, limit, align)
        self.sink, self.bar = sink, bar
        self._next()

    def _next(self):
        self.box, _, n = next(self.it, (None, 0, 0))
        self.buf = np.empty(n, np.uint8)
        self.fill = 0

    def write(self, data):
        with memoryview(data) as mv:
            src = np.frombuffer(mv.cast('B'), np.uint8)
            pos, total = 0, len(src)
            while pos < total:
                k = min(len(self.buf) - self.fill, total - pos)
                if k <= 0:
                    raise ValueError('export: more data than the array holds')
                self.buf[self.fill:self.fill + k] = src[pos:pos + k]
                self.fill += k
                pos += k
                if self.fill == len(self.buf):
                    arr = np.ndarray(_box_shape(self.box, self.shape), self.dtype,
                                     buffer=self.buf, order=self.order)
                    self.sink(self.box, arr)
                    self.bar.update(len(self.buf))
                    self._next()
            del src
        return total


class _CountingFile:
    def __init__(self, f, bar):
        self.f, self.bar = f, bar

    def write(self, data):
        n = self.f.write(data)
        self.bar.update(n or 0)
        return n


def _check_array(A):
    from wendelin_cy.bigarray import BigArray
    if not isinstance(A, BigArray):
        raise TypeError('export: expected a BigArray (e.g. a ZBigArray), not %s'
                        % type(A).__name__)


def _tmp_beside(path):
    d, b = os.path.split(os.path.abspath(path))
    return os.path.join(d, '.%s%s-%d' % (b, _TMP, os.getpid()))


def _remove(path):
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


def to_npy(A: 'BigArray', path: str | os.PathLike, overwrite: bool = False,
           progress: bool = False) -> None:
    """Write BigArray `A` to a ``.npy`` file (Fortran order kept)."""
    _check_array(A)
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise DestinationExists('%s exists: remove it or replace it (--force, '
                                'overwrite=True)' % (path,))
    fmt = np.lib.format
    header = {'descr': fmt.dtype_to_descr(A.dtype),
              'fortran_order': A.order == 'F' and A.ndim > 1, 'shape': A.shape}
    tmp = _tmp_beside(path)
    bar = progress_bar(progress, A.nbytes, 'export ' + os.path.basename(path))
    try:
        with open(tmp, 'wb') as f:
            try:
                fmt.write_array_header_1_0(f, header)
            except ValueError:                  # header too long for 1.0
                f.seek(0)
                f.truncate()
                fmt.write_array_header_2_0(f, header)
            A.tofile(_CountingFile(f, bar), order='K')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        bar.close()


def _h5_dtype_ok(h5py, dt, where):
    try:
        h5py.h5t.py_create(dt, logical=True)
    except TypeError:
        raise UnsupportedDtype('HDF5 cannot hold dtype %s (%s): export to .npy or '
                               'zarr instead' % (dt, where)) from None


def to_hdf5(A: 'BigArray', path: str | os.PathLike, dataset: str | None = None,
            overwrite: bool = False, progress: bool = False, limit: int | None = None,
            **create_kw: Any) -> None:
    """Write BigArray `A` to dataset `dataset` (default ``/data``) of HDF5
    file `path` (created if missing; other datasets are kept).  Extra keyword
    arguments go to ``h5py.Group.create_dataset`` (chunks, compression, ...)."""
    _check_array(A)
    h5py = _require('h5py')
    path = os.fspath(path)
    dataset = '/' + (dataset or 'data').strip('/')
    _h5_dtype_ok(h5py, A.dtype, '%s:%s' % (path, dataset))
    try:
        f = h5py.File(path, 'a')
    except (OSError, ValueError) as e:
        raise SourceError('cannot open HDF5 file %s for writing: %s' % (path, e)) from None
    bar = progress_bar(progress, A.nbytes, 'export %s:%s' % (os.path.basename(path), dataset))
    tmp = dataset + _TMP
    try:
        if dataset in f and not overwrite:
            raise DestinationExists('%s:%s exists: remove it or replace it (--force, '
                                    'overwrite=True)' % (path, dataset))
        if tmp in f:
            del f[tmp]
        ds = f.create_dataset(tmp, shape=A.shape, dtype=A.dtype, **create_kw)
        _export_boxes(A, _assigner(ds), bar, limit, ds.chunks[0] if ds.chunks and
                      A.order == 'C' else 1)
        if dataset in f:
            del f[dataset]
        f.move(tmp, dataset)
    except BaseException:
        if tmp in f:
            del f[tmp]
        raise
    finally:
        bar.close()
        f.close()


def _assigner(target):
    def sink(box, arr):
        target[box if box else ()] = arr
    return sink


def _export_boxes(A, sink, bar, limit, align):
    if A.nbytes == 0:
        return
    zfile = getattr(A, 'zfile', None)
    limit = limit or _default_limit(getattr(zfile, 'blksize', None) or (2 << 20))
    A.tofile(_BoxWriter(A, sink, bar, limit, align), order='K')


def to_zarr(A: 'BigArray', store: str | os.PathLike, path: str | None = None,
            overwrite: bool = False, progress: bool = False, limit: int | None = None,
            **create_kw: Any) -> None:
    """Write BigArray `A` as a zarr (format 3) array in directory store
    `store`, at `path` in it (None: the store is the array).  Extra keyword
    arguments go to ``zarr.create_array`` (chunks, compressors, ...)."""
    _check_array(A)
    zarr = _require('zarr')
    store = os.fspath(store)
    where = store + ('/' + path if path else '')
    if not path:
        if os.path.exists(store) and not overwrite:
            raise DestinationExists('%s exists: remove it or replace it (--force, '
                                    'overwrite=True)' % (store,))
        target = _tmp_beside(store)
        _remove(target)
        name = None
    else:
        target, name = store, path.strip('/')
        if not overwrite and os.path.exists(os.path.join(store, name)):
            raise DestinationExists('%s exists: remove it or replace it (--force, '
                                    'overwrite=True)' % (where,))
    bar = progress_bar(progress, A.nbytes, 'export ' + where)
    try:
        try:
            z = zarr.create_array(target, name=name, shape=A.shape, dtype=A.dtype,
                                  overwrite=True, **create_kw)
        except (ValueError, TypeError, NotImplementedError) as e:
            if 'data type' in str(e) or 'dtype' in str(e):
                raise UnsupportedDtype('zarr cannot hold dtype %s (%s): export to '
                                       '.npy or HDF5 instead' % (A.dtype, where)) from None
            raise
        align = z.chunks[0] if A.ndim and A.order == 'C' else 1
        _export_boxes(A, _assigner(z), bar, limit, align)
        if not path:
            if os.path.exists(store):
                _remove(store)
            os.replace(target, store)
    except BaseException:
        if not path:
            _remove(target)
        raise
    finally:
        bar.close()


def export_to(A: 'BigArray', spec: str, **kw: Any) -> None:
    """Export BigArray `A` to the destination named by `spec` (``x.npy``,
    ``f.h5:/dataset``, ``store.zarr[/path]``); keyword arguments as for
    to_npy / to_hdf5 / to_zarr."""
    kind, path, sub = parse_spec(spec)
    if kind == 'npy':
        kw.pop('limit', None)
        return to_npy(A, path, **kw)
    if kind == 'hdf5':
        return to_hdf5(A, path, sub, **kw)
    return to_zarr(A, path, sub, **kw)
