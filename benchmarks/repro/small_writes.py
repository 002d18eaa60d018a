"""Where the store growth of 1000 random element writes + one commit goes.

    python benchmarks/repro/small_writes.py [SIZE [NWRITES]]     # default 2G 1000

Builds (once, kept in $TMPDIR/wcy-repro-small.fs*) a float64 ZBigArray of
SIZE in 2 MiB blocks on dbopen's FileStorage with blobs, appended 32 MiB at a
time with a commit each (as benchmarks/compare.py's ingest does), copies it,
then in the copy writes NWRITES random elements and commits once, 3 times.
Prints, per round: the commit's time (writes included), numpy.memmap's time
for the same writes + flush on a raw file, the store growth, and the records
of the last transaction summed by class (count, bytes of pickles); then a
full warm scan of the array with its overlays and of the one without.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.environ.get('WCY_SRC') or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'src'))

import numpy as np                                          # noqa: E402
import transaction                                          # noqa: E402

from wendelin_cy.bigarray.array_zodb import ZBigArray       # noqa: E402
from wendelin_cy.lib.zodb import dbclose, dbopen            # noqa: E402

MiB = 1 << 20
TMP = os.environ.get('TMPDIR', '/tmp')


def size_of(path):
    n = os.path.getsize(path)
    for d, _, files in os.walk(path + '.blobs'):
        n += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return n


def build(path, nbytes):
    if os.path.exists(path):
        return
    root = dbopen(path)
    root['A'] = A = ZBigArray((0,), np.float64)
    transaction.commit()
    rng = np.random.default_rng(0)
    step = 32 * MiB // 8
    base = rng.random(step)
    for i in range(nbytes // (32 * MiB)):
        base[0] = i
        A.append(base)
        transaction.commit()
    del A
    dbclose(root)


def last_txn(path):
    from ZODB.FileStorage import FileStorage
    from ZODB.utils import get_pickle_metadata
    st = FileStorage(path, read_only=True)
    try:
        by = defaultdict(lambda: [0, 0])
        recs = []
        for txn in st.iterator():
            recs = [rec.data for rec in txn]
        for data in recs:
            mod, cls = get_pickle_metadata(data)
            by[cls][0] += 1
            by[cls][1] += len(data)
        return dict(by)
    finally:
        st.close()


def main():
    nbytes = int(float(sys.argv[1].rstrip('G')) * (1 << 30)) if len(sys.argv) > 1 else 2 << 30
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    src = os.path.join(TMP, 'wcy-repro-small.fs')
    build(src, nbytes)
    d = tempfile.mkdtemp(prefix='wcy-small-', dir=TMP)
    try:
        path = os.path.join(d, 'db.fs')
        shutil.copy(src, path)
        shutil.copytree(src + '.blobs', path + '.blobs')
        os.sync()
        raw = os.path.join(d, 'raw.f8')
        subprocess.run(['truncate', '-s', str(nbytes), raw], check=True)
        n = nbytes // 8
        rng = np.random.default_rng(42)
        root = dbopen(path)
        A = root['A']
        a = A[:]
        mm = np.memmap(raw, np.float64, 'r+')
        mm[::512] = 1.0             # every page of the raw file exists
        mm.flush()
        for r in range(3):
            idx = rng.integers(0, n, k)
            vals = rng.random(k)
            s0 = size_of(path)
            t0 = time.perf_counter()
            for i, x in zip(idx, vals):
                a[i] = x
            transaction.commit()
            t = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i, x in zip(idx, vals):
                mm[i] = x
            mm.flush()
            tm = time.perf_counter() - t0
            grow = size_of(path) - s0
            print('round %d: %d writes + commit %.0f ms (memmap %.0f ms), store +%.2f MiB'
                  % (r, k, t * 1e3, tm * 1e3, grow / MiB))
            if r == 0 or os.environ.get('ALL_ROUNDS'):
                dbclose(root)
                for cls, (c, b) in sorted(last_txn(path).items(), key=lambda x: -x[1][1]):
                    print('    %-12s %5d records %10.1f KiB' % (cls, c, b / 1024))
                root = dbopen(path)
                A = root['A']
                a = A[:]
        del a, A
        dbclose(root)
        # a full scan of the array with its overlays (page cache warm: the
        # second pass of a fresh open), against the same scan of the copy
        # without them
        for name, p in (('with overlays', path), ('written whole', src)):
            ts = []
            for _ in range(2):
                root = dbopen(p)
                A = root['A']
                t0 = time.perf_counter()
                step = 256 * MiB // 8
                for lo in range(0, A.shape[0], step):
                    np.sum(A[lo:lo + step])
                ts.append(time.perf_counter() - t0)
                del A
                dbclose(root)
            print('scan %s: %.2f GB/s (warm, 2nd open)' % (name, nbytes / ts[-1] / 1e9))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == '__main__':
    main()
