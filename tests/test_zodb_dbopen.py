"""dbopen()/dbclose() URIs, and the binding over every storage it opens."""

import os

import numpy as np
import pytest
import transaction

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024


@pytest.fixture
def zeo_uri(tmp_path):
    import ZEO
    addr, stop = ZEO.server(path=str(tmp_path / 'zeo.fs'))
    yield 'zeo://%s:%d' % addr
    stop()


def _uri(kind, tmp_path, request):
    if kind == 'path':
        return str(tmp_path / 'db.fs')
    if kind == 'file':
        return 'file://' + str(tmp_path / 'db.fs')
    if kind == 'memory':
        return 'memory://'
    if kind == 'zeo':
        return request.getfixturevalue('zeo_uri')
    if kind == 'sqlite':
        pytest.importorskip('relstorage')
        return 'sqlite://?data_dir=' + str(tmp_path / 'sqlite')
    raise AssertionError(kind)


@pytest.mark.parametrize('kind', ['path', 'file', 'memory', 'zeo', 'sqlite'])
def test_backend(kind, tmp_path, request):
    uri = _uri(kind, tmp_path, request)
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((3 * BS // 8,), np.int64, blksize=BS)
        transaction.commit()
        a = A[:]
        a[:] = np.arange(len(a))
        transaction.commit()
        # a second connection, with its own transaction manager
        db = root._p_jar.db()
        tm2 = transaction.TransactionManager()
        c2 = db.open(tm2)
        B = c2.root()['A']
        b = B[:]
        assert (b == np.arange(len(a))).all()
        a[BS // 8 + 1] = -1
        A.append(np.array([5, 6]))
        transaction.commit()
        assert b[BS // 8 + 1] != -1 and B.shape == (len(a),)
        tm2.begin()
        assert b[BS // 8 + 1] == -1 and B.shape == (len(a) + 2,)
        assert (B[-2:] == [5, 6]).all()
        b[0] = 100
        tm2.commit()
        transaction.begin()
        assert a[0] == 100
        del b
        from wendelin_cy.bigfile.file_zodb import _close_handles_of
        _close_handles_of(c2)
        c2.close()
        del a
    finally:
        transaction.abort()
        dbclose(root)
    if kind in ('path', 'file'):
        root = dbopen(uri)              # reopen from disk
        try:
            a = root['A'][:]
            assert a[0] == 100 and a[BS // 8 + 1] == -1 and a[-1] == 6
            del a
        finally:
            dbclose(root)


def test_creates_missing_file(tmp_path):
    p = tmp_path / 'new.fs'
    root = dbopen(str(p))
    assert p.exists()
    assert len(root) == 0
    dbclose(root)


def test_not_a_database(tmp_path):
    p = tmp_path / 'junk.fs'
    p.write_bytes(b'this is not a FileStorage\n' * 10)
    with pytest.raises(ValueError, match='not a ZODB FileStorage'):
        dbopen(str(p))
    with pytest.raises(ValueError, match='directory'):
        dbopen(str(tmp_path))


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown URI scheme 'bogus'"):
        dbopen('bogus://x/y')
    with pytest.raises(TypeError):
        dbopen(42)


def test_zeo_uri_errors():
    with pytest.raises(ValueError, match='port'):
        dbopen('zeo://localhost')
    with pytest.raises(ValueError, match='unknown zeo'):
        dbopen('zeo://localhost:1?frob=1')


def test_neo_without_client():
    try:
        import neo.client  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r'pip install neoppod\[client\]'):
            dbopen('neo://db@localhost:1')
    else:                                   # pragma: no cover
        pytest.skip('neoppod is installed: cannot test the missing-client error')


def test_zeo_server_sync(zeo_uri):
    """zeo:// connections see every commit made before their transaction began."""
    from ZEO.ClientStorage import ClientStorage
    root = dbopen(zeo_uri)
    try:
        st = root._p_jar.db().storage
        assert isinstance(st, ClientStorage) and st.server_sync is True
    finally:
        dbclose(root)


def test_zeo_no_server_times_out():
    import socket
    import time
    from ZEO.Exceptions import ClientDisconnected
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()                               # nothing listens there
    t = time.time()
    with pytest.raises(ClientDisconnected):
        dbopen('zeo://127.0.0.1:%d?wait_timeout=0.5' % port)
    assert time.time() - t < 20
