"""NEO (``neo.client.Storage``).

Records are loaded at the connection's snapshot and cut out of their
pickles (mvcc.Records), as for every fast backend.  NEO's client has no
``prefetch``, but one client storage serves every thread (each thread waits
for its own answers from the storage nodes): records are read ahead of a
sequential scan by our reader threads (storage.reader) with the storage's
public ``loadBefore`` at the connection's snapshot, as for MappingStorage,
so that the next block travels from its storage node while the scan works
on this one.  (The installed client has no asynchronous load of its own:
``Application.load`` asks and waits in the calling thread; its ``_ask``
machinery is per thread, so threads are how loads overlap.)

Compression: NEO's client, compression on (its default), runs zlib over
every record it stores; ``prepare`` makes it try big records on a 48 KiB
sample first and store those whose sample does not shrink as they are,
as NEO stores a record that does not compress (``skip_incompressible``;
random bytes, 2 storage nodes: 90 MiB/s against 34 for NEO's raw client,
benchmarks/bench_neo.py and docs/benchmarks.md).  ``compress=false`` in the URI turns it off entirely.

Bounded waits: NEO's client never gives up by itself (by design: no
request timeouts; a dead peer is seen when its socket closes, or after TCP
keepalives, 60 s + 3 x 10 s; a SIGSTOPped node's kernel still answers
those; with the master gone it tries to reconnect forever).  ``prepare``
bounds every load (``load``, ``loadBefore``, ``loadSerial``) and
``sync`` (a transaction start asks the master) by
``timeout`` seconds (``$WENDELIN_CY_STORAGE_TIMEOUT``, default 30, as
for ZEO): when a load has waited that long, a watchdog closes the
connections it waits on and marks those storage nodes as failed for the
client, so NEO asks another replica (a stopped node then behaves as a dead
one), and a reconnection to a master that is not there gives up.  If no
replica answers either, the load raises ``NEOTimeout`` (a TimeoutError:
transient for the pager, which retries in a page fault as for ZEO, see
lib/_netfaults).  Commits are not bounded: NEO must learn the outcome of
``tpc_finish`` however long the master is away.

Closing: NEO's client stops its poll thread by making it call
``_thread.exit()``, so the thread ends with ``SystemExit``.  Python's
default ``threading.excepthook`` ignores that, but hooks that report every
thread exception (pytest's, a service's crash reporter) take it for a
crash.  ``prepare(storage)`` - called by ``dbopen('neo://...')`` before the
thread starts - also gives the client a poll thread that ends quietly on
that exit (any other exception still propagates) and makes ``close()`` wait
for it, so that a closed storage has no thread or socket left; the
connection throttle NEO keeps per address, process-wide, is dropped for the
closed client's nodes (a database opened again right after connects at
once instead of waiting up to 1 s).
"""

import threading
import time

from . import mvcc
from .reader import READER

__all__ = ['NEOBackend', 'NEOTimeout', 'import_client', 'prepare',
           'quiet_close', 'skip_incompressible']


_IMPORT_LOCK = threading.Lock()


def import_client():
    """Import NEO's client (``neo.client.zodburi``) from any thread.

    ``neo.lib.logger`` installs two signal handlers when it is first imported
    (SIGRTMIN and SIGRTMIN+1: flush and reopen NEO's log), and
    ``signal.signal`` only works in the main thread: a database opened first
    from a worker thread (a dask worker's, say) failed with "signal only works
    in main thread".  Imported from another thread, those two handlers are
    not installed (NEO's log then flushes as it does without them: at exit;
    a process that imports NEO from its main thread first has them).  Raises
    ImportError when NEO is not installed."""
    import sys
    if 'neo.client.zodburi' in sys.modules:
        return
    if threading.current_thread() is threading.main_thread():
        import neo.client.zodburi  # noqa: F401
        return
    import signal
    with _IMPORT_LOCK:
        real = signal.signal

        def in_worker(signum, handler):
            if threading.current_thread() is threading.main_thread():
                return real(signum, handler)
            return signal.getsignal(signum)

        signal.signal = in_worker
        try:
            import neo.client.zodburi  # noqa: F401
        finally:
            signal.signal = real


class NEOBackend(mvcc.Records):
    kind = 'NEO'

    def serves(self, storage):
        return (type(storage).__module__ or '').startswith('neo.client')

    def prefetch(self, conn, oids):
        return READER.ask(mvcc.instance(conn), conn.db().storage, oids)

    # -- the reader threads' protocol

    def thread_snapshot(self, inst):
        return mvcc.instance_snapshot(inst)

    def thread_load(self, base, snap, oid):
        r = base.loadBefore(oid, snap)
        return r[0] if r else None


BACKEND = NEOBackend()
READER.register(BACKEND)


CLOSE_JOIN_TIMEOUT = 10     # seconds close() waits for the poll thread


def _forget_connect_limits(addrs):
    """NEO throttles connections to each address, process-wide: a connection
    made less than 1 s before (``SocketConnector.CONNECT_LIMIT``) delays the
    next one to that address until then, even from a client opened after
    the first was closed.  A closed client's limits are dropped, so that
    the next ``dbopen`` connects at once (0.8-1 s less per reopening)."""
    try:
        from neo.lib.connector import SocketConnector
    except ImportError:         # pragma: no cover
        return
    for addr in addrs:
        if addr is None:
            continue
        host, port = addr[0], addr[1]
        if isinstance(host, bytes):     # (node addresses: bytes, the limits': str)
            host = host.decode('ascii', 'replace')
        SocketConnector.connect_limit.pop((host, port), None)


def quiet_close(storage):
    """Make the poll thread of NEO `storage` (neo.client.Storage) end without
    an exception at close, and close() wait for it.  Does nothing if the
    thread already runs or the storage is not NEO's."""
    app = getattr(storage, 'app', None)
    old = getattr(app, 'poll_thread', None)
    if not isinstance(old, threading.Thread) or old.is_alive() or \
            getattr(app, '_wcy_quiet', False):
        return storage
    run = app.run

    def poll():
        try:
            run()
        except SystemExit as e:
            if e.code:          # not the plain exit of close()
                raise

    t = threading.Thread(target=poll, name=old.name)
    t.daemon = old.daemon
    app.poll_thread = t
    app._wcy_quiet = True
    close = storage.close

    def close_and_join():
        try:
            addrs = [n.getAddress() for n in app.nm.getList()]
        except Exception:       # pragma: no cover
            addrs = []
        close()
        if t.is_alive() and t is not threading.current_thread():
            t.join(CLOSE_JOIN_TIMEOUT)
        _forget_connect_limits(addrs)

    storage.close = close_and_join
    return storage


class NEOTimeout(TimeoutError):
    """A NEO load got no answer within the storage timeout."""


class _Forever:
    """Application.max_reconnection_to_master: endless (NEO's default),
    except for the threads whose wait the watchdog ended."""

    def __init__(self):
        self.expired = set()

    def __gt__(self, fail_count):       # (fail_count < max_reconnection...)
        return threading.get_ident() not in self.expired


class _Watchdog:
    """One thread that ends the loads which waited longer than their
    deadline: it closes the connections they wait on."""

    def __init__(self):
        self.lock = threading.Lock()
        self.waits = {}                 # thread id -> [deadline, app, queue, fired]
        self.thread = None

    def arm(self, app, timeout):
        w = [time.monotonic() + timeout, app, app._thread_container.queue, False]
        with self.lock:
            self.waits[threading.get_ident()] = w
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name='wendelin_cy-neo-watchdog')
                self.thread.start()
        return w

    def disarm(self, w):
        ident = threading.get_ident()
        with self.lock:
            if self.waits.get(ident) is w:
                del self.waits[ident]
        w[1].max_reconnection_to_master.expired.discard(ident)

    def _run(self):
        while True:
            time.sleep(0.1)
            now = time.monotonic()
            with self.lock:
                due = [(i, w) for i, w in self.waits.items()
                       if not w[3] and w[0] <= now]
                for _, w in due:
                    w[3] = True
            for ident, w in due:
                try:
                    self._expire(ident, w)
                except Exception:       # pragma: no cover
                    pass

    @staticmethod
    def _expire(ident, w):
        from neo.client import app as neo_app
        _, app, queue, _ = w
        app.max_reconnection_to_master.expired.add(ident)
        table = app.dispatcher.message_table
        waited = {cid for cid, msgs in list(table.items())
                  if any(q is queue for q in list(msgs.values()))}
        for conn in app.em.getConnectionList():
            if id(conn) in waited:
                uuid = conn.getUUID()
                if uuid is not None and conn is not app.master_conn:
                    app._node_failure_dict[uuid] = (time.time()
                                                    + neo_app.MAX_FAILURE_AGE)
                conn.close()


_WATCHDOG = _Watchdog()


def _bounded(app, fn, what, timeout):
    def load(*args):
        if threading.get_ident() in _WATCHDOG.waits:
            return fn(*args)            # (nested)
        w = _WATCHDOG.arm(app, timeout)
        try:
            return fn(*args)
        except Exception as e:
            if w[3] and not isinstance(e, NEOTimeout):
                raise NEOTimeout('NEO: %s got no answer within %gs ($%s); '
                                 'storage nodes or master down? (%s: %s)'
                                 % (what, timeout, 'WENDELIN_CY_STORAGE_TIMEOUT',
                                    type(e).__name__, e)) from e
            raise
        finally:
            _WATCHDOG.disarm(w)
    return load


# -- compression of big incompressible records

SAMPLE_MIN = 256 << 10      # records from this size on are sampled first
SAMPLE_PART = 16 << 10      # three parts: at the start, middle and end
SAMPLE_GAIN = 0.98          # compressed sample at least this big: not compressed

skipped = 0                 # records stored uncompressed by the sample (tests)


def skip_incompressible(app):
    """Make NEO client `app` (compression on) store big records whose sample
    does not compress uncompressed, without compressing them whole.

    NEO's client compresses every record it stores with zlib when
    compression is on (the default) and keeps the compressed form only if it
    is smaller.  Array blocks of numeric data rarely are: for 2 MiB of such
    bytes zlib costs about 70 ms on this machine (NEO's raw client stored
    random bytes at 34 MiB/s with compression on against 87 without).  A record of
    SAMPLE_MIN bytes or more is first tried on three SAMPLE_PART pieces
    (48 KiB, about 2 ms): if they compress to SAMPLE_GAIN of their size or
    more, the record is stored as is, as NEO itself would store a record that
    does not shrink (compression flag 0, readable by every NEO client);
    otherwise NEO's own compression runs on the whole record.  The one
    difference: a record that would have shrunk by less than about 2% is
    stored whole.  Does nothing when compression is off, or if `app.compress`
    is not NEO's (its ``_compress``: the zlib function it applies)."""
    compress = getattr(app, 'compress', None)
    zcompress = getattr(compress, '_compress', None)
    if zcompress is None or getattr(compress, '_wcy_sampled', False):
        return

    def sampled(data):
        global skipped
        n = len(data)
        if n >= SAMPLE_MIN:
            mv = memoryview(data)
            mid = (n - SAMPLE_PART) // 2
            sample = b''.join((mv[:SAMPLE_PART], mv[mid:mid + SAMPLE_PART],
                               mv[n - SAMPLE_PART:]))
            if len(zcompress(sample)) >= SAMPLE_GAIN * len(sample):
                skipped += 1
                return n, 0, data
        return compress(data)

    sampled._compress = zcompress
    sampled._wcy_sampled = True
    app.compress = sampled


def prepare(storage, timeout=None):
    """dbopen's set-up of a NEO client storage: loads bounded by `timeout`
    (default: $WENDELIN_CY_STORAGE_TIMEOUT, else 30 s), a quiet close, big
    incompressible records stored without compressing them whole
    (``skip_incompressible``)."""
    app = getattr(storage, 'app', None)
    if app is None or getattr(app, '_wcy_bounded', False):
        return quiet_close(storage)
    skip_incompressible(app)
    if timeout is None:
        from wendelin_cy.lib._netfaults import storage_timeout
        timeout = storage_timeout()
    app.max_reconnection_to_master = _Forever()
    for name in ('load', 'loadBefore', 'loadSerial', 'sync'):
        setattr(storage, name, _bounded(app, getattr(storage, name), name, timeout))
    app._wcy_bounded = True
    storage.wendelin_cy_timeout = timeout
    return quiet_close(storage)
