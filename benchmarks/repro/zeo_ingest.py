#!/usr/bin/env python
"""Where the memory of a ZBigArray ingest over ZEO goes (issue 18).

    python benchmarks/repro/zeo_ingest.py [MiB] [budget] [commit-every MiB]
    python benchmarks/repro/zeo_ingest.py 1024 256M 1024     # the default
    STORAGE=file python benchmarks/repro/zeo_ingest.py       # the same on FileStorage

Starts a ZEO server on 127.0.0.1 (over a FileStorage in a temporary
directory), then a fresh client process that appends 64 MiB pieces to a
ZBigArray with the pager's RAM budget set, committing every so many MiB.
The parent samples VmRSS of the client and of the server every 20 ms and
prints: ingest MB/s, the client's VmHWM (peak RSS), the server's peak RSS,
and the client's peak RSS over the phases (appending / committing).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

SRC = os.environ.get('WCY_SRC') or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 '..', '..', 'src')
MiB = 1 << 20
PIECE = 64 * MiB

CHILD = r'''
import json, sys, time
sys.path.insert(0, %(src)r)
import numpy as np, transaction, wendelin_cy
from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.bigarray.array_zodb import ZBigArray
wendelin_cy.set_ram_budget(%(budget)r)
root = dbopen(%(uri)r)
n = %(piece)d // 8
every = max(1, %(every)d // %(piece)d)
t0 = time.perf_counter()
root['A'] = A = ZBigArray((0,), np.float64)
transaction.commit()
for i in range(%(npieces)d):
    A.append(np.arange(i * n, (i + 1) * n, dtype=np.float64))
    if (i + 1) %% every == 0:
        transaction.commit()
transaction.commit()
dt = time.perf_counter() - t0
dbclose(root)
hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(json.dumps({'seconds': dt, 'vmhwm_mib': hwm / 1024}))
'''


def rss_mib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main():
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    budget = sys.argv[2] if len(sys.argv) > 2 else '256M'
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    sys.path.insert(0, SRC)
    from wendelin_cy.testing.servers import ZEOServer
    work = tempfile.mkdtemp(prefix='wcy-repro-zeo-')
    server = None
    try:
        if os.environ.get('STORAGE') == 'file':
            uri = os.path.join(work, 'data.fs')
        else:
            server = ZEOServer(os.path.join(work, 'zeo.fs')).start()
            uri = server.uri
        code = CHILD % {'src': SRC, 'budget': budget, 'uri': uri, 'piece': PIECE,
                        'every': every * MiB, 'npieces': max(1, mib * MiB // PIECE)}
        p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
        peak = {'client': 0.0, 'server': 0.0}
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak['client'] = max(peak['client'], rss_mib(p.pid))
                if server is not None:
                    peak['server'] = max(peak['server'], rss_mib(server.pid))
                time.sleep(0.02)
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        out, _ = p.communicate()
        done.set()
        t.join()
        if p.returncode:
            raise SystemExit('client failed: exit %d' % p.returncode)
        r = json.loads(out.strip().splitlines()[-1])
        print('%s: %d MiB, budget %s, commit every %d MiB: %.0f MB/s, client peak RSS '
              '%.0f MiB (bar %.0f), server peak RSS %.0f MiB'
              % ('file' if server is None else 'zeo', mib, budget, every,
                 mib * MiB / 1e6 / r['seconds'], r['vmhwm_mib'],
                 _parse(budget) / MiB + 128, peak['server']))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _parse(s):
    from wendelin_cy.ram import parse_size
    return parse_size(s)


if __name__ == '__main__':
    main()
