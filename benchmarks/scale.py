#!/usr/bin/env python
"""Truly bigger than RAM: ingest and scan a ZBigArray larger than the machine.

    python benchmarks/scale.py --gib 48                 # 2x a 24 GiB machine (issue 18)
    python benchmarks/scale.py --gib 1 --budget 256M    # the same, small, in a minute
    python benchmarks/scale.py --gib 16 --storage zeo   # over a ZEO server on 127.0.0.1

Steps, one run, in this order (the raw file is deleted before the database
is written, so that the disk needs room for one copy only):

1. raw: write a raw file of --gib GiB in 64 MiB ``os.write`` pieces (the
   same bytes the array gets) and fsync it: the disk's write speed; drop the
   page cache; read it back with ``dd bs=64M`` and with 64 MiB ``preadv``
   into one reused buffer: the disk's read speed.
2. ingest: a fresh process, RAM budget --budget, appends the same 64 MiB
   pieces to a ``ZBigArray`` (float64, 1-d) and commits every --commit-every
   GiB (and at the end): GB/s including every commit.
3. scan: page cache dropped, a fresh process sums the array with ``np.sum``
   over views of 256 MiB and checks the sum against the one expected.

Every child reports its peak RSS (``VmHWM`` of /proc/self/status); the bar
is budget + 128 MiB.  Needs root for dropping the page cache (without it the
cold figures are warm ones, and the output says so).  ``--dir`` picks the disk
(default: the directory of this checkout's /tmp); everything is deleted at
the end unless --keep.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, 'src')

MiB = 1 << 20
GiB = 1 << 30
PIECE = 64 * MiB
VIEW = 256 * MiB


def vmhwm_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def drop_caches():
    subprocess.run(['sync'], check=True)
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('3\n')
        return True
    except OSError:
        return False


def piece(i, np):
    """Piece i of the data: float64 values i*n .. i*n+n-1 (cheap to make,
    different in every piece, a known sum)."""
    n = PIECE // 8
    return np.arange(i * n, (i + 1) * n, dtype=np.float64)


def expected_sum(npieces):
    n = npieces * (PIECE // 8)
    return float(n) * (n - 1) / 2


# ~~~ children (each a fresh process: its own VmHWM)

def child_raw_write(cfg):
    import numpy as np
    t0 = time.perf_counter()
    fd = os.open(cfg['path'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(cfg['npieces']):
            mv = memoryview(piece(i, np)).cast('B')
            while mv:
                mv = mv[os.write(fd, mv):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return {'seconds': time.perf_counter() - t0}


def child_raw_read(cfg):
    buf = bytearray(PIECE)
    t0 = time.perf_counter()
    fd = os.open(cfg['path'], os.O_RDONLY)
    try:
        off = 0
        while True:
            n = os.preadv(fd, [buf], off)
            if n == 0:
                break
            off += n
    finally:
        os.close(fd)
    return {'seconds': time.perf_counter() - t0, 'bytes': off}


def _open(cfg):
    sys.path.insert(0, SRC)
    import wendelin_cy
    from wendelin_cy.lib.zodb import dbopen
    wendelin_cy.set_ram_budget(cfg['budget'])
    return dbopen(cfg['uri'])


def child_ingest(cfg):
    import numpy as np
    import transaction
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbclose
    root = _open(cfg)
    every = max(1, cfg['commit_every'] // PIECE)
    t0 = time.perf_counter()
    root['A'] = A = ZBigArray((0,), np.float64)
    transaction.commit()
    for i in range(cfg['npieces']):
        A.append(piece(i, np))
        if (i + 1) % every == 0:
            transaction.commit()
    transaction.commit()
    dt = time.perf_counter() - t0
    shape = A.shape
    dbclose(root)
    return {'seconds': dt, 'shape': list(shape), 'vmhwm_mib': vmhwm_mib()}


def child_scan(cfg):
    import numpy as np
    from wendelin_cy.lib.zodb import dbclose
    root = _open(cfg)
    A = root['A']
    step = VIEW // 8
    t0 = time.perf_counter()
    total = 0.0
    for i in range(0, A.shape[0], step):
        total += float(np.sum(A[i:i + step]))
    dt = time.perf_counter() - t0
    dbclose(root)
    return {'seconds': dt, 'sum': total, 'vmhwm_mib': vmhwm_mib()}


CHILDREN = {'raw-write': child_raw_write, 'raw-read': child_raw_read,
            'ingest': child_ingest, 'scan': child_scan}


def run_child(step, cfg):
    r = subprocess.run([sys.executable, __file__, '--child', step, json.dumps(cfg)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit('%s failed (exit %d):\n%s' % (step, r.returncode, r.stderr[-4000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def dd_read(path):
    t0 = time.perf_counter()
    subprocess.run(['dd', 'if=' + path, 'of=/dev/null', 'bs=64M'], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def source_rev():
    try:
        return subprocess.run(['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'],
                              capture_output=True, text=True).stdout.strip() or 'unknown'
    except OSError:
        return 'unknown'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--gib', type=float, default=48, help='array size in GiB (default 48)')
    ap.add_argument('--budget', default='2G', help='RAM budget of the pager (default 2G)')
    ap.add_argument('--commit-every', type=float, default=1.0, help='GiB (default 1)')
    ap.add_argument('--storage', choices=['file', 'zeo'], default='file')
    ap.add_argument('--dir', default=None, help='where the files go (default /tmp)')
    ap.add_argument('--skip-raw', action='store_true', help='no raw-disk baseline')
    ap.add_argument('--keep', action='store_true')
    ap.add_argument('--json', help='write the results here too')
    ap.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, cfg = args.child
        sys.path.insert(0, SRC)     # this checkout's wendelin_cy, not an installed one
        print(json.dumps(CHILDREN[step](json.loads(cfg))))
        return

    sys.path.insert(0, SRC)
    from wendelin_cy.ram import parse_size
    budget = parse_size(args.budget)
    npieces = max(1, int(args.gib * GiB) // PIECE)
    nbytes = npieces * PIECE
    gb = nbytes / 1e9
    work = tempfile.mkdtemp(prefix='wcy-scale-', dir=args.dir)
    res = {'date': time.strftime('%Y-%m-%d'), 'commit': source_rev(), 'gib': nbytes / GiB,
           'budget_mib': budget / MiB, 'storage': args.storage}
    server = None
    try:
        if not args.skip_raw:
            raw = os.path.join(work, 'raw.f64')
            w = run_child('raw-write', {'path': raw, 'npieces': npieces})
            res['raw_write_gbs'] = gb / w['seconds']
            res['cold'] = drop_caches()
            res['dd_read_gbs'] = gb / dd_read(raw)
            drop_caches()
            r = run_child('raw-read', {'path': raw})
            assert r['bytes'] == nbytes, r
            res['pread_gbs'] = gb / r['seconds']
            os.unlink(raw)
        if args.storage == 'zeo':
            from wendelin_cy.testing.servers import ZEOServer
            server = ZEOServer(os.path.join(work, 'zeo.fs')).start()
            uri = server.uri
        else:
            uri = os.path.join(work, 'scale.fs')
        cfg = {'uri': uri, 'budget': budget, 'npieces': npieces,
               'commit_every': int(args.commit_every * GiB)}
        ing = run_child('ingest', cfg)
        assert ing['shape'] == [nbytes // 8], ing
        res['ingest_gbs'] = gb / ing['seconds']
        res['ingest_vmhwm_mib'] = ing['vmhwm_mib']
        res['cold'] = drop_caches() and res.get('cold', True)
        sc = run_child('scan', cfg)
        want = expected_sum(npieces)
        if abs(sc['sum'] - want) > 1e-9 * want:
            raise SystemExit('scan sum %r != expected %r' % (sc['sum'], want))
        res['scan_gbs'] = gb / sc['seconds']
        res['scan_vmhwm_mib'] = sc['vmhwm_mib']
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    bar = budget / MiB + 128
    print('%.1f GiB float64 on %s, budget %s, commit every %g GiB, commit %s, %s%s'
          % (res['gib'], args.storage, args.budget, args.commit_every, res['commit'], res['date'],
             '' if res['cold'] else ' (page cache NOT dropped: not root)'))
    if 'pread_gbs' in res:
        print('raw disk:   write %.2f GB/s   read dd %.2f GB/s   pread %.2f GB/s'
              % (res['raw_write_gbs'], res['dd_read_gbs'], res['pread_gbs']))
    line = 'ingest:     %.2f GB/s' % res['ingest_gbs']
    if 'raw_write_gbs' in res:
        line += ' = %.2fx raw write' % (res['ingest_gbs'] / res['raw_write_gbs'])
    print(line + '   peak RSS %.0f MiB (bar %.0f)' % (res['ingest_vmhwm_mib'], bar))
    line = 'cold scan:  %.2f GB/s' % res['scan_gbs']
    if 'pread_gbs' in res:
        line += ' = %.2fx pread, %.2fx dd' % (res['scan_gbs'] / res['pread_gbs'],
                                                res['scan_gbs'] / res['dd_read_gbs'])
    print(line + '   peak RSS %.0f MiB (bar %.0f)' % (res['scan_vmhwm_mib'], bar))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)


if __name__ == '__main__':
    main()
