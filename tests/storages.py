"""Storages for the tests that run over a network or more than one process
(tests/test_net_*.py): FileStorage, ZEO, RelStorage on SQLite and on
PostgreSQL, each started and stopped by the tests themselves.

Use the fixtures by importing them into a test module::

    from storages import storage, storage_uri, net_storage  # noqa: F401

``storage`` is parametrized over ``STORAGES`` and yields a ``Storage``
(``.kind``, ``.uri`` for ``dbopen``, ``.server``: the ``ZEOServer`` for
``zeo``); ``storage_uri`` yields just the URI; ``net_storage`` is the same
over the storages that more than one process can open at once (ZEO and
RelStorage: a FileStorage is locked by the process that opens it).

Servers are real processes on 127.0.0.1:

* ZEO: ``python -m ZEO.runzeo`` over a FileStorage in the test's temp dir,
  on a free port picked by binding port 0 first (a port taken in between
  makes the server exit at once: we pick another and start again).  It can
  import wendelin_cy (conflict resolution of ZBigFile).  Stopped, or killed
  with SIGKILL by the fault tests, by its PID.
* PostgreSQL: one cluster per test session, made with ``initdb`` in a
  temporary directory and started with ``pg_ctl`` on a free loopback port,
  durability off (fsync, synchronous_commit, full_page_writes: the tests
  check visibility, not crash safety of PostgreSQL); one new database per
  test.  As root the server runs as the ``postgres`` user.  Skipped, with
  the reason, when the binaries, the ``postgres`` user or RelStorage's
  driver (psycopg2) are missing.
"""

import pytest

from wendelin_cy.testing.servers import (ZEOServer, PGCluster, pg_missing,  # noqa: F401
                                         DelayProxy, env_with_src, free_port)

STORAGES = ['file', 'zeo', 'sqlite', 'postgres']
NET_STORAGES = ['zeo', 'sqlite', 'postgres']


# ~~~ fixtures

class Storage:
    def __init__(self, kind, uri, server=None):
        self.kind = kind
        self.uri = uri
        self.server = server

    def __repr__(self):
        return '<Storage %s %s>' % (self.kind, self.uri)


@pytest.fixture(scope='session')
def pg_cluster():
    why = pg_missing()
    if why:
        pytest.skip(why)
    c = PGCluster()
    try:
        c.start()
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def make_storage(kind, tmp_path, request):
    """-> (Storage, cleanup)."""
    if kind == 'file':
        return Storage(kind, str(tmp_path / 'data.fs')), lambda: None
    if kind == 'zeo':
        srv = ZEOServer(str(tmp_path / 'zeo.fs')).start()
        return Storage(kind, srv.uri, srv), srv.stop
    if kind == 'sqlite':
        pytest.importorskip('relstorage', reason='RelStorage is not installed')
        d = tmp_path / 'sqlite'
        d.mkdir()
        return Storage(kind, 'sqlite://?data_dir=%s' % d), lambda: None
    if kind == 'postgres':
        cluster = request.getfixturevalue('pg_cluster')
        return Storage(kind, cluster.new_database()), lambda: None
    raise AssertionError(kind)


@pytest.fixture(params=STORAGES)
def storage(request, tmp_path):
    st, cleanup = make_storage(request.param, tmp_path, request)
    yield st
    cleanup()


@pytest.fixture
def storage_uri(storage):
    return storage.uri


@pytest.fixture(params=NET_STORAGES)
def net_storage(request, tmp_path):
    st, cleanup = make_storage(request.param, tmp_path, request)
    yield st
    cleanup()


@pytest.fixture
def zeo_server(tmp_path):
    srv = ZEOServer(str(tmp_path / 'zeo.fs')).start()
    yield srv
    srv.stop()
