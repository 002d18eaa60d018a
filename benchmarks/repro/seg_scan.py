# ZBigArray scan on the embedded default (dbopen: FileStorage with blobs; the
# blocks are ZBlkSeg, mapped from segment files by the pager), 1 GiB, budget
# 256M, against numpy.memmap of a raw file with the same bytes.
# usage: [WCY_SRC=.../src] [BASE_SRC=.../src] python seg_scan.py cold|warm|prof [GiB]
#   BASE_SRC: also measure that wendelin_cy (e.g. a snapshot of the commit
#   before), interleaved with this one (A/B, same run)
#   cold: page cache dropped before every pass (root); 3 passes, each in a new process
#   warm: page cache warm; passes 1, 2, 3 of one new process (the first is
#         the "first pass of a new process" of issue 18)
#   prof: cProfile of one warm first pass
# Also prints the pager counters of the last pass and how much of the data
# was mapped as 2 MiB folios (FilePmdMapped in /proc/self/smaps) mid-scan.
import os, sys, time, subprocess, json
SRC = os.environ.get('WCY_SRC', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'src'))
sys.path.insert(0, SRC)
import numpy as np
D = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-seg')   # kept for reruns
GIB = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] != '--child' else 1.0
N = int(GIB * (1 << 30))
STEP = 256 << 20


def build():
    import transaction
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbopen, dbclose
    os.makedirs(D, exist_ok=True)
    root = dbopen(os.path.join(D, 'data.fs'))
    root['A'] = A = ZBigArray((0,), np.float64)
    transaction.commit()
    c = np.random.default_rng(0).random(4 << 20)       # 32 MiB appends
    with open(os.path.join(D, 'raw.f8'), 'wb') as f:
        for i in range(N // c.nbytes):
            c[0] = i
            A.append(c)
            f.write(c.tobytes())
            if (i + 1) % 8 == 0:
                transaction.commit()
    transaction.commit()
    dbclose(root)
    os.sync()


def pmd_kib():
    n = 0
    with open('/proc/self/smaps') as f:
        for line in f:
            if line.startswith('FilePmdMapped:'):
                n += int(line.split()[1])
    return n


def scan_wcy(passes):
    import wendelin_cy
    from wendelin_cy.lib.zodb import dbopen, dbclose
    wendelin_cy.set_ram_budget('256M')
    # what dbopen imports, imported before the clock starts (as for the
    # repeats after the first of benchmarks/compare.py)
    import importlib
    for m in ('transaction', 'ZODB.FileStorage', 'ZODB.blob', 'wendelin_cy.bigarray.array_zodb'):
        importlib.import_module(m)
    out = []
    pmd = None
    for p in range(passes):
        t0 = time.perf_counter()
        root = dbopen(os.path.join(D, 'data.fs'))
        a = root['A'][:]
        s = 0.0
        for lo in range(0, len(a), STEP // 8):
            s += float(np.sum(a[lo:lo + STEP // 8]))
            if lo == 0 and pmd is None:
                pmd = pmd_kib() // 1024
        del a
        dbclose(root)
        out.append(N / (time.perf_counter() - t0) / 1e9)
    st = wendelin_cy.pager_stats()
    keys = ('loads', 'zerocopy_loads', 'readahead_blocks', 'readahead_cached',
            'readahead_cache_checked', 'faults')
    return out, {k: st[k] for k in keys if k in st}, pmd


def scan_mm(passes):
    out = []
    for p in range(passes):
        t0 = time.perf_counter()
        a = np.memmap(os.path.join(D, 'raw.f8'), np.float64, 'r')
        s = 0.0
        for lo in range(0, len(a), STEP // 8):
            s += float(np.sum(a[lo:lo + STEP // 8]))
        del a
        out.append(N / (time.perf_counter() - t0) / 1e9)
    return out, {}, None


def drop():
    subprocess.run(['sync'])
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def child(kind, passes):
    r = (scan_wcy if kind == 'wcy' else scan_mm)(passes)
    print(json.dumps(r))


def run(kind, passes):
    env = dict(os.environ)
    if kind == 'base':
        env['WCY_SRC'] = os.environ['BASE_SRC']
    p = subprocess.run([sys.executable, __file__, '--child', 'wcy' if kind == 'base' else kind,
                        str(passes), str(GIB)], capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
    if sys.argv[1] == '--child':
        GIB = float(sys.argv[4])
        N = int(GIB * (1 << 30))
        child(sys.argv[2], int(sys.argv[3]))
        sys.exit()
    if not os.path.exists(os.path.join(D, 'raw.f8')):
        build()
    mode = sys.argv[1]
    if mode == 'prof':
        import cProfile, pstats
        cProfile.run('scan_wcy(1)', os.path.join(D, 'prof'))
        pstats.Stats(os.path.join(D, 'prof')).sort_stats('tottime').print_stats(15)
        sys.exit()
    kinds = ('wcy', 'base', 'mm') if os.environ.get('BASE_SRC') else ('wcy', 'mm')
    res = {k: [] for k in kinds}
    for r in range(int(os.environ.get('REPEAT', 3))):       # interleaved
        for kind in kinds:
            if mode == 'cold':
                drop()
                v, st, pmd = run(kind, 1)
            else:
                run(kind, 1)            # page cache warm
                v, st, pmd = run(kind, 3)
            res[kind].append(v)
            if kind == 'wcy':
                last = st, pmd
    for kind in kinds:
        per = list(zip(*res[kind]))
        print(kind, mode, 'GB/s by pass (medians of 3):',
              [round(float(np.median(x)), 2) for x in per], 'all', [[round(x, 2) for x in v] for v in res[kind]])
    w = [float(np.median(x)) for x in zip(*res['wcy'])]
    m = [float(np.median(x)) for x in zip(*res['mm'])]
    print('ratio wcy/memmap by pass:', [round(a / b, 2) for a, b in zip(w, m)])
    if 'base' in res:
        b = [float(np.median(x)) for x in zip(*res['base'])]
        print('ratio base/memmap by pass:', [round(a / c, 2) for a, c in zip(b, m)])
    print('pager:', last[0], 'FilePmdMapped after the first 256 MiB: %s MiB' % last[1])
