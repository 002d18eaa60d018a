"""The workloads of issue 18 (performance 2), as asv benchmarks.

One float64 array (256 MiB by default, `$WCY_ASV_PERF2_SIZE`; the budget is
a quarter of it) as a ZBigArray on the embedded default (a FileStorage with
blobs, as `dbopen(path)` makes it), beside numpy.memmap over a raw file and
an HDF5 dataset with 2 MiB chunks, all built once (`setup_cache`):

  ingest          append + durable commit (bench_zodb.Ingest, IngestOthers)
  cold scan       np.sum over 32 MiB views after dropping the page cache
                  (root only; else skipped)
  capped scan     the same in a fresh process inside a memory cgroup of
                  budget + 256 MiB (root and cgroup v1 only), against memmap
                  in the same harness
  warm 1st pass   np.sum over a freshly opened database, page cache warm
  random reads    2000 element reads through one view, against h5py
  random writes   1000 element writes + commit, against memmap + flush;
                  track_: the store growth of those writes

benchmarks/compare.py runs the same workloads at 2 GiB, medians of 3, and
prints them against the issue's bars.
"""
import os
import subprocess
import sys

import numpy as np

from .common import MiB, mkdtemp, parse_size, set_ram_budget, warm, write_raw

import transaction
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

SIZE = parse_size(os.environ.get('WCY_ASV_PERF2_SIZE', '256M'))
BUDGET = SIZE // 4
STEP = 32 * MiB
BLKSIZE = 2 * MiB
NREADS = 2000
NWRITES = 1000
HERE = os.path.dirname(os.path.abspath(__file__))


def _drop_caches():
    if os.geteuid() != 0:
        raise NotImplementedError('dropping the page cache needs root')
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def _tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(path) for f in fs)


def _store_size(fs):
    return _tree_size(fs) + (_tree_size(fs + '.blobs') if os.path.exists(fs + '.blobs') else 0)


def _sum_views(A, n):
    s = 0.0
    step = STEP // 8
    for i in range(0, n, step):
        s += float(np.sum(A[i:i + step]))
    return s


class _Data:
    """The three data sets, built once for the classes below."""
    timeout = 600

    def setup_cache(self):
        d = mkdtemp('perf2')
        raw = os.path.join(d, 'raw.f8')
        write_raw(raw, SIZE)
        fs = os.path.join(d, 'db.fs')
        root = dbopen(fs)
        root['A'] = A = ZBigArray((0,), np.float64, blksize=BLKSIZE)
        transaction.commit()
        mm = np.memmap(raw, np.float64, 'r')
        for i in range(0, len(mm), STEP // 8):
            A.append(np.asarray(mm[i:i + STEP // 8]))
            transaction.commit()
        del mm
        dbclose(root)
        h5 = None
        try:
            import h5py
        except ImportError:
            pass
        else:
            h5 = os.path.join(d, 'data.h5')
            with h5py.File(h5, 'w') as f:
                ds = f.create_dataset('a', (SIZE // 8,), np.float64, chunks=(BLKSIZE // 8,))
                src = np.memmap(raw, np.float64, 'r')
                for i in range(0, len(src), STEP // 8):
                    ds[i:i + STEP // 8] = src[i:i + STEP // 8]
        return {'dir': d, 'raw': raw, 'fs': fs, 'h5': h5}


class _Once(_Data):
    """Each sample is one run from a fresh state made by setup()."""
    number = 1
    repeat = 3
    warmup_time = 0


class ColdScan(_Once):
    def setup(self, paths):
        set_ram_budget(BUDGET)
        _drop_caches()

    def time_zbigarray(self, paths):
        root = dbopen(paths['fs'])
        A = root['A']
        _sum_views(A, A.shape[0])
        del A
        dbclose(root)

    def time_memmap(self, paths):
        mm = np.memmap(paths['raw'], np.float64, 'r')
        _sum_views(mm, len(mm))


_CAPPED = r'''
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import wendelin_cy
from wendelin_cy.lib.zodb import dbopen, dbclose
kind, path, budget, step = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
wendelin_cy.set_ram_budget(budget)
s = 0.0
if kind == 'zbigarray':
    root = dbopen(path); A = root['A']; n = A.shape[0]
else:
    A = np.memmap(path, np.float64, 'r'); n = len(A)
for i in range(0, n, step):
    s += float(np.sum(A[i:i + step]))
print(s)
'''


class CappedScan(_Once):
    """A fresh process in a memory cgroup (budget + 256 MiB), cold at first."""
    CG = '/sys/fs/cgroup/memory/wcy_asv_perf2'

    def setup(self, paths):
        if os.geteuid() != 0 or not os.path.isdir('/sys/fs/cgroup/memory'):
            raise NotImplementedError('needs root and cgroup v1 memory')
        os.makedirs(self.CG, exist_ok=True)
        with open(os.path.join(self.CG, 'memory.limit_in_bytes'), 'w') as f:
            f.write(str(BUDGET + 256 * MiB))
        _drop_caches()

    def teardown(self, paths):
        try:
            os.rmdir(self.CG)
        except OSError:
            pass

    def _run(self, kind, path):
        cg = os.path.join(self.CG, 'cgroup.procs')

        def enter():
            with open(cg, 'w') as f:
                f.write(str(os.getpid()))
        src = os.path.join(os.path.dirname(HERE), 'src')
        subprocess.run([sys.executable, '-c', _CAPPED, src, kind, path, str(BUDGET),
                        str(STEP // 8)], check=True, preexec_fn=enter,
                       stdout=subprocess.DEVNULL)

    def time_zbigarray(self, paths):
        self._run('zbigarray', paths['fs'])

    def time_memmap(self, paths):
        self._run('memmap', paths['raw'])


class WarmFirstPass(_Once):
    """np.sum over a freshly opened database (a new handle: nothing mapped,
    nothing in the pager), the page cache warm."""
    repeat = 5

    def setup(self, paths):
        set_ram_budget(BUDGET)
        warm(paths['raw'])
        for d, _, fs in os.walk(paths['dir']):
            for f in fs:
                warm(os.path.join(d, f))
        self.root = dbopen(paths['fs'])

    def teardown(self, paths):
        dbclose(self.root)

    def time_zbigarray(self, paths):
        A = self.root['A']
        _sum_views(A, A.shape[0])
        A._p_deactivate()

    def time_memmap(self, paths):
        mm = np.memmap(paths['raw'], np.float64, 'r')
        _sum_views(mm, len(mm))


class RandomReads(_Data):
    """NREADS random element reads (page cache warm, pager budget full)."""

    def setup(self, paths):
        set_ram_budget(BUDGET)
        self.root = dbopen(paths['fs'])
        self.a = self.root['A'][:]
        self.n = len(self.a)
        self.idx = [int(i) for i in np.random.default_rng(1).integers(0, self.n, NREADS)]
        self.h5 = None
        if paths['h5']:
            import h5py
            self.h5 = h5py.File(paths['h5'], 'r')

    def teardown(self, paths):
        del self.a
        dbclose(self.root)
        if self.h5 is not None:
            self.h5.close()

    def time_zbigarray(self, paths):
        a = self.a
        for i in self.idx:
            a[i]

    def time_h5py(self, paths):
        if self.h5 is None:
            raise NotImplementedError('h5py is not installed')
        d = self.h5['a']
        for i in self.idx:
            d[i]


class RandomWrites(_Once):
    """NWRITES random element writes and one commit (flush for memmap)."""

    def setup(self, paths):
        set_ram_budget(BUDGET)
        self.root = dbopen(paths['fs'])
        self.A = self.root['A']
        rng = np.random.default_rng()
        self.idx = [int(i) for i in rng.integers(0, self.A.shape[0], NWRITES)]
        self.vals = rng.random(NWRITES).tolist()

    def teardown(self, paths):
        transaction.abort()
        del self.A
        dbclose(self.root)

    def time_zbigarray_commit(self, paths):
        a = self.A[:]
        for i, v in zip(self.idx, self.vals):
            a[i] = v
        transaction.commit()

    def time_memmap_flush(self, paths):
        mm = np.memmap(paths['raw'], np.float64, 'r+')
        for i, v in zip(self.idx, self.vals):
            mm[i] = v
        mm.flush()

    def track_store_growth(self, paths):
        s0 = _store_size(paths['fs'])
        self.time_zbigarray_commit(paths)
        return _store_size(paths['fs']) - s0
    track_store_growth.unit = 'bytes'
