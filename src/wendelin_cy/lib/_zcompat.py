"""``wendelin.lib.zodb`` helper names that wendelin.core users call (issue 17),
written for wendelin_cy: objects that never go ghost, deactivating a BTree,
the snapshot a connection sees, and zurls (storage URLs) of opened storages."""
import gc
import socket
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import ZODB
from persistent import Persistent
from ZODB import POSException
from ZODB.utils import p64, u64

__all__ = ['LivePersistent', 'deactivate_btree', 'zconn_at', 'before2at', 'zmajor',
           'zstor_2zurl', 'zurl_normalize_main']


class LivePersistent(Persistent):
    """A Persistent that the cache never turns into a ghost (its
    ``_p_deactivate`` does nothing); an invalidation still does
    (``_p_invalidate`` is untouched)."""

    def _p_deactivate(self):
        pass


def deactivate_btree(btree):
    """Turn `btree`, its buckets and the Persistent values in them into ghosts
    (values that are LivePersistent stay)."""
    btree._p_activate()     # a ghost BTree does not reference its first bucket
    for child in gc.get_referents(btree):
        if type(child) is btree._bucket_type:
            _deactivate_bucket(child)
    btree._p_deactivate()


def _deactivate_bucket(bucket):
    for v in bucket.values():
        if type(v) is type(bucket):
            _deactivate_bucket(v)
        elif isinstance(v, Persistent):
            v._p_deactivate()
    bucket._p_deactivate()


def before2at(before):
    """The tid just before `before`: the last transaction a ``before`` view sees."""
    return p64(u64(before) - 1)


def _zmajor():
    try:
        from importlib.metadata import version
        return int(version('ZODB').split('.')[0])
    except Exception:       # (not installed as a distribution: ZODB >= 5 is required)
        return 5


zmajor = _zmajor()


def _zhasNXDPatch(patch):
    """Is ZODB patched with Nexedi's `patch` (ZODB.nxd_patches)?"""
    return patch in getattr(ZODB, 'nxd_patches', set())


def zconn_at(zconn):
    """The tid of the database state that the opened connection `zconn` sees."""
    if not isinstance(zconn, ZODB.Connection.Connection):
        raise TypeError('zconn_at: %r is not a ZODB connection' % (zconn,))
    if zconn.opened is None:
        raise POSException.ConnectionStateError('database connection is closed')
    from ZODB import mvccadapter
    zstor = zconn._storage
    if isinstance(zstor, mvccadapter.HistoricalStorageAdapter):
        return before2at(zstor._before)
    start = getattr(zstor, '_start', None)      # MVCCAdapterInstance and alike
    if start is None:
        raise NotImplementedError('zconn_at: cannot tell the snapshot of %r' % (zstor,))
    return before2at(start)


def _hostport(host, port):
    if _is_ipv6(host):
        host = '[%s]' % host
    return '%s:%s' % (host, port)


def _is_ipv6(host):
    try:
        socket.inet_pton(socket.AF_INET6, host)
        return True
    except (OSError, ValueError, TypeError):
        return False


def zstor_2zurl(zstor):
    """The URL that opens the storage `zstor` again (file://, zeo://, demo:,
    neo:// / neos://).  In-RAM storages have none (ValueError)."""
    from ZODB.DemoStorage import DemoStorage
    from ZODB.FileStorage import FileStorage
    if isinstance(zstor, FileStorage):
        return 'file://' + zstor._file_name
    if isinstance(zstor, DemoStorage):
        return 'demo:(%s)/(%s)' % (zstor_2zurl(zstor.base), zstor_2zurl(zstor.changes))
    kind = '%s.%s' % (type(zstor).__module__, type(zstor).__name__)
    if kind == 'ZEO.ClientStorage.ClientStorage':
        addrs = zstor._addr
        if isinstance(addrs, str) or (len(addrs) == 2 and isinstance(addrs[1], int)):
            addrs = [addrs]
        if len(addrs) != 1:
            raise NotImplementedError('ZEO client with several servers: %r' % (addrs,))
        addr = addrs[0]
        url = 'zeo://' + (addr if isinstance(addr, str) else _hostport(*addr))
        if zstor._storage != '1':
            url += '?storage=%s' % zstor._storage
        return url
    if kind == 'neo.client.Storage.Storage':
        app = zstor.app
        masters = [_hostport(*m.getAddress()) for m in app.nm.getMasterList()]
        if not masters:
            raise RuntimeError('%r has no masters' % (zstor,))
        url = '%s://%s@%s' % ('neos' if app.ssl else 'neo', app.name, ','.join(masters))
        if app.ssl:
            ca, cert, key = app.ssl_credentials
            url += '?' + urlencode((('ca', ca), ('cert', cert), ('key', key)))
        return url
    if kind in ('ZODB.MappingStorage.MappingStorage', 'wendelin_cy.storage.memory.MemoryStorage'):
        raise ValueError('%s is an in-RAM storage: no URL opens it again from another '
                         'process' % kind)
    raise NotImplementedError("zstor_2zurl: don't know the URL of %r" % (zstor,))


def _normalize_neo(scheme, netloc, path, query, frag):
    # the options that do not change which database it is go; TLS files make it neos
    q = parse_qs(query)
    for k in ('ca', 'cert', 'key'):
        if q.pop(k, None):
            scheme = 'neos'
    for k in ('compress', 'read-only', 'logfile', 'cache-size'):
        q.pop(k, None)
    query = urlencode([(k, q[k]) for k in sorted(q)], doseq=True)
    name, at, masters = netloc.rpartition('@')
    netloc = name + at + ','.join(sorted(masters.split(',')))
    return scheme, netloc, path, query, frag


def _same(*parts):
    return parts


_NORMALIZERS = {'file': _same, 'zeo': _same, 'demo': _same,
                'neo': _normalize_neo, 'neos': _normalize_neo}


def zurl_normalize_main(zurl):
    """`zurl` with what does not change which database it names (NEO's
    client options, the order of its masters) taken out: two zurls of one
    database normalize to the same string."""
    scheme, netloc, path, query, frag = urlsplit(zurl)
    try:
        norm = _NORMALIZERS[scheme.lower()]
    except KeyError:
        raise NotImplementedError("can't normalize zurl with scheme %s" % scheme)
    return urlunsplit(norm(scheme, netloc, path, query, frag))
