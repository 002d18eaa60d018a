"""Cost of the block checksums: ingest, warm scan, cold scan, before and
after, in one run, alternating.

    python benchmarks/bench_checksum.py [--before TREE] [--after .] \
        [--mib 256] [--repeat 3] [--fmt auto|ZBlk0]

Without --before, 'before' is this tree with no digests made at commit (the
child replaces ``digest`` by a constant in every module that has it) and content checks off; with --before, a tree without checksums.

Each measurement is a fresh child process with PYTHONPATH=<tree>/src.
ingest: a ZBigArray of --mib MiB float64 written in slices and committed
(FileStorage with blobs, dbopen of a path); warm scan: the sum of the array
read by a new process, its files in the page cache; cold scan: the same after
``sync; echo 3 > /proc/sys/vm/drop_caches``.  'after' runs with content
checks on (WENDELIN_CY_VERIFY=1) and off (WENDELIN_CY_VERIFY=0, the default).  Medians in MB/s.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = r'''
import os, sys, time, numpy as np, transaction
from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.bigarray.array_zodb import ZBigArray
import wendelin_cy.bigfile._zio, wendelin_cy.bigfile._zblk
if os.environ.get('BENCH_NO_DIGEST'):       # the digests' cost at commit: none made
    from wendelin_cy.storage import checksum
    d0, z = checksum.digest, lambda b, _z=bytes(8): _z
    for m in list(sys.modules.values()):
        if getattr(m, 'digest', None) is d0:
            m.digest = z
op, path, mib, fmt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
n = mib * 2**20 // 8
if op == 'ingest':
    root = dbopen(path)
    t0 = time.perf_counter()
    root['A'] = A = ZBigArray((n,), np.float64, zblk_fmt=None if fmt == 'auto' else fmt)
    step = 2**20
    for i in range(0, n, step):
        A[i:i + step] = np.arange(i, min(n, i + step), dtype=np.float64)
    transaction.commit()
    dt = time.perf_counter() - t0
else:
    root = dbopen(path)
    A = root['A']
    t0 = time.perf_counter()
    s = float(A[:].sum())
    dt = time.perf_counter() - t0
    assert s == float(np.arange(n, dtype=np.float64).sum()), s
dbclose(root)
print(mib * 2**20 / dt / 1e6)
'''


def run(tree, op, path, mib, fmt, env_extra):
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(tree), 'src'),
               WENDELIN_CY_RAM_BUDGET=str(512 << 20), **env_extra)
    r = subprocess.run([sys.executable, '-c', CHILD, op, path, str(mib), fmt], env=env,
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return float(r.stdout.split()[-1])


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--before', default=None)
    ap.add_argument('--after', default='.')
    ap.add_argument('--mib', type=int, default=256)
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--fmt', default='auto')
    ap.add_argument('--dir', default=None)
    a = ap.parse_args(argv)
    before = ((a.before, {}) if a.before else
              (a.after, {'BENCH_NO_DIGEST': '1', 'WENDELIN_CY_VERIFY': '0'}))
    variants = [('before',) + before,
                ('after, checks on', a.after, {'WENDELIN_CY_VERIFY': '1'}),
                ('after, checks off', a.after, {'WENDELIN_CY_VERIFY': '0'})]
    res = {v[0]: {'ingest': [], 'warm': [], 'cold': []} for v in variants}
    for _ in range(a.repeat):
        for name, tree, env in variants:
            d = tempfile.mkdtemp(dir=a.dir, prefix='ck-')
            path = os.path.join(d, 'data.fs')
            try:
                res[name]['ingest'].append(run(tree, 'ingest', path, a.mib, a.fmt, env))
                run(tree, 'scan', path, a.mib, a.fmt, env)           # (page cache warm)
                res[name]['warm'].append(run(tree, 'scan', path, a.mib, a.fmt, env))
                drop_caches()
                res[name]['cold'].append(run(tree, 'scan', path, a.mib, a.fmt, env))
            finally:
                shutil.rmtree(d, ignore_errors=True)
    out = {name: {k: round(statistics.median(v)) for k, v in r.items()} for name, r in res.items()}
    for k in ('ingest', 'warm', 'cold'):
        b = out['before'][k]
        for name in out:
            out[name][k + '_vs_before_%'] = round(100 * (out[name][k] - b) / b, 1)
    print(json.dumps(dict(mib=a.mib, fmt=a.fmt, repeat=a.repeat, results=out, raw=res), indent=1))


if __name__ == '__main__':
    main()
