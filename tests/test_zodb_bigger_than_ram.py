"""Arrays bigger than the pager's RAM budget, in a process with a small budget:
appends, a transaction that changes more than the budget, reductions."""

from _zodb_util import run_py


def test_bigger_than_budget(tmp_path):
    out = run_py('''
import numpy as np, transaction, wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
budget = wendelin_cy.get_ram_budget()
assert budget == 8 << 20, budget
root = dbopen('big.fs')
root['A'] = A = ZBigArray((0,), np.int64)
transaction.commit()
n = 1 << 20                       # 8 MiB per append
for i in range(6):                # 48 MiB in total, 6x the budget
    A.append(np.arange(n) + i)
    transaction.commit()
a = A[:]
want = sum(((np.arange(n) + i).sum()) for i in range(6))
print(int(a.sum()) == int(want))
# change every element in one transaction: 48 MiB dirty > budget
a += 1
transaction.commit()
print(int(a.sum()) == int(want) + 6 * n)
print(float(np.mean(a)) == (int(want) + 6 * n) / (6 * n))
st = wendelin_cy.pager_stats()
print(st['peak_resident'] <= 2 * budget and st['spills'] > 0 and st['evictions'] > 0, st)
# blocks reclaimed by the pager are not watched forever
from wendelin_cy.bigfile.file_zodb import _ZBigFileIO
_ZBigFileIO.PRUNE_MIN = 0
io = root['A']._fileh.bigfile
nwatched = len(io._loaded)
transaction.abort()
print(nwatched == 24, 0 < len(io._loaded) <= 8, len(io._loaded))
# and invalidation still reaches every block, watched or not
db = root._p_jar.db()
tm2 = transaction.TransactionManager()
c2 = db.open(tm2)
b = c2.root()['A'][:]
b[:] = 7
tm2.commit()
transaction.abort()
print(bool((a == 7).all()))
del a, b
c2.close()
dbclose(root)
root = dbopen('big.fs')
a = root['A'][:]
print(bool((a == 7).all()), a.shape)
del a
dbclose(root)
''', cwd=tmp_path, timeout=600, WENDELIN_CY_RAM_BUDGET='8M')
    lines = out.split('\n')
    assert lines[0] == 'True'
    assert lines[1] == 'True'
    assert lines[2] == 'True'
    assert lines[3].startswith('True'), lines[3]
    assert lines[4].startswith('True True'), lines[4]
    assert lines[5] == 'True'
    assert lines[6] == 'True (6291456,)'
