# Reading / overwriting holes of a ZBigArray: loadblk copies 2 MiB of zeros per block (_zero)
import os, sys, time
sys.path.insert(0, os.environ.get('WCY_SRC', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'src')))
import numpy as np, transaction, wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
wendelin_cy.set_ram_budget('128M')
root = dbopen('memory://')
root['A'] = A = ZBigArray(((512 << 20) // 8,), np.float64)   # 512 MiB, all holes
transaction.commit()
import wendelin_cy.bigfile._zblk_io as fz   # (where _fill finds _zero)
calls = [0, 0.0]
orig = fz._zero
def timed(buf, s, e):
    t0 = time.perf_counter(); orig(buf, s, e); calls[0] += 1; calls[1] += time.perf_counter() - t0
fz._zero = timed
ts = []
for r in range(3):
    t0 = time.perf_counter(); np.sum(A[:]); ts.append(time.perf_counter() - t0)
print('scan of holes GB/s', [round(A.nbytes / t / 1e9, 2) for t in ts],
      '_zero: %d calls, %.0f us each, %.0f%% of the scan time' % (calls[0], calls[1] / calls[0] * 1e6, 100 * calls[1] / sum(ts)))
b = np.zeros(A.nbytes // 8); t0 = time.perf_counter(); np.sum(b); print('np.sum over RAM zeros GB/s %.2f' % (A.nbytes / (time.perf_counter() - t0) / 1e9))
transaction.abort(); dbclose(root)
