"""Crash trials at scale: kill -9 during commits, then check that the
database holds the last committed state or the one in flight, never a lost
or torn one.  Not part of the test run (tests/test_reliability_crash.py
keeps 50 short trials of the same kind).

    python benchmarks/crash_trials.py --storage file --trials 1000
    python benchmarks/crash_trials.py --storage zeo --trials 1000

The writer (wendelin_cy.testing.crash: two ZBigArrays, 64 KiB blocks, a
1 MiB RAM budget, formats auto and ZBlk1, so that commits spill, append,
resize, and write blob segments where the storage has blobs) records the
digest of each state before (P) and after (C) commit().  ``file``:
FileStorage with blobs (dbopen of a path), the writer killed.  ``zeo``: a
ZEO server over a FileStorage; half of the trials kill the server (then the
writer) in the middle of a commit and restart it, the others kill the
writer.  The database is reopened and its digest must be that of the last
C line or of a later P line.  Prints a JSON summary; exit 1 on any
violation.
"""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'src'))

import transaction  # noqa: E402

from wendelin_cy.lib.zodb import dbopen, dbclose  # noqa: E402
from wendelin_cy.testing.crash import Zygote, acceptable, digest, read_records  # noqa: E402
from wendelin_cy.testing.servers import ZEOServer  # noqa: E402


def _wait(pred, timeout=30, step=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--storage', choices=('file', 'zeo'), default='file')
    ap.add_argument('--trials', type=int, default=1000)
    ap.add_argument('--fresh-every', type=int, default=20)
    ap.add_argument('--dir', default=None)
    ap.add_argument('--seed', type=int, default=None)
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), 'little')
    rnd = random.Random(seed)
    top = a.dir or tempfile.mkdtemp(prefix='crash-%s-' % a.storage)
    os.makedirs(top, exist_ok=True)
    stats = dict(storage=a.storage, trials=0, seed=seed, commits=0, last_committed=0,
                 in_flight_landed=0, server_kills=0, writer_kills=0, violations=0,
                 errors=[], fsck=0)
    z = Zygote()
    srv = None
    t0 = time.monotonic()
    try:
        previous = None
        for trial in range(a.trials):
            if trial % a.fresh_every == 0:
                d = os.path.join(top, 'db%d' % trial)
                os.makedirs(d)
                fs = os.path.join(d, 'data.fs')
                if srv is not None:
                    srv.stop()
                    shutil.rmtree(os.path.dirname(srv.path), ignore_errors=True)
                if a.storage == 'zeo':
                    srv = ZEOServer(fs).start()
                    uri = srv.uri
                else:
                    if trial:
                        shutil.rmtree(os.path.dirname(uri), ignore_errors=True)
                    uri = fs
                previous = None
            rec = os.path.join(top, 'rec%d' % trial)
            pid = z.run_writer(uri, rec, rnd.getrandbits(32))
            started = _wait(lambda: any(k == 'S' for k, _, _ in read_records(rec)), 60)
            kill_server = a.storage == 'zeo' and rnd.random() < 0.5
            if started:
                k = rnd.randint(1, 4)
                _wait(lambda: sum(1 for x, _, _ in read_records(rec) if x == 'P') >= k, 30)
                time.sleep(rnd.uniform(0, 0.02))
            if kill_server:
                srv.kill()
                stats['server_kills'] += 1
            status = z.kill_and_wait(pid)
            stats['writer_kills'] += 1
            recs = read_records(rec)
            if kill_server:
                srv.start()
            ok = acceptable(recs, previous)
            root = dbopen(uri)
            try:
                got = digest(root) if 'A' in root else None
                transaction.abort()
            finally:
                dbclose(root)
            stats['trials'] += 1
            stats['commits'] += sum(1 for k, _, _ in recs if k == 'C')
            if status != -9 or got not in ok:
                stats['violations'] += 1
                stats['errors'].append(dict(trial=trial, status=status, got=got,
                                            ok=sorted(x for x in ok if x), tail=recs[-4:]))
                print('VIOLATION', stats['errors'][-1], flush=True)
            last = [dg for kd, _, dg in recs if kd in 'SC']
            if last and got != last[-1]:
                stats['in_flight_landed'] += 1
            else:
                stats['last_committed'] += 1
            previous = got
            os.unlink(rec)
            if (trial + 1) % 50 == 0:
                print('%d trials, %.0f s: %s' % (trial + 1, time.monotonic() - t0,
                      {k: v for k, v in stats.items() if k != 'errors'}), flush=True)
    finally:
        z.close()
        if srv is not None:
            srv.stop()
    stats['seconds'] = round(time.monotonic() - t0)
    print(json.dumps(stats))
    return 1 if stats['violations'] else 0


if __name__ == '__main__':
    sys.exit(main())
