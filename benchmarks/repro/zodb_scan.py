# ZBigArray warm scan (512 MiB FileStorage, page cache warm, budget 128M): GB/s and us per block
# usage: [WCY_SRC=.../src] [NO_PREFETCH=1] python zodb_scan.py [prof]
import os, sys, time
sys.path.insert(0, os.environ.get('WCY_SRC', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'src')))
import numpy as np, transaction, wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
wendelin_cy.set_ram_budget('128M')
if os.environ.get('NO_PREFETCH'):         # A/B: the ZBigFile readahead of 672073c off
    import wendelin_cy.bigfile.file_zodb as _fz
    if hasattr(_fz._ZBigFileIO, 'prefetch'):
        del _fz._ZBigFileIO.prefetch
path = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-scan.fs')  # 512 MiB, kept
N = 512 << 20
if not os.path.exists(path):
    root = dbopen(path); root['A'] = A = ZBigArray((0,), np.float64); transaction.commit()
    c = np.random.default_rng(0).random(4 << 20)
    for i in range(N // c.nbytes):
        c[0] = i; A.append(c); transaction.commit()
    dbclose(root)
root = dbopen(path); A = root['A']
np.sum(A[:])
ts = []
for r in range(5):
    t0 = time.perf_counter(); np.sum(A[:]); ts.append(time.perf_counter() - t0)
print('zodb scan GB/s', sorted(round(N / t / 1e9, 2) for t in ts), 'us/block', round(min(ts) / (N >> 21) * 1e6))
st = root._p_jar._storage
oid = A.zfile.blktab[3]._p_oid
ts = []
for r in range(50):
    t0 = time.perf_counter(); p, _ = st.load(oid); ts.append(time.perf_counter() - t0)
print('storage.load of one 2 MiB record: median us', round(np.median(ts) * 1e6))
buf = bytearray(2 << 20)
ts = []
mv = memoryview(p)
for r in range(50):
    t0 = time.perf_counter(); buf[:len(p) - 100] = mv[50:len(p) - 50]; ts.append(time.perf_counter() - t0)
print('memcpy 2 MiB: median us', round(np.median(ts) * 1e6))
if len(sys.argv) > 1:
    import cProfile, pstats
    cProfile.run('np.sum(A[:]); np.sum(A[:])', path + '.prof')
    pstats.Stats(path + '.prof').sort_stats('tottime').print_stats(12)
dbclose(root)
