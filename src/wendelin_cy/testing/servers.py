"""Database servers started and stopped by tests and benchmarks, on 127.0.0.1.

* ``ZEOServer``: ``python -m ZEO.runzeo`` over a FileStorage, on a free port
  picked by binding port 0 first (a port taken in between makes the server
  exit at once: another is picked and it starts again).  wendelin_cy is on
  its path (conflict resolution of ZBigFile).  ``stop()`` (SIGTERM) and
  ``kill()`` (SIGKILL, as a crash) act on its PID only.
* ``PGCluster``: a throwaway PostgreSQL cluster made with ``initdb`` in a
  temporary directory and started with ``pg_ctl`` on a free loopback port,
  durability off (fsync, synchronous_commit, full_page_writes: made for tests
  of visibility, not of PostgreSQL's crash safety).  As root the server runs
  as the ``postgres`` user.  ``pg_missing()`` says why it cannot run here.
* ``NEOCluster``: a NEO cluster (``neomaster``, ``neostorage`` on SQLite,
  ``neoadmin``) in a directory, every node on 127.0.0.1 on a free port.  The
  master starts with ``--autostart N`` (N storage nodes) and ``start()``
  returns once ``neoctl`` shows every storage node RUNNING and every
  partition with all its replicas UP_TO_DATE.  Nodes are stopped by PID
  (SIGTERM, then SIGKILL); the fault tests kill, stop (SIGSTOP) and restart
  single nodes.  ``neo_missing()`` says why it cannot run here.
* ``DelayProxy``: a TCP proxy that delays every byte by a fixed time in each
  direction, to show what a remote server's latency costs (without touching
  the machine's network settings).
"""

import asyncio
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

import wendelin_cy

__all__ = ['ZEOServer', 'PGCluster', 'NEOCluster', 'DelayProxy', 'pg_bindir',
           'pg_missing', 'neo_missing', 'free_port', 'env_with_src']

SRC = os.path.dirname(os.path.dirname(os.path.abspath(wendelin_cy.__file__)))


def env_with_src(**extra):
    """os.environ with the directory wendelin_cy is imported from first on
    PYTHONPATH (for child processes)."""
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


# ~~~ NEO

NEO_TOOLS = ('neomaster', 'neostorage', 'neoadmin', 'neoctl')


def neo_missing():
    """Why a NEO cluster cannot run here, or None."""
    try:
        import neo.client  # noqa: F401
    except ImportError:
        return 'NEO client (neo.client) is not installed; see docs/scale-out.md'
    missing = [t for t in NEO_TOOLS if shutil.which(t) is None]
    if missing:
        return 'NEO node commands not on PATH: %s' % ', '.join(missing)
    return None


def _stop_proc(p, timeout=15):
    """SIGTERM then SIGKILL, by PID (a stopped process is woken to die)."""
    if p is None or p.poll() is not None:
        return
    try:
        os.kill(p.pid, signal.SIGTERM)
        os.kill(p.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


class NEOCluster:
    """A NEO cluster of `storages` storage nodes on SQLite (files in `dir`),
    one master (`replicas`, `partitions`) and one admin, on 127.0.0.1.

    ``uri`` is for ``dbopen`` (``neo://NAME@127.0.0.1:PORT``, with
    ``?compress=false`` unless `compress`).  ``storage_db(i)`` is the SQLite
    file of storage node i (``objects(i)``: how many object records it
    holds).  ``kill_storage(i)`` / ``start_storage(i)`` (same port and
    database), ``pause_storage(i)`` / ``resume_storage(i)`` (SIGSTOP /
    SIGCONT), ``kill_master()`` / ``start_master()``, ``ctl(*args)`` runs
    ``neoctl`` against the admin node."""

    _n = 0

    def __init__(self, dir, storages=2, replicas=1, partitions=4, name=None,
                 compress=False):
        NEOCluster._n += 1
        self.dir = os.path.abspath(dir)
        self.nstorages = storages
        self.replicas = replicas
        self.partitions = partitions
        self.name = name or 'wcy%d_%d' % (os.getpid(), NEOCluster._n)
        self.compress = compress
        self.master_port = None
        self.admin_port = None
        self.storage_ports = [None] * storages
        self.master = None
        self.admin = None
        self.storage_procs = [None] * storages

    @property
    def master_addr(self):
        return '127.0.0.1:%d' % self.master_port

    @property
    def admin_addr(self):
        return '127.0.0.1:%d' % self.admin_port

    @property
    def uri(self):
        return 'neo://%s@%s%s' % (self.name, self.master_addr,
                                  '' if self.compress else '?compress=false')

    def storage_db(self, i):
        return os.path.join(self.dir, '%s-s%d.sqlite' % (self.name, i))

    def _log(self, what):
        return os.path.join(self.dir, '%s-%s.log' % (self.name, what))

    def _spawn(self, what, *argv):
        with open(self._log(what), 'ab') as log:
            return subprocess.Popen(
                [argv[0], '--cluster', self.name, '--masters', self.master_addr]
                + list(argv[1:]), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)

    def _tail(self, what):
        try:
            with open(self._log(what), errors='replace') as f:
                return f.read()[-2000:]
        except OSError:
            return ''

    # ~~~ nodes

    def start_master(self):
        for _ in range(5):
            fixed = self.master_port is not None
            if not fixed:
                self.master_port = free_port()
            self.master = self._spawn(
                'master', 'neomaster', '--bind', self.master_addr,
                '--replicas', str(self.replicas), '--partitions',
                str(self.partitions), '--autostart', str(self.nstorages))
            if self._listening(self.master, self.master_port):
                return
            if not fixed:
                self.master_port = None
            time.sleep(0.5)
        raise RuntimeError('NEO master did not start; see %s:\n%s'
                           % (self._log('master'), self._tail('master')))

    def start_storage(self, i):
        for _ in range(5):
            fixed = self.storage_ports[i] is not None
            if not fixed:
                self.storage_ports[i] = free_port()
            p = self.storage_procs[i] = self._spawn(
                's%d' % i, 'neostorage', '--bind',
                '127.0.0.1:%d' % self.storage_ports[i], '--adapter', 'SQLite',
                '--database', self.storage_db(i))
            if self._listening(p, self.storage_ports[i]):
                return
            if not fixed:
                self.storage_ports[i] = None
            time.sleep(0.5)
        raise RuntimeError('NEO storage node %d did not start; see %s:\n%s'
                           % (i, self._log('s%d' % i), self._tail('s%d' % i)))

    def start_admin(self):
        for _ in range(5):
            self.admin_port = free_port()
            self.admin = self._spawn('admin', 'neoadmin', '--bind', self.admin_addr)
            if self._listening(self.admin, self.admin_port):
                return
            time.sleep(0.5)
        raise RuntimeError('NEO admin node did not start; see %s:\n%s'
                           % (self._log('admin'), self._tail('admin')))

    @staticmethod
    def _listening(proc, port, timeout=30):
        """Wait until `proc` accepts on `port` -> True; False if it exited
        (port taken meanwhile?)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if _accepts(port):
                return True
            time.sleep(0.05)
        _stop_proc(proc)
        return False

    def start(self, timeout=60):
        """Start every node and wait until the cluster serves (see
        ``wait_ready``)."""
        os.makedirs(self.dir, exist_ok=True)
        try:
            self.start_master()
            for i in range(self.nstorages):
                self.start_storage(i)
            self.start_admin()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill_storage(self, i):
        """SIGKILL storage node i, as a crash would."""
        p = self.storage_procs[i]
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)

    def pause_storage(self, i):
        os.kill(self.storage_procs[i].pid, signal.SIGSTOP)

    def resume_storage(self, i):
        os.kill(self.storage_procs[i].pid, signal.SIGCONT)

    def kill_master(self):
        if self.master is not None and self.master.poll() is None:
            os.kill(self.master.pid, signal.SIGKILL)
            self.master.wait(timeout=30)

    def stop(self):
        """Stop every node by its PID: SIGTERM, then SIGKILL."""
        procs = [self.admin] + self.storage_procs + [self.master]
        for p in procs:
            if p is not None and p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        for p in procs:
            _stop_proc(p)

    # ~~~ state

    def ctl(self, *args, timeout=30):
        """neoctl -a ADMIN args... -> its output (RuntimeError if it fails)."""
        p = subprocess.run(['neoctl', '-a', self.admin_addr] + list(args),
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError('neoctl %s failed (rc=%d): %s%s'
                               % (' '.join(args), p.returncode, p.stdout, p.stderr))
        return p.stdout

    def nodes(self):
        """-> {address: (type, state)} from ``neoctl print node``."""
        out = {}
        for line in self.ctl('print', 'node').splitlines():
            f = [x.strip() for x in line.split('|')]
            if len(f) >= 4:
                out[f[2]] = (f[1], f[3])
        return out

    def pt(self):
        """-> {storage id: cell letters, one a partition} from ``neoctl print
        pt`` (U: up to date, O: out of date, F: feeding, .: none)."""
        out = {}
        for line in self.ctl('print', 'pt').splitlines():
            if line.startswith('#') or not line.strip():
                continue
            f = line.split()
            out[f[0]] = f[-1]
        return out

    def ready(self):
        """Every storage node RUNNING, every partition with `replicas + 1`
        cells UP_TO_DATE and the cluster RUNNING -> '' ; else what is not."""
        try:
            nodes = self.nodes()
            running = sorted(a for a, (t, s) in nodes.items()
                             if t == 'STORAGE' and s == 'RUNNING')
            want = sorted('127.0.0.1:%d' % p for p in self.storage_ports)
            if running != want:
                return 'storage nodes RUNNING: %s of %s' % (running, want)
            cells = list(self.pt().values())
            for k in range(self.partitions):
                up = sum(1 for c in cells if len(c) > k and c[k] == 'U')
                if up < self.replicas + 1:
                    return 'partition %d: %d cells UP_TO_DATE: %s' % (k, up, cells)
            state = self.ctl('print', 'cluster').strip()
            if state != 'RUNNING':
                return 'cluster %s' % state
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return str(e)
        return ''

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            why = self.ready()
            if not why:
                return
            for what, p in [('master', self.master), ('admin', self.admin)] + \
                    [('s%d' % i, p) for i, p in enumerate(self.storage_procs)]:
                if p is not None and p.poll() is not None:
                    raise RuntimeError('NEO %s exited (rc=%s); see %s:\n%s'
                                       % (what, p.returncode, self._log(what),
                                          self._tail(what)))
            if time.monotonic() > deadline:
                raise RuntimeError('NEO cluster not ready within %ss: %s'
                                   % (timeout, why))
            time.sleep(0.1)

    def records(self, i):
        """The object records (partition, oid, tid) storage node i's SQLite
        database holds (its ``obj`` table; NEO keeps the oid of a record
        divided by the number of partitions, with its partition)."""
        import sqlite3
        c = sqlite3.connect('file:%s?mode=ro' % self.storage_db(i), uri=True,
                            timeout=30)
        try:
            return set(c.execute('SELECT partition, oid, tid FROM obj'))
        finally:
            c.close()

    def objects(self, i):
        """How many object records storage node i's SQLite database holds."""
        return len(self.records(i))


# ~~~ latency

class DelayProxy:
    """127.0.0.1:port -> 127.0.0.1:target_port, each direction delayed by
    `delay` seconds (one-way; a round trip costs 2 * delay).  Data keeps
    flowing while delayed: the link has latency, not less bandwidth.  Runs
    in its own process (so that it takes no GIL from the client measured),
    stopped by its PID."""

    def __init__(self, target_port, delay):
        self.target_port = target_port
        self.delay = delay
        self.port = None
        self.proc = None

    def start(self, timeout=30):
        self.proc = subprocess.Popen(
            [sys.executable, '-c', 'from wendelin_cy.testing.servers import '
             '_proxy_main; _proxy_main(%d, %r)' % (self.target_port, self.delay)],
            env=env_with_src(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()      # its port, once listening
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError('DelayProxy did not start: %r' % line)
        self.port = int(line)
        return self

    def stop(self):
        p = self.proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def _proxy_main(target_port, delay):
    async def pump(reader, writer):
        loop = asyncio.get_running_loop()
        q = asyncio.Queue()

        async def rd():
            while True:
                try:
                    data = await reader.read(1 << 20)
                except OSError:
                    data = b''
                await q.put((loop.time() + delay, data))
                if not data:
                    return

        async def wr():
            while True:
                due, data = await q.get()
                d = due - loop.time()
                if d > 0:
                    await asyncio.sleep(d)
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(rd(), wr())
        except Exception:
            pass
        finally:
            writer.close()

    async def conn(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection('127.0.0.1', target_port)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pump(creader, swriter), pump(sreader, cwriter),
                             return_exceptions=True)

    async def main():
        server = await asyncio.start_server(conn, '127.0.0.1', 0)
        sys.stdout.write('%d\n' % server.sockets[0].getsockname()[1])
        sys.stdout.flush()
        await asyncio.Event().wait()         # until killed

    asyncio.run(main())
