"""Sharing (views of) ZBigArrays with other processes by reference.

What ``wendelin_cy.ml.share``, ``pickle.dumps(A)`` of a ZBigArray and pickling
a view ``A[...]`` send: an ``ArrayRef`` (database URI, oid, snapshot,
geometry), and how a worker opens it.  ``bigarray.array_zodb`` (the view
class's pickling) and ``ml`` (batches for workers) both use it; it imports
neither of them.

``share(A_or_view)`` returns an ``ArrayRef``: database URI, oid of the
ZBigFile holding the bytes, the snapshot (the ``before`` bound of the
connection's current transaction) and the geometry of the view (byte offset in
the file, shape, strides, dtype).  It pickles to a few hundred bytes.  In
another process ``ref.open()`` (or ``np.asarray(ref)``) opens the database
read-only, opens a historical connection at that snapshot (``DB.open(before=)``),
maps the file and returns a read-only ndarray view: the worker sees exactly
the data the sender saw, even if the sender commits in between, and loads only
the blocks it touches.  Connections are cached per process and thread, keyed by
(URI, snapshot), so a joblib worker that receives many references opens the
database once; a reference to a state committed after the worker opened
the database syncs it (ZEO) or opens it again (a read-only FileStorage does
not see later commits).  In the sending process itself (threads, or
``open()`` before a fork), the already open ``DB`` object is reused.

The URI is the one ``lib.zodb.dbopen`` recorded on the DB, else derived from
the storage (FileStorage: its file path; ZEO: host:port and storage name), or
given as ``uri=``; a MappingStorage (``memory://``) cannot be reached from
another process and is refused unless the consumer is the same process.  A
FileStorage is opened read-only by workers (it cannot be opened twice for
writing).  Storages that do not support ``loadBefore`` are opened at their
latest state, with a warning.  A worker that cannot open the database raises
``DatabaseUnreachable`` saying which URI and why.

Uncommitted changes are not seen by workers: ``share`` warns when the array
has dirty pages, and refuses an array that was never committed.

Views are plain ``numpy.ndarray``s and ``pickle.dumps(v)`` of one pickles
its data, as for any ndarray.  By reference go: ``pickle.dumps(A)`` of a
ZBigArray (unpickled: the ArrayRef); ``wendelin_cy.share(v)``, a
``SharedView`` that unpickles to the read-only view itself
(``_open_view``); and views that joblib's process backends (loky, as
scikit-learn's ``n_jobs``) send to their workers: ``bigarray._joblib`` makes
joblib's own array reducer, which would dump an array bigger than its
``max_nbytes`` into a temp folder, ask ``_view_reduce`` first (plain
``pickle`` and every other ndarray are untouched).  Where ``share`` would
warn or refuse, such a view is sent as data instead: no reachable URI
(memory://), closed handle or connection, uncommitted changes in the view's
blocks (the receiver must see what the sender sees), memory outside the
mapping (copies), and ZODB storing objects (a stored reference would point
at a snapshot of the database itself: while a transaction of the thread
commits or holds a savepoint, the ZBigFile handles, which the transaction
calls, say so: ``file_zodb.zodb_storing``).  A worker that cannot open the
database raises ``DatabaseUnreachable`` while it unpickles its task.
"""

import atexit
import bisect
import logging
import math
import os
import threading
import warnings
import weakref
from typing import Any

import numpy as np
from numpy.lib.array_utils import byte_bounds

from wendelin_cy.errors import WendelinError
import wendelin_cy.storage as _storage
from wendelin_cy.storage import mvcc as _mvcc

_log = logging.getLogger(__name__)

__all__ = ['share', 'share_view', 'SharedView', 'ArrayRef',
           'DatabaseUnreachable', 'SnapshotWarning', 'close_shared']


class DatabaseUnreachable(WendelinError, ConnectionError):
    """A process could not open the database an ArrayRef points to."""


class SnapshotWarning(UserWarning):
    """The worker sees another state than the one shared: uncommitted changes
    in the sender.  (A storage without history is logged on the
    ``wendelin_cy.bigarray._viewref`` logger instead.)"""


def _vma_of(v):
    b = v
    while isinstance(b, np.ndarray):
        b = b.base
    if b is not None and hasattr(b, 'fileh') and hasattr(b, 'addr_start'):
        return b
    return None


class SharedView:
    """A view of a ZBigArray shared by reference: ``wendelin_cy.share(v)``.

    It pickles to a few hundred bytes (an ``ArrayRef``: database URI, oid,
    snapshot, geometry) and **unpickles to the read-only ndarray view
    itself**, at the snapshot the sender saw, in the process that unpickles
    it, so that worker code receives a plain ``numpy.ndarray`` and needs no
    call of its own.  In the sending process, ``np.asarray(s)`` or
    ``s.open()`` gives the same view; ``s.ref`` is the ``ArrayRef``.
    """

    __slots__ = ('ref',)

    def __init__(self, ref):
        self.ref = ref

    def open(self):
        """-> the read-only ndarray view at the shared snapshot."""
        return self.ref.open()

    def __array__(self, dtype=None, copy=None):
        v = self.ref.open()
        if dtype is not None and np.dtype(dtype) != v.dtype:
            return v.astype(dtype)
        return v

    @property
    def shape(self):
        return self.ref.shape

    @property
    def dtype(self):
        return self.ref.dtype

    def __reduce__(self):
        return _open_view, (self.ref,)

    def __repr__(self):
        return 'SharedView(%r)' % (self.ref,)


def share_view(obj: Any, uri: str | None = None) -> 'SharedView':
    """``wendelin_cy.share``: a ZBigArray or an ndarray view of one -> a
    ``SharedView``, which unpickles to the read-only view (see ``share`` for
    what is shared and when it warns or refuses)."""
    return SharedView(share(obj, uri=uri))


def __getattr__(name):
    if name == 'ZBigArrayView':
        warnings.warn('ZBigArrayView is gone: views of a ZBigArray are plain '
                      'numpy.ndarray; share one by reference with '
                      'wendelin_cy.share(v)', DeprecationWarning, stacklevel=2)
        return np.ndarray
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


# ~~~ sharing arrays by reference

_open_dbs = weakref.WeakValueDictionary()      # id(db) -> db, this process
_owned_dbs = {}                                # uri -> DB opened by us
_retired_dbs = []                              # DBs of older states (_catch_up)
_cache = {}                                    # (db, before, thread) -> _Snapshot
_cache_lock = threading.Lock()


def _register_db(db):
    _open_dbs[id(db)] = db
    return id(db)


def _uri_of(storage):
    """A URI another process can open `storage` with, or None."""
    return _storage.uri_of(storage)


def _find_zfile(obj):
    """ZBigArray / its ndarray view -> (ZBigFile, core file handle, view or None)."""
    if isinstance(obj, np.ndarray):
        vma = _vma_of(obj)
        if vma is None:
            raise TypeError('share: this ndarray is not a view of a ZBigArray '
                            '(its memory is not mapped by the pager); share the '
                            'ZBigArray or a view made by slicing it')
        io = vma.fileh.bigfile
        zfile = getattr(io, '_zfile', None)
        if zfile is None:
            raise TypeError('share: this view is not over a ZBigFile (%r)' % (io,))
        return zfile, vma.fileh, obj
    zfile = getattr(obj, 'zfile', None)
    if zfile is None or not hasattr(obj, '_fileh'):
        raise TypeError('share: expected a ZBigArray or an ndarray view of one, '
                        'got %s' % type(obj).__name__)
    v = obj[...]
    return zfile, _vma_of(v).fileh if v.size else obj._fileh, v


def _db_uri(db, uri=None):
    """The URI other processes open `db` with (`uri` if given), or None."""
    if uri is None:
        uri = getattr(db, 'wendelin_cy_uri', None) or _uri_of(db.storage)
    if uri is not None and not isinstance(uri, str):
        uri = os.fspath(uri)
    if uri is not None and '://' not in uri:
        uri = os.path.abspath(uri)
    return uri


def share(obj: Any, uri: str | None = None) -> 'ArrayRef':
    """A small picklable reference to a ZBigArray or an ndarray view of one.

    ``share(A)``, ``share(A[1000:2000])``, ``share(A[:, 3])``: in any process,
    ``ref.open()`` returns a read-only ndarray with the same shape, dtype and
    data as the committed state that this process sees now.  `uri` names the
    database for the other processes; by default it is derived from the
    storage (FileStorage, ZEO).

    ``pickle.dumps(A)`` of a ZBigArray carries such a reference, and so do
    views sent to joblib's process workers (loky; scikit-learn's ``n_jobs``);
    ``pickle.dumps(v)`` of a view pickles its data, as for any ndarray.
    ``wendelin_cy.share(v)`` (``share_view``) wraps the reference in a
    ``SharedView`` that unpickles to the view itself.  A view joblib sends
    that cannot be shared (``memory://``, closed connection, uncommitted
    changes in its blocks) goes as data instead of raising or warning.
    """
    zfile, fh, v = _find_zfile(obj)
    jar = zfile._p_jar
    if jar is None or zfile._p_oid is None:
        raise ValueError('share: the array is not stored in a database yet; '
                         'add it to one and commit first')
    if getattr(jar, 'opened', None) is None:
        raise ValueError('share: the connection of the array is closed')
    db = jar.db()
    uri = _db_uri(db, uri)
    try:
        dirty = fh.isdirty()
    except Exception:
        dirty = False
    if dirty:
        warnings.warn('share: the array has uncommitted changes; other processes '
                      'see the last committed state', SnapshotWarning, stacklevel=2)
    return _make_ref(zfile, fh, jar, db, uri, v)


def _make_ref(zfile, fh, jar, db, uri, v):
    """ArrayRef to view `v` of `zfile` (core handle `fh`) at the snapshot of `jar`."""
    before = getattr(jar, 'before', None)          # a historical connection
    if before is None:
        before = _mvcc.snapshot(jar)
    if before is None:
        from ZODB.utils import p64, u64
        before = p64(u64(db.lastTransaction()) + 1)
    blksize = fh.blksize
    if v.size:
        addr = v.__array_interface__['data'][0]
        offset = addr - fh.addr
    else:
        offset = 0
    return ArrayRef(uri, zfile._p_oid, before, offset, v.shape, v.strides,
                    v.dtype, blksize, os.getpid(), _register_db(db))


# ~~~ views by reference in joblib's pickler (bigarray._joblib), SharedView

def _view_ref(v):
    """The ArrayRef that pickling the ndarray `v` sends, or None when `v` must
    be pickled as data: its memory is not (all) inside a ZBigFile mapping,
    the handle or the connection is closed, the database has no URI other
    processes can open (memory://), or some block under `v` has uncommitted
    changes (the receiver would see the committed data, the sender sees its
    changes).  Never warns."""
    if not v.size:
        return None
    vma = _vma_of(v)
    if vma is None:
        return None
    fh = vma.fileh
    if fh.closed:
        return None
    zfile = getattr(fh.bigfile, '_zfile', None)
    if zfile is None:
        return None
    lo, hi = byte_bounds(v)
    if lo < vma.addr_start or hi > vma.addr_stop:
        return None             # a copy whose .base chain leads to the mapping
    jar = zfile._p_jar
    if jar is None or zfile._p_oid is None or getattr(jar, 'opened', None) is None:
        return None
    db = jar.db()
    uri = _db_uri(db)
    if uri is None or uri.startswith('memory:'):
        return None
    if fh.isdirty():
        bs = fh.blksize
        b0, b1 = (lo - fh.addr) // bs, (hi - 1 - fh.addr) // bs
        dirty = fh.dirty_blocks()
        i = bisect.bisect_left(dirty, b0)
        if i < len(dirty) and dirty[i] <= b1:
            return None
    return _make_ref(zfile, fh, jar, db, uri, v)


def _view_reduce(v):
    """(_open_view, (ArrayRef,)) for view `v`, or None (pickle the data).
    Any failure to make the reference falls back to the data."""
    from wendelin_cy.bigfile.file_zodb import zodb_storing
    if zodb_storing():
        return None
    try:
        ref = _view_ref(v)
    except Exception:
        return None
    if ref is None:
        return None
    return _open_view, (ref,)


def _open_view(ref):
    """Unpickling a view sent by reference: the read-only view at the
    snapshot.  Raises DatabaseUnreachable when this process cannot open the
    database."""
    return ref.open()


class ArrayRef:
    """Reference to (a view of) a ZBigArray at one snapshot; see ``share``.

    Pickles to the URI, oid, snapshot and geometry; ``open()`` returns the
    read-only ndarray view in any process that can reach the database, and
    ``np.asarray(ref)`` does the same.
    """

    __slots__ = ('uri', 'oid', 'before', 'offset', 'shape', 'strides', 'dtype',
                 'blksize', '_pid', '_dbid')

    def __init__(self, uri, oid, before, offset, shape, strides, dtype,
                 blksize, pid=None, dbid=None):
        self.uri = uri
        self.oid = bytes(oid)
        self.before = bytes(before) if before is not None else None
        self.offset = int(offset)
        self.shape = tuple(int(x) for x in shape)
        self.strides = tuple(int(x) for x in strides)
        self.dtype = np.dtype(dtype)
        self.blksize = int(blksize)
        self._pid = pid
        self._dbid = dbid

    def __reduce__(self):
        return (ArrayRef, (self.uri, self.oid, self.before, self.offset, self.shape,
                           self.strides, self.dtype, self.blksize, self._pid,
                           self._dbid))

    def __repr__(self):
        return '<ArrayRef %s oid=%s before=%s shape=%r dtype=%s offset=%d>' % (
            self.uri, self.oid.hex(), self.before.hex() if self.before else None,
            self.shape, self.dtype, self.offset)

    @property
    def nbytes(self):
        return math.prod(self.shape) * self.dtype.itemsize

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        return self.open()[idx]

    def __array__(self, dtype=None, copy=None):
        v = self.open()
        if copy:
            v = v.copy()
        return v if dtype is None else v.astype(dtype, copy=False)

    def _byte_range(self):
        if not math.prod(self.shape):
            return self.offset, self.offset
        lo = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides)
                               if s < 0)
        hi = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides)
                               if s > 0) + self.dtype.itemsize
        return lo, hi

    def open(self):
        """-> read-only ndarray view over the shared data at the snapshot."""
        if not math.prod(self.shape):
            return np.empty(self.shape, self.dtype)
        snap = _snapshot(self)
        return snap.view(self)


class _Snapshot:
    """One historical connection of a process and thread."""

    def __init__(self, db, before):
        import transaction
        self.db = db
        self.tm = transaction.TransactionManager()
        self.lock = threading.Lock()
        if before is not None:
            self.conn = db.open(transaction_manager=self.tm, before=before)
        else:
            self.conn = db.open(transaction_manager=self.tm)
        self.handles = {}       # oid -> ZBigFileH

    def view(self, ref):
        with self.lock:
            fh = self.handles.get(ref.oid)
            if fh is None or fh.closed:
                from ZODB.POSException import POSKeyError
                try:
                    zfile = self.conn.get(ref.oid)
                    zfile._p_activate()
                except POSKeyError:
                    raise ValueError('ArrayRef: object %s is not in database %s at '
                                     'that snapshot' % (ref.oid.hex(), ref.uri)) from None
                if not hasattr(zfile, 'fileh_open'):
                    raise ValueError('ArrayRef: object %s of %s is a %s, not a ZBigFile'
                                     % (ref.oid.hex(), ref.uri, type(zfile).__name__))
                fh = self.handles[ref.oid] = zfile.fileh_open()
            lo, hi = ref._byte_range()
            bs = fh.blksize
            pg0, pg1 = lo // bs, -(-hi // bs)
            vma = fh.mmap(pg0, pg1 - pg0)
        v = np.ndarray(ref.shape, ref.dtype, buffer=vma,
                       offset=ref.offset - pg0 * bs, strides=ref.strides)
        v.flags.writeable = False
        return v

    def close(self):
        for fh in self.handles.values():
            try:
                fh.close()
            except Exception:
                pass
        try:
            self.tm.abort()
            self.conn.close()
        except Exception:
            pass


def _open_db(uri):
    """uri -> ZODB.DB opened read-only where the storage allows it."""
    import ZODB
    from wendelin_cy.lib.zodb import dbstoropen_kw, _split_scheme, _file_args, _filestorage
    scheme, rest = _split_scheme(uri)
    if scheme is None or scheme == 'file':
        path, fkw = _file_args(uri)
        fkw['read_only'] = True
        if not os.path.isfile(path):
            raise FileNotFoundError('no FileStorage database at %r' % path)
        import logging
        log = logging.getLogger('ZODB.FileStorage')
        quiet = not log.handlers and not logging.getLogger().handlers
        old = log.level
        if quiet:       # "Ignoring index": the writer's index is behind; harmless
            log.setLevel(logging.ERROR)
        try:
            storage, kw = _filestorage(path, **fkw), {}
        finally:
            if quiet:
                log.setLevel(old)
    elif scheme == 'memory':
        raise ValueError('a memory:// database lives in the process that created '
                         'it only')
    else:
        storage, kw = dbstoropen_kw(uri)
    try:
        return ZODB.DB(storage, **kw)
    except BaseException:
        storage.close()
        raise


def _db_for(ref):
    """The DB to open `ref` with: the sender's own in the sending process, else
    one opened by URI (once per process).  Called with _cache_lock held."""
    if ref._pid == os.getpid():
        db = _open_dbs.get(ref._dbid)
        if db is not None:
            return db
    if ref.uri is None:
        raise DatabaseUnreachable(
            'ArrayRef: cannot open the database of this array from another '
            'process: its URI is unknown (a memory:// database, or a storage '
            'whose URI cannot be derived); pass uri= to share()')
    db = _owned_dbs.get(ref.uri)
    if db is None:
        try:
            db = _open_db(ref.uri)
        except Exception as e:
            raise DatabaseUnreachable(
                'ArrayRef: cannot reach database %r (pid %d) to open the shared '
                'array (oid %s): %s: %s'
                % (ref.uri, os.getpid(), ref.oid.hex(), type(e).__name__, e)) from e
        db.wendelin_cy_uri = ref.uri        # views of it pickle by this URI
        _owned_dbs[ref.uri] = db
    return db


def _snapshot(ref):
    # one connection per thread: a ZODB connection (and the handles over it,
    # whose loadblk runs in the faulting thread) belongs to one thread
    db_key = ref._dbid if ref._pid == os.getpid() else ref.uri
    key = (db_key, ref.before, threading.get_ident())
    with _cache_lock:
        snap = _cache.get(key)
        if snap is not None:
            return snap
        db = _db_for(ref)
        before = ref.before
        if before is not None and not _supports_history(db.storage):
            _log.warning('ArrayRef: storage of %r cannot load past states; '
                         'opening its latest state instead', ref.uri)
            before = None
        if before is not None and _owned_dbs.get(ref.uri) is db:
            db = _catch_up(ref.uri, db, before)
        snap = _cache[key] = _Snapshot(db, before)
        return snap


def _behind(db, before):
    from ZODB.utils import u64
    return u64(before) > u64(db.lastTransaction()) + 1


def _catch_up(uri, db, before):
    """The DB of this process for `uri`, knowing the transactions before
    `before`.  A long-lived worker (dask, joblib) may be sent a reference to
    a state committed after it opened the database: a client that hears of
    commits late (ZEO) is synced with its server; a FileStorage opened
    read-only never learns of later commits, so it is opened again (the old
    DB stays for the connections at older snapshots, closed by
    close_shared).  Called with _cache_lock held."""
    if not _behind(db, before):
        return db
    try:
        db.storage.sync()       # ZEO with server_sync: a round trip
    except Exception:
        pass
    if not _behind(db, before) or not db.storage.isReadOnly():
        return db               # (not read-only: DB.open says what is wrong)
    try:
        new = _open_db(uri)
    except Exception as e:
        raise DatabaseUnreachable(
            'ArrayRef: cannot reopen database %r (pid %d) at a later state: '
            '%s: %s' % (uri, os.getpid(), type(e).__name__, e)) from e
    new.wendelin_cy_uri = uri
    _owned_dbs[uri] = new
    _retired_dbs.append(db)
    return new


def _supports_history(storage):
    lb = getattr(storage, 'loadBefore', None)
    if lb is None:
        return False
    try:
        from ZODB.utils import z64
        lb(z64, b'\xff' * 8)
    except NotImplementedError:
        return False
    except Exception:
        pass
    return True


def close_shared():
    """Close every connection and database opened by ArrayRef.open() in this
    process (their views must be gone)."""
    with _cache_lock:
        snaps = list(_cache.values())
        _cache.clear()
        dbs = list(_owned_dbs.values()) + _retired_dbs
        _owned_dbs.clear()
        _retired_dbs.clear()
    for s in snaps:
        s.close()
    for db in dbs:
        try:
            db.close()
        except Exception:
            pass


atexit.register(close_shared)


def _after_fork():
    # connections and storages of the parent must not be used by a child
    _cache.clear()
    _owned_dbs.clear()
    del _retired_dbs[:]
    _open_dbs.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_after_fork)
