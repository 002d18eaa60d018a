"""ZBigArray over a ZODB FileStorage: ingest, warm scan, growth per small change,
1000 random writes + commit (time and store growth),
for each ZBlk format (ZBlk0, ZBlk1, auto), with h5py / zarr on the same data.

The format is passed as ZBigArray(..., zblk_fmt=fmt), the argument the ZODB
layer offers (same effect as $WENDELIN_CY_ZBLK_FMT, see bigfile/file_zodb.py).
Page cache warm everywhere (data written in setup); cold and capped runs are in
benchmarks/compare.py.
"""
import os

import numpy as np

from .common import MiB, mkdtemp, rmtree, set_ram_budget, parse_size

import transaction
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

FORMATS = ['ZBlk0', 'ZBlk1', 'blob', 'auto']   # ('auto' = blob on dbopen's FileStorage)
BLKSIZE = 2 * MiB
CHUNK = 8 * MiB                     # ingest: append + commit of 8 MiB
INGEST = 64 * MiB
SCAN = 128 * MiB                    # 4x the budget below
BUDGET = '32M'


def _chunks(nbytes, step=CHUNK, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(step // 8)
    for i in range(nbytes // step):
        base[0] = i
        yield base


def _zodb_array(path, nbytes, fmt):
    root = dbopen(path)
    root['A'] = A = ZBigArray((0,), np.float64, blksize=BLKSIZE, zblk_fmt=fmt)
    transaction.commit()
    for c in _chunks(nbytes):
        A.append(c)
        transaction.commit()
    dbclose(root)


class Ingest:
    """append(8 MiB) + commit, 64 MiB per call, into a new FileStorage."""
    params = [FORMATS]
    param_names = ['zblk_fmt']
    timeout = 180

    def setup(self, fmt):
        set_ram_budget(BUDGET)
        self.d = mkdtemp('zodb-ingest')
        self.i = 0

    def teardown(self, fmt):
        rmtree(self.d)

    def _path(self, name):
        self.i += 1
        return os.path.join(self.d, '%s-%d' % (name, self.i))

    def time_zbigarray_append_commit(self, fmt):
        _zodb_array(self._path('db.fs'), INGEST, fmt)

    def peakmem_zbigarray_append_commit(self, fmt):
        _zodb_array(self._path('db.fs'), INGEST, fmt)


class IngestOthers:
    """The same ingest with h5py (chunked 2 MiB, flush per append) and zarr
    (uncompressed, 2 MiB chunks)."""
    timeout = 180

    def setup(self):
        self.d = mkdtemp('ingest-others')
        self.i = 0

    def teardown(self):
        rmtree(self.d)

    def _path(self, name):
        self.i += 1
        return os.path.join(self.d, '%s-%d' % (name, self.i))

    def time_h5py_append_flush(self):
        import h5py
        with h5py.File(self._path('data.h5'), 'w') as f:
            d = f.create_dataset('A', shape=(0,), maxshape=(None,),
                                 chunks=(BLKSIZE // 8,), dtype=np.float64)
            n = 0
            for c in _chunks(INGEST):
                d.resize((n + len(c),))
                d[n:n + len(c)] = c
                n += len(c)
                f.flush()

    def time_zarr_append(self):
        import zarr
        z = zarr.create_array(store=self._path('data.zarr'), shape=(0,),
                              chunks=(BLKSIZE // 8,), dtype=np.float64,
                              compressors=None, fill_value=0.0)
        for c in _chunks(INGEST):
            z.append(c)


class WarmScan:
    """np.sum through one view of a 128 MiB ZBigArray under a 32 MiB budget
    (every scan loads every block from the FileStorage, page cache warm)."""
    params = [FORMATS]
    param_names = ['zblk_fmt']
    timeout = 300

    def setup_cache(self):
        # asv runs setup_cache in a directory it removes afterwards
        set_ram_budget(BUDGET)
        paths = {}
        for fmt in FORMATS:
            paths[fmt] = os.path.abspath('scan-%s.fs' % fmt)
            _zodb_array(paths[fmt], SCAN, fmt)
        return paths

    def setup(self, paths, fmt):
        set_ram_budget(BUDGET)
        self.root = dbopen(paths[fmt])
        self.A = self.root['A']
        np.sum(self.A[:])                       # page cache warm

    def teardown(self, paths, fmt):
        transaction.abort()
        del self.A
        dbclose(self.root)

    def time_scan(self, paths, fmt):
        np.sum(self.A[:])

    def peakmem_scan(self, paths, fmt):
        np.sum(self.A[:])


class WarmScanOthers:
    """The same 128 MiB scanned with h5py (chunk loop, 32 MiB read_direct),
    zarr (32 MiB slices) and numpy.memmap, page cache warm."""
    timeout = 300

    def setup_cache(self):
        import h5py
        import zarr
        h5 = os.path.abspath('scan.h5')
        zp = os.path.abspath('scan.zarr')
        raw = os.path.abspath('scan.f8')
        z = zarr.create_array(store=zp, shape=(SCAN // 8,), chunks=(BLKSIZE // 8,),
                              dtype=np.float64, compressors=None, fill_value=0.0)
        with h5py.File(h5, 'w') as f, open(raw, 'wb') as r:
            d = f.create_dataset('A', shape=(SCAN // 8,), chunks=(BLKSIZE // 8,),
                                 dtype=np.float64)
            n = 0
            for c in _chunks(SCAN):
                d[n:n + len(c)] = c
                z[n:n + len(c)] = c
                r.write(c.tobytes())
                n += len(c)
        return h5, zp, raw

    def setup(self, paths):
        for p in paths:
            if os.path.isfile(p):
                with open(p, 'rb') as f:
                    while f.read(32 * MiB):
                        pass

    def time_h5py_chunk_loop(self, paths):
        import h5py
        step = 32 * MiB // 8
        buf = np.empty(step)
        with h5py.File(paths[0], 'r') as f:
            d = f['A']
            s = 0.0
            for lo in range(0, d.shape[0], step):
                d.read_direct(buf, np.s_[lo:lo + step])
                s += buf.sum()

    def time_zarr_slices(self, paths):
        import zarr
        z = zarr.open_array(paths[1], mode='r')
        step = 32 * MiB // 8
        sum(z[lo:lo + step].sum() for lo in range(0, z.shape[0], step))

    def time_memmap(self, paths):
        np.sum(np.memmap(paths[2], np.float64, 'r'))


class Growth:
    """Database growth for one changed element (8 bytes) + commit, in a
    16 MiB ZBigArray: ZBlk0 rewrites the 2 MiB block, ZBlk1 one 32 KiB chunk
    (+ BTree node), auto writes a ZBlk1 overlay of the changed chunk."""
    params = [FORMATS]
    param_names = ['zblk_fmt']
    timeout = 120
    NBYTES = 16 * MiB

    def setup(self, fmt):
        set_ram_budget('64M')
        self.d = mkdtemp('zodb-growth')
        self.path = os.path.join(self.d, 'db.fs')
        _zodb_array(self.path, self.NBYTES, fmt)
        self.root = dbopen(self.path)
        self.A = self.root['A']
        self.a = self.A[:]
        self.rng = np.random.default_rng(2)

    def teardown(self, fmt):
        del self.a
        transaction.abort()
        del self.A
        dbclose(self.root)
        rmtree(self.d)

    def _change(self):
        self.a[int(self.rng.integers(0, len(self.a)))] = self.rng.random()
        transaction.commit()

    def time_small_change_commit(self, fmt):
        self._change()

    def track_db_growth_per_small_change(self, fmt):
        n = 8
        s0 = os.path.getsize(self.path)
        for _ in range(n):
            self._change()
        return (os.path.getsize(self.path) - s0) / n
    track_db_growth_per_small_change.unit = 'bytes'


class SmallWrites:
    """1000 random element writes + one commit in a 512 MiB float64 ZBigArray
    written whole before (dbopen's FileStorage with blobs: segment blocks),
    beside numpy.memmap's writes + flush on a raw file of the same size; and
    the store growth of those writes (issue 18: small writes stay small).
    The budget holds every block the writes dirty: what is measured is the
    commit, not the pager spilling dirty blocks (benchmarks/compare.py runs
    the 2 GiB case under a 512 MiB budget)."""
    number = 1
    repeat = 3
    timeout = 300
    NBYTES = 512 * MiB
    NWRITES = 1000

    def setup_cache(self):
        # asv runs setup_cache in a directory it removes afterwards
        path = os.path.abspath('small-writes.fs')
        root = dbopen(path)
        root['A'] = A = ZBigArray((0,), np.float64, blksize=BLKSIZE)
        transaction.commit()
        for c in _chunks(self.NBYTES, 32 * MiB):
            A.append(c)
            transaction.commit()
        del A
        dbclose(root)
        return path

    def setup(self, path):
        import shutil
        set_ram_budget('1G')
        self.d = mkdtemp('zodb-small-writes')
        self.path = os.path.join(self.d, 'db.fs')
        shutil.copy(path, self.path)
        shutil.copytree(path + '.blobs', self.path + '.blobs')
        self.raw = os.path.join(self.d, 'raw.f8')
        with open(self.raw, 'wb') as f:
            f.truncate(self.NBYTES)
        os.sync()
        self.root = dbopen(self.path)
        self.a = self.root['A'][:]
        self.mm = np.memmap(self.raw, np.float64, 'r+')
        rng = np.random.default_rng(3)
        self.idx = rng.integers(0, len(self.a), self.NWRITES)
        self.vals = rng.random(self.NWRITES)

    def teardown(self, path):
        del self.a, self.mm
        transaction.abort()
        dbclose(self.root)
        rmtree(self.d)

    def _writes(self, a):
        for i, x in zip(self.idx, self.vals):
            a[i] = x

    def time_writes_commit(self, path):
        self._writes(self.a)
        transaction.commit()

    def time_memmap_writes_flush(self, path):
        self._writes(self.mm)
        self.mm.flush()

    def track_store_growth(self, path):
        def size():
            n = os.path.getsize(self.path)
            for d, _, files in os.walk(self.path + '.blobs'):
                n += sum(os.path.getsize(os.path.join(d, f)) for f in files)
            return n
        s0 = size()
        self._writes(self.a)
        transaction.commit()
        return size() - s0
    track_store_growth.unit = 'bytes'
