"""Storages for the tests that run over a network or more than one process
(tests/test_net_*.py): FileStorage, ZEO, RelStorage on SQLite and on
PostgreSQL, NEO, each started and stopped by the tests themselves.

Use the fixtures by importing them into a test module::

    from storages import storage, storage_uri, net_storage  # noqa: F401

``storage`` is parametrized over ``STORAGES`` and yields a ``Storage``
(``.kind``, ``.uri`` for ``dbopen``, ``.server``: the ``ZEOServer`` for
``zeo``, the ``NEOCluster`` for ``neo``); ``storage_uri`` yields just the
URI; ``net_storage`` is the same over the storages that more than one
process can open at once (ZEO, RelStorage and NEO: a FileStorage is locked
by the process that opens it).

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
* NEO: one cluster per test session (``NEOCluster``: 1 master, 2 storage
  nodes on SQLite, replicas 1, 4 partitions, 1 admin), started when a test
  first asks for it and stopped at the end of the session; started again if
  one of its nodes died.  NEO has one database per cluster, so each test
  starts with the root emptied (what earlier tests wrote stays in the
  database, unreachable).  Skipped, with the reason, when NEO's client or
  node commands are missing.  Fault tests start clusters of their own
  (tests/test_net_neo.py).
"""

import pytest

import shutil
import tempfile

from wendelin_cy.testing.servers import (ZEOServer, PGCluster, pg_missing,  # noqa: F401
                                         NEOCluster, neo_missing,
                                         DelayProxy, env_with_src, free_port)

STORAGES = ['file', 'zeo', 'sqlite', 'postgres', 'neo']
NET_STORAGES = ['zeo', 'sqlite', 'postgres', 'neo']


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


_neo = {}


def neo_session_cluster(config):
    """The session's NEO cluster (started on first use, again if a node
    died), stopped when the session ends."""
    why = neo_missing()
    if why:
        pytest.skip(why)
    c = _neo.get('cluster')
    if c is not None:
        procs = [c.master, c.admin] + c.storage_procs
        if all(p is not None and p.poll() is None for p in procs):
            return c
        c.stop()
    d = tempfile.mkdtemp(prefix='wcy-neo-')
    c = NEOCluster(d)
    try:
        c.start()
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    _neo['cluster'] = c
    if not _neo.get('cleanup'):
        _neo['cleanup'] = True

        def cleanup():
            c = _neo.pop('cluster', None)
            _neo.pop('cleanup', None)
            if c is not None:
                c.stop()
                shutil.rmtree(c.dir, ignore_errors=True)
        config.add_cleanup(cleanup)
    return c


def _empty_root(uri):
    import transaction
    from wendelin_cy.lib.zodb import dbopen, dbclose
    root = dbopen(uri)
    try:
        if len(root):
            root.clear()
            transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)


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
    if kind == 'neo':
        cluster = neo_session_cluster(request.config)
        _empty_root(cluster.uri)
        return Storage(kind, cluster.uri, cluster), lambda: None
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
