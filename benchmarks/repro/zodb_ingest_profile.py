import os, sys, time, cProfile, pstats
sys.path.insert(0, os.environ.get('WCY_SRC', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'src')))
import numpy as np, transaction, wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
wendelin_cy.set_ram_budget('256M')
path = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-ingest.fs')
for e in ('', '.index', '.lock', '.tmp'):
    if os.path.exists(path + e): os.unlink(path + e)
root = dbopen(path); root['A'] = A = ZBigArray((0,), np.float64, zblk_fmt=os.environ.get('FMT')); transaction.commit()
c = np.random.default_rng(0).random(4 << 20)
def run():
    for i in range(16):
        c[0] = i; A.append(c); transaction.commit()
t0 = time.perf_counter()
cProfile.run('run()', path + '.prof')
print('GB/s', round(16 * c.nbytes / (time.perf_counter() - t0) / 1e9, 3))
pstats.Stats(path + '.prof').sort_stats('tottime').print_stats(14)
dbclose(root)
for e in ('', '.index', '.lock', '.tmp'):
    if os.path.exists(path + e): os.unlink(path + e)
