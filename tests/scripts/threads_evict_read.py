import sys, threading, os, numpy as np, transaction, ZODB
from ZODB.FileStorage import FileStorage
import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray

NT = 4; N = 128 * 1024; TBS = 256 * 1024; rounds = 30
def pat(g, i, n): return np.arange(n, dtype=np.int64) * 7 + g * 1000003 + i * 10**12
def gen(a, i):
    g = int((a[0] - i * 10**12) // 1000003)
    bad = np.flatnonzero(a != pat(g, i, a.shape[0]))
    assert bad.size == 0, 'array %d mixes: elt %d = %d (g %d), %d bad' % (i, bad[0], a[bad[0]], g, bad.size)
    return g
d = sys.argv[1]   # the test's own tmp_path: the os._exit below skips any cleanup
db = ZODB.DB(FileStorage(d + '/data.fs'))
tm = transaction.TransactionManager(); c = db.open(tm); r = c.root()
for i in range(NT):
    r['A%d' % i] = ZBigArray((N,), np.int64, blksize=TBS); r['A%d' % i][:] = pat(0, i, N)
tm.commit(); c.close()
wendelin_cy.set_ram_budget(1 << 20)
errors = []
def work(t):
    try:
        tm = transaction.TransactionManager(); conn = db.open(tm); root = conn.root()
        rng = np.random.default_rng(t)
        for g in range(1, rounds + 1):
            tm.begin()
            for i in rng.permutation(NT):
                a = root['A%d' % i][:]; gen(a, i); del a
            A = root['A%d' % t]; a = A[:]
            assert gen(a, t) == g - 1
            for lo in rng.permutation(np.arange(0, N, 4096)):
                a[lo:lo + 4096] = pat(g, t, N)[lo:lo + 4096]
            del a
            tm.commit()
        tm.abort()
    except BaseException as e:
        errors.append(repr(e))
ths = [threading.Thread(target=work, args=(t,)) for t in range(NT)]
for th in ths: th.start()
for th in ths: th.join(50)
if any(th.is_alive() for th in ths):
    print('HANG'); sys.stdout.flush(); os._exit(2)
print('ERR' if errors else 'OK', errors[:1]); sys.stdout.flush(); os._exit(1 if errors else 0)
