"""Soak: many actors over ZEO for a long time (not part of the test run).

    python benchmarks/soak.py --minutes 30 [--kill-server-every 120]

A ZEO server over a FileStorage; 4 processes x 4 threads, each thread with a
connection and transaction manager of its own:

* writers: pick an array and a region (one block) at random, write random
  values into a random slice of it, store the region's new sum in the
  region's small record (a PersistentMapping), commit; one commit in 8 is
  aborted instead; conflicts (and, with the server killed, disconnections)
  are aborted and retried;
* the appender (process 0, thread 0): appends to a log array and records its
  length and sum in the same transaction;
* the reader (process 3, thread 3): at one snapshot, checks every region's
  sum and the log's length and sum against their records.

The parent samples every process's RSS (VmRSS) each second; each must stay
<= the RAM budget + 128 MiB (the summary has each minute's maximum too).  Optionally the ZEO server is killed (SIGKILL)
and restarted every N seconds.  Prints a JSON summary (commits, conflicts,
checks, violations, crashes, max RSS); exit 1 on a violation, a crash or an
RSS over the bound.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')
sys.path.insert(0, SRC)

NARRAYS = 2
BLK = 256 * 1024                # bytes per block = per region
N = 32 * BLK // 8               # int64 per array: 8 MiB, 32 regions
REG = BLK // 8
BUDGET = 64 << 20
SLACK = 128 << 20


def setup(uri):
    import numpy as np
    import transaction
    from persistent.mapping import PersistentMapping
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbopen, dbclose
    root = dbopen(uri)
    rng = np.random.default_rng(1)
    root['arrays'] = []
    root['sums'] = []
    arrays, sums = [], []
    for _ in range(NARRAYS):
        A = ZBigArray((N,), np.int64, blksize=BLK)
        A[:] = rng.integers(0, 1000, N)
        arrays.append(A)
        sums.append([PersistentMapping(sum=int(A[r * REG:(r + 1) * REG].sum()))
                     for r in range(N // REG)])
    root['arrays'] = arrays
    root['sums'] = sums
    root['log'] = ZBigArray((0,), np.int64, blksize=BLK)
    root['logmeta'] = PersistentMapping(n=0, sum=0)
    transaction.commit()
    dbclose(root)


def _retryable():
    from ZODB.POSException import ConflictError, StorageError
    from ZEO.Exceptions import ClientDisconnected
    return (ConflictError, ClientDisconnected, StorageError)


def worker(uri, proc, nthreads, duration, out):
    import numpy as np
    import transaction
    import wendelin_cy
    from wendelin_cy.lib.zodb import dbopen
    wendelin_cy.set_ram_budget(BUDGET)
    retry = _retryable()
    root0 = dbopen(uri)
    db = root0._p_jar.db()
    lock = threading.Lock()
    st = dict(proc=proc, commits=0, aborts=0, conflicts=0, disconnects=0, checks=0,
              violations=0, errors=0, appends=0, last_error='')
    deadline = time.monotonic() + duration

    def record(kind, e=None):
        with lock:
            st[kind] += 1
            if e is not None:
                st['last_error'] = '%s: %s' % (type(e).__name__, str(e)[:300])

    def run(tid):
        rng = np.random.default_rng(proc * 100 + tid)
        tm = transaction.TransactionManager()
        conn = None
        role = ('append' if (proc, tid) == (0, 0) else
                'read' if (proc, tid) == (3, nthreads - 1) else 'write')
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = db.open(tm)
                tm.begin()
                root = conn.root()
                if role == 'read':
                    bad = []
                    for a, A in enumerate(root['arrays']):
                        s = A[:].reshape(-1, REG).sum(axis=1)
                        for r, rec in enumerate(root['sums'][a]):
                            if int(s[r]) != rec['sum']:
                                bad.append((a, r, int(s[r]), rec['sum']))
                    L, meta = root['log'], root['logmeta']
                    if L.shape[0] != meta['n'] or int(L[:].sum()) != meta['sum']:
                        bad.append(('log', L.shape[0], meta['n']))
                    tm.abort()
                    record('checks')
                    if bad:
                        record('violations', AssertionError(repr(bad[:3])))
                    time.sleep(0.2)
                    continue
                if role == 'append':
                    L, meta = root['log'], root['logmeta']
                    k = int(rng.integers(1, 20000))
                    v = rng.integers(-1000, 1000, k)
                    L.append(v)
                    meta['n'] = meta['n'] + k
                    meta['sum'] = meta['sum'] + int(v.sum())
                    if L.shape[0] > 4 * N:          # keep it bounded
                        L.resize((0,))
                        meta['n'], meta['sum'] = 0, 0
                    tm.commit()
                    record('appends')
                    continue
                a = int(rng.integers(0, NARRAYS))
                r = int(rng.integers(0, N // REG))
                A = root['arrays'][a]
                lo = r * REG + int(rng.integers(0, REG))
                hi = min((r + 1) * REG, lo + int(rng.integers(1, REG)))
                if rng.random() < 0.5:
                    A[lo:hi] = rng.integers(0, 1000, hi - lo)
                else:
                    a_ = A[lo:hi]
                    a_ += 1
                    del a_
                root['sums'][a][r]['sum'] = int(A[r * REG:(r + 1) * REG].sum())
                if rng.random() < 0.125:
                    tm.abort()
                    record('aborts')
                else:
                    tm.commit()
                    record('commits')
            except retry as e:
                tm.abort()
                from ZODB.POSException import ConflictError
                record('conflicts' if isinstance(e, ConflictError) else 'disconnects')
                if not isinstance(e, ConflictError):
                    time.sleep(0.5)
            except Exception as e:
                tm.abort()
                if 'Disconnected' in type(e).__name__ or 'disconnect' in str(e).lower():
                    record('disconnects', e)
                    time.sleep(0.5)
                else:
                    record('errors', e)
                    import traceback
                    with lock:
                        st.setdefault('tracebacks', [])
                        if len(st['tracebacks']) < 5:
                            st['tracebacks'].append(traceback.format_exc()[-1500:])
                    time.sleep(0.1)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(5)
        with lock:
            with open(out, 'w') as f:
                json.dump(st, f)
    with open(out, 'w') as f:
        json.dump(st, f)


def rss(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for ln in f:
                if ln.startswith('VmRSS:'):
                    return int(ln.split()[1]) * 1024
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--minutes', type=float, default=30)
    ap.add_argument('--procs', type=int, default=4)
    ap.add_argument('--threads', type=int, default=4)
    ap.add_argument('--kill-server-every', type=float, default=0, help='seconds (0: never)')
    ap.add_argument('--dir', default=None)
    a = ap.parse_args(argv)
    from wendelin_cy.testing.servers import ZEOServer, env_with_src
    top = a.dir or tempfile.mkdtemp(prefix='soak-')
    os.makedirs(top, exist_ok=True)
    srv = ZEOServer(os.path.join(top, 'soak.fs')).start()
    setup(srv.uri)
    duration = a.minutes * 60
    procs = []
    for p in range(a.procs):
        out = os.path.join(top, 'w%d.json' % p)
        code = ('import sys; sys.path.insert(0, %r); import soak; soak.worker(%r, %d, %d, %r, %r)'
                % (HERE, srv.uri, p, a.threads, duration, out))
        procs.append((subprocess.Popen([sys.executable, '-c', code], env=env_with_src(),
                                       stderr=open(os.path.join(top, 'w%d.err' % p), 'w')),
                      out))
    maxrss = [0] * a.procs
    bymin = []                  # [minute][process]: max RSS in that minute
    over = []
    kills = 0
    t0 = time.monotonic()
    next_kill = t0 + a.kill_server_every if a.kill_server_every else None
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        while any(p.poll() is None for p, _ in procs):
            for i, (p, _) in enumerate(procs):
                r = rss(p.pid) if p.poll() is None else None
                if r:
                    maxrss[i] = max(maxrss[i], r)
                    m = int((time.monotonic() - t0) // 60)
                    while len(bymin) <= m:
                        bymin.append([0] * a.procs)
                    bymin[m][i] = max(bymin[m][i], r)
                    if r > BUDGET + SLACK:
                        over.append((i, round(time.monotonic() - t0), r))
            if next_kill and time.monotonic() >= next_kill:
                srv.kill()
                kills += 1
                time.sleep(0.5)
                srv.start()
                next_kill += a.kill_server_every
            if time.monotonic() - t0 > duration + 600:
                for p, _ in procs:
                    p.kill()
            time.sleep(1)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        srv.stop()
    stats = []
    for p, out in procs:
        try:
            with open(out) as f:
                s = json.load(f)
        except (OSError, ValueError):
            s = {}
        s['exit'] = p.returncode
        stats.append(s)
    tot = {k: sum(s.get(k, 0) for s in stats) for k in
           ('commits', 'aborts', 'conflicts', 'disconnects', 'checks', 'violations',
            'errors', 'appends')}
    summary = dict(minutes=a.minutes, procs=a.procs, threads=a.threads,
                   server_kills=kills, crashes=sum(1 for s in stats if s['exit'] != 0),
                   max_rss_mib=[round(m / 2**20, 1) for m in maxrss],
                   rss_bound_mib=(BUDGET + SLACK) >> 20, rss_over=len(over),
                   max_rss_mib_by_minute=[[round(m / 2**20) for m in row] for row in bymin],
                   per_process=stats, **tot)
    print(json.dumps(summary))
    bad = summary['crashes'] or tot['violations'] or over or tot['errors']
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
