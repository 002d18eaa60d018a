"""Open and close a ZODB database by URI: ``root = dbopen(uri)``, ``dbclose(root)``.

URIs understood:

* a plain path, or ``file://path`` -> FileStorage (created if missing), with
  its blob directory beside it, ``path.blobs`` (``file://path?blobstorage_dir=``
  names another): full blocks of arrays are stored there as files, which the
  pager maps without copying (see ``wendelin_cy.bigfile.file_zodb``).  Open
  such a database with that blob directory (``FileStorage(path,
  blob_dir=path + '.blobs')``) when not through dbopen;
* ``memory://`` (optionally ``memory://name``) -> MappingStorage, in this
  process only;
* ``zeo://host:port`` (or ``zeo:///path/to/socket``), optional ``?storage=name``
  and ``?wait_timeout=seconds`` (default ``$WENDELIN_CY_STORAGE_TIMEOUT``,
  else 30) -> ZEO ClientStorage opened with ``server_sync=True``, so that
  every new transaction sees everything committed before it began; loads
  inside page faults then retry ZEO's ``ClientDisconnected`` for a bounded
  time (``wendelin_cy.lib._netfaults``); the process's glibc malloc
  thresholds are set for big records (``wendelin_cy.lib.malloc``: about 2x
  the scan speed; ``$WENDELIN_CY_MALLOC=default`` keeps glibc's own);
* every scheme some installed package registers with ``zodburi``
  (``postgres://``, ``mysql://``, ``sqlite://`` from RelStorage, ...);
* ``neo://`` through NEO's client, if installed.

Unknown schemes and files that are not databases raise ``ValueError`` that
says so.
"""

import os
import urllib.parse
from typing import Any

__all__ = ['dbopen', 'dbclose', 'dbstoropen', 'dbstoropen_kw']

# wendelin.core's other names here (LivePersistent, deactivate_btree,
# zconn_at, zstor_2zurl, ...): wendelin_cy.lib._zcompat, imported on first use
_ZCOMPAT = ('LivePersistent', 'deactivate_btree', 'zconn_at', 'before2at', 'zmajor',
            '_zhasNXDPatch', 'zstor_2zurl', 'zurl_normalize_main')


def __getattr__(name):
    if name in _ZCOMPAT:
        from . import _zcompat
        return getattr(_zcompat, name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


def _split_scheme(uri):
    if '://' not in uri:
        return None, uri
    scheme, rest = uri.split('://', 1)
    if not scheme or not all(c.isalnum() or c in '+-.' for c in scheme):
        return None, uri
    return scheme.lower(), rest


def _filestorage(path, **kw):
    from ZODB.FileStorage import FileStorage
    from ZODB.FileStorage.FileStorage import FileStorageFormatError
    path = os.path.expanduser(path)
    if not path:
        raise ValueError('dbopen: empty FileStorage path')
    if os.path.isdir(path):
        raise ValueError('dbopen: %r is a directory, not a FileStorage database'
                         % path)
    if 'blob_dir' not in kw:
        blob_dir = path + '.blobs'
        if not kw.get('read_only') or os.path.isdir(blob_dir):
            kw['blob_dir'] = blob_dir
    try:
        return FileStorage(path, **kw)
    except FileStorageFormatError as e:
        raise ValueError('dbopen: %r is not a ZODB FileStorage database (%s)'
                         % (path, e)) from e


def _zeo(rest, read_only=False):
    from ZEO.ClientStorage import ClientStorage
    u = urllib.parse.urlsplit('zeo://' + rest)
    q = dict(urllib.parse.parse_qsl(u.query))
    storage = q.pop('storage', '1')
    # do not wait forever for a server that is not there
    from wendelin_cy.lib._netfaults import register_zeo, storage_timeout
    kw = {'wait_timeout': float(q.pop('wait_timeout', None) or storage_timeout())}
    if q:
        raise ValueError('dbopen: unknown zeo:// parameters: %s' % ', '.join(sorted(q)))
    if u.hostname:
        if u.port is None:
            raise ValueError('dbopen: zeo:// URI needs a port: zeo://host:port')
        addr = (u.hostname, u.port)
    elif u.path:
        addr = u.path               # unix socket
    else:
        raise ValueError('dbopen: zeo:// URI needs host:port or a socket path')
    from wendelin_cy.lib import malloc
    # ZEO's client thread: no page faults per record (see there); before the
    # client's thread starts, so that it allocates from the one arena too
    tuned = malloc.tune()
    st = ClientStorage(addr, storage=storage, server_sync=True, read_only=read_only, **kw)
    _forget_oids_on_reconnect(st)
    register_zeo()      # page faults retry ClientDisconnected (bounded wait)
    if tuned:
        _trim_at_boundaries(st, malloc.trim)
    return st


def _trim_at_boundaries(st, trim):
    """Call trim() (lib.malloc) when a transaction begins on `st` (ZODB's
    MVCC adapter syncs the storage then) and after its commit or abort ends:
    the free heap the tuned thresholds keep per thread goes back between
    transactions, not only at 16 MiB per arena."""
    for name in ('sync', 'tpc_finish', 'tpc_abort'):
        orig = getattr(st, name, None)
        if orig is None:
            continue

        def wrapped(*a, _orig=orig, **kw):
            try:
                return _orig(*a, **kw)
            finally:
                trim()
        setattr(st, name, wrapped)


def _forget_oids_on_reconnect(st):
    """ZEO's ClientStorage keeps the oids it fetched ahead from the server
    (``new_oids``) across a reconnection.  A server that was killed and
    restarted has forgotten the oids it handed out and not committed, and
    hands them out again, to other clients: two objects would get the same
    oid, and the later commit overwrites the other object (found by
    benchmarks/soak.py with the server killed every 2 minutes).  Drop them
    at each (re)connection."""
    orig = st.notify_connected

    def notify_connected(conn, info):
        st._oids[:] = []
        return orig(conn, info)
    if isinstance(getattr(st, '_oids', None), list):
        st.notify_connected = notify_connected


def _neo(uri):
    from wendelin_cy.storage.neo import import_client, prepare
    try:
        import_client()     # (from any thread: see there)
    except ImportError as e:
        raise ValueError(
            'dbopen: %r needs the NEO client, which is not installed: '
            'pip install neoppod[client]  (%s)' % (uri, e)) from e
    storage, dbkw = _zodburi(uri)
    return prepare(storage), dbkw   # bounded loads, a thread ending quietly


def _zodburi(uri):
    try:
        import zodburi
    except ImportError as e:
        raise ValueError('dbopen: cannot open %r: unknown scheme (and zodburi is '
                         'not installed)' % (uri,)) from e
    try:
        factory, dbkw = zodburi.resolve_uri(uri)
    except zodburi.NoResolverForScheme:
        raise ValueError('dbopen: cannot open %r: unknown URI scheme %r (known: '
                         'file path, file://, memory://, zeo://, neo:// and the '
                         'zodburi schemes of installed packages)'
                         % (uri, uri.split(':', 1)[0])) from None
    return factory(), dbkw


def dbstoropen(uri: str | os.PathLike) -> Any:
    """Open the storage named by uri (as wendelin.core's dbstoropen); the
    ZODB.DB keyword arguments some URIs carry are dropped: dbstoropen_kw."""
    return dbstoropen_kw(uri)[0]


def dbstoropen_kw(uri: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """uri -> (storage, extra ZODB.DB keyword arguments)."""
    if not isinstance(uri, (str, os.PathLike)):
        raise TypeError('dbopen: uri must be a str, not %s' % type(uri).__name__)
    uri = os.fspath(uri)
    scheme, rest = _split_scheme(uri)
    if scheme is None:
        return _filestorage(uri), {}
    if scheme == 'file':
        path, kw = _file_args(uri)
        return _filestorage(path, **kw), {}
    if scheme == 'memory':
        from ZODB.MappingStorage import MappingStorage
        return MappingStorage(rest or 'memory'), {}
    if scheme == 'zeo':
        return _zeo(rest), {}
    if scheme == 'neo':
        return _neo(uri)
    return _zodburi(uri)


def _file_args(uri):
    """A path or file:// URI -> (path, FileStorage keyword arguments)."""
    scheme, rest = _split_scheme(uri)
    if scheme is None:
        return rest, {}
    u = urllib.parse.urlsplit(uri)
    path = urllib.parse.unquote((u.netloc or '') + (u.path or ''))
    q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    kw = {}
    for k, v in q.items():
        if k == 'blobstorage_dir' and len(v) == 1 and v[0]:
            kw['blob_dir'] = os.path.expanduser(v[0])
            continue
        if k != 'read_only' or len(v) != 1 or v[0].lower() not in (
                '0', '1', 'true', 'false', 'yes', 'no', ''):
            raise ValueError('dbopen: unknown file:// parameter %s=%s (known: '
                             'read_only=1|0, blobstorage_dir=path)'
                             % (k, ','.join(v)))
        kw['read_only'] = v[0].lower() in ('1', 'true', 'yes', '')
    return path, kw

def _storage_readonly(uri):
    """uri -> (read-only storage, DB keyword arguments)."""
    if not isinstance(uri, (str, os.PathLike)):
        raise TypeError('dbopen: uri must be a str, not %s' % type(uri).__name__)
    uri = os.fspath(uri)
    scheme, rest = _split_scheme(uri)
    if scheme in (None, 'file'):
        path, kw = _file_args(uri)
        if not os.path.exists(os.path.expanduser(path)):
            raise ValueError('dbopen(trusted=False): %r does not exist' % path)
        kw['read_only'] = True
        return _filestorage(path, **kw), {}
    if scheme == 'zeo':
        st = _zeo(rest, read_only=True)
        return st, {}
    if scheme == 'memory':
        st, kw = dbstoropen_kw(uri)
        return st, kw
    raise ValueError('dbopen(trusted=False) opens file paths, file://, zeo:// and '
                     'memory:// databases, not %r' % (uri,))


def dbopen(uri: str | os.PathLike, verify: bool | None = None, trusted: bool = True,
           allow: Any = (), **dbkw: Any) -> Any:
    """Open the database named by uri and return its root mapping.

    The connection uses the default (thread-local) transaction manager, so
    ``transaction.commit()`` commits it.  Close with ``dbclose(root)``.

    ``verify``: content checks (checksums) of the blocks loaded, True or
    False; None: ``$WENDELIN_CY_VERIFY``, else off (wendelin_cy.storage.checksum).
    Sizes are always checked.

    ``trusted=False``: a database from elsewhere.  It is opened read-only and
    its records may only name the classes of an allow-list (wendelin_cy's
    persistent classes, BTrees, persistent mappings and lists, blobs, numpy
    dtypes; ``allow`` adds ``'module.name'`` strings or ``'module.*'``); any
    other class or function a record names raises
    ``wendelin_cy.lib.untrusted.UntrustedClassError`` before it runs
    (see docs/guarantees.md).  For paths, file://, zeo:// and memory://.
    """
    import ZODB
    if trusted:
        if allow:
            raise ValueError('dbopen: allow= is for trusted=False')
        storage, kw = dbstoropen_kw(uri)
    else:
        from wendelin_cy.lib import untrusted
        storage, kw = _storage_readonly(uri)
    kw.update(dbkw)
    if verify is not None or not trusted:
        from wendelin_cy.storage.checksum import set_checks
        set_checks(storage, True if (verify is None and not trusted) else verify)
    try:
        db = ZODB.DB(storage, **kw) if trusted else untrusted.open_db(storage, allow, **kw)
    except BaseException:
        storage.close()
        raise
    # databases written by wendelin.core give wendelin_cy's classes
    # (wendelin_cy.compat; only this database's class factory changes)
    from wendelin_cy import compat
    compat.install(db)
    # remembered so that other processes can be told how to reach the same
    # database (wendelin_cy.ml.share, pickling a ZBigArray)
    uri = os.fspath(uri)
    if not uri.startswith('memory:'):           # (only this process can reach it)
        db.wendelin_cy_uri = uri if '://' in uri else os.path.abspath(uri)
    try:
        conn = db.open()
        return conn.root()
    except BaseException:
        db.close()
        raise


def dbclose(root: Any) -> None:
    """Close the connection of `root` and its database.

    Open ZBigFile handles of the connection are closed first (their views
    must be gone); the connection must not be in the middle of a transaction
    with changes (commit or abort first).
    """
    conn = root._p_jar
    if conn is None:
        raise ValueError('dbclose: %r is not loaded from a database' % (root,))
    db = conn.db()
    try:
        from wendelin_cy.bigfile.file_zodb import _close_handles_of
    except ImportError:         # pragma: no cover
        pass
    else:
        _close_handles_of(conn)
    conn.close()
    db.close()
