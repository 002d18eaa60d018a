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

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')

STORAGES = ['file', 'zeo', 'sqlite', 'postgres']
NET_STORAGES = ['zeo', 'sqlite', 'postgres']


def env_with_src(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + (os.pathsep + env['PYTHONPATH']
                               if env.get('PYTHONPATH') else '')
    env.update(extra)
    return env


def free_port():
    s = socket.socket()
    try:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
    finally:
        s.close()


def _accepts(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=1).close()
        return True
    except OSError:
        return False


# ~~~ ZEO

class ZEOServer:
    """A ZEO server process over the FileStorage at `path`."""

    def __init__(self, path, port=None):
        self.path = path
        self.port = port
        self.proc = None
        self.log = path + '.zeo.log'

    @property
    def uri(self):
        return 'zeo://127.0.0.1:%d' % self.port

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=60):
        """Start (again, on the same port if it had one) and wait until the
        server accepts connections."""
        fixed = self.port is not None
        for _ in range(5):
            if not fixed:
                self.port = free_port()
            with open(self.log, 'ab') as log:
                self.proc = subprocess.Popen(
                    [sys.executable, '-m', 'ZEO.runzeo',
                     '-a', '127.0.0.1:%d' % self.port, '-f', self.path],
                    env=env_with_src(), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break               # port taken? (or a real error)
                if _accepts(self.port):
                    return self
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError('ZEO server did not accept on port %d within '
                                   '%ss; see %s' % (self.port, timeout, self.log))
            if fixed:
                time.sleep(0.5)         # the old socket may linger briefly
        raise RuntimeError('ZEO server did not start; see %s:\n%s'
                           % (self.log, open(self.log, errors='replace').read()[-2000:]))

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


# ~~~ PostgreSQL

def pg_bindir():
    """Directory of initdb and pg_ctl, or None."""
    for d in sorted(glob.glob('/usr/lib/postgresql/*/bin'), reverse=True):
        if os.path.exists(os.path.join(d, 'initdb')) and \
                os.path.exists(os.path.join(d, 'pg_ctl')):
            return d
    initdb = shutil.which('initdb')
    if initdb and shutil.which('pg_ctl'):
        return os.path.dirname(initdb)
    return None


def pg_missing():
    """Why the PostgreSQL tests cannot run here, or None."""
    if pg_bindir() is None:
        return ('PostgreSQL server binaries (initdb, pg_ctl) not found: '
                'apt-get install postgresql')
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return ("RelStorage's PostgreSQL driver is not installed: "
                'pip install psycopg2-binary')
    try:
        import relstorage  # noqa: F401
    except ImportError:
        return 'RelStorage is not installed'
    if os.geteuid() == 0:
        try:
            pwd.getpwnam('postgres')
        except KeyError:
            return ('running as root and there is no "postgres" user to run '
                    'the PostgreSQL server as')
    return None


class PGCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1."""

    def __init__(self):
        self.bindir = pg_bindir()
        self.dir = None
        self.port = None
        self._n = 0

    def _run(self, *argv, **kw):
        cmd = [os.path.join(self.bindir, argv[0])] + list(argv[1:])
        if os.geteuid() == 0:
            cmd = ['runuser', '-u', 'postgres', '--'] + cmd
        p = subprocess.run(cmd, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, **kw)
        if p.returncode != 0:
            raise RuntimeError('%s failed (rc=%d):\n%s\n%s'
                               % (' '.join(cmd), p.returncode, p.stdout, p.stderr))
        return p

    def start(self):
        # not under pytest's tmp dirs: those are 0700 and root's
        self.dir = tempfile.mkdtemp(prefix='wcy-pg-')
        if os.geteuid() == 0:
            pw = pwd.getpwnam('postgres')
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, 'data')
        self._run('initdb', '-D', data, '-U', 'postgres', '-A', 'trust',
                  '-E', 'UTF8', '--no-sync', timeout=120)
        for _ in range(5):
            self.port = free_port()
            opts = ('-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off '
                    '-c synchronous_commit=off -c full_page_writes=off '
                    '-c max_connections=100' % (self.port, self.dir))
            try:
                self._run('pg_ctl', '-D', data, '-o', opts, '-l',
                          os.path.join(self.dir, 'log'), '-w', '-t', '60',
                          'start', timeout=120)
                return self
            except RuntimeError:
                if _accepts(self.port):     # port taken meanwhile: again
                    continue
                raise
        raise RuntimeError('could not start PostgreSQL')

    def _connect(self, dbname='postgres'):
        import psycopg2
        return psycopg2.connect(host='127.0.0.1', port=self.port,
                                user='postgres', dbname=dbname)

    def new_database(self):
        """Create an empty database -> its postgres:// URI for dbopen."""
        self._n += 1
        name = 'wcy%d_%d' % (os.getpid(), self._n)
        c = self._connect()
        try:
            c.autocommit = True
            c.cursor().execute('CREATE DATABASE %s' % name)
        finally:
            c.close()
        return 'postgres://postgres@127.0.0.1:%d/%s' % (self.port, name)

    def stop(self):
        if self.dir is None:
            return
        try:
            self._run('pg_ctl', '-D', os.path.join(self.dir, 'data'), '-m',
                      'immediate', '-w', 'stop', timeout=120)
        except Exception:
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


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
