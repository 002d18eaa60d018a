#!/usr/bin/env python
"""Compare wendelin_cy with numpy.memmap, h5py, zarr and dask on the same workloads.

    python benchmarks/compare.py                       # 2 GiB float64, budget 512M
    python benchmarks/compare.py --quick               # smoke test (< 1 minute)
    python benchmarks/compare.py --only scan-warm,read-random --repeat 5
    python benchmarks/compare.py --json out.json --plot out.png

Systems (one 1-d float64 array of --size bytes each, all in one temp dir under
--dir, default /tmp, deleted at the end):

  wcy-file   wendelin_cy BigArray over BigFile_File (raw file), 2 MiB blocks
  wcy-zodb   wendelin_cy ZBigArray in a ZODB FileStorage, 2 MiB blocks
  memmap     numpy.memmap over a raw file
  zarr       zarr 3 array, uncompressed, chunk = blksize
  h5py       HDF5 dataset, chunked (chunk = blksize), no compression
  dask-zarr  dask.array.from_zarr over the zarr array (reads only)

Every (workload, system) runs in a fresh child process (``--child``), so peak
RSS (``VmHWM of the child) is per workload.  The datasets are built
once per system by the ingest step (also when ingest is not selected), and the
later workloads read them.  The pager budget (``WENDELIN_CY_RAM_BUDGET``) is
set in every child; it only bounds wendelin_cy.

Ratios: ``x memmap`` / ``x h5py`` are speed ratios, > 1 means faster than the
baseline: throughput / baseline throughput, or baseline latency / latency.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.environ.get('WENDELIN_CY_SRC') or os.path.join(ROOT, 'src')

MiB = 1 << 20
GiB = 1 << 30
ITEM = 8                    # float64
CHUNK = 32 * MiB            # ingest / scan step of the chunk loops
BLKSIZE = 2 * MiB

SYSTEMS = ['wcy-file', 'wcy-zodb', 'memmap', 'zarr', 'h5py', 'dask-zarr']
WORKLOADS = ['ingest', 'scan-warm', 'scan-warm1', 'scan-hot', 'scan-cold', 'scan-capped',
             'read-random',
             'read-random-smallblk', 'write-random', 'txn-2xbudget']
RUNS = {
    'ingest': ['wcy-file', 'wcy-zodb', 'memmap', 'zarr', 'h5py'],
    'scan-warm': SYSTEMS,
    'scan-warm1': ['wcy-file', 'wcy-zodb', 'memmap', 'zarr', 'h5py'],
    'scan-hot': SYSTEMS,
    'scan-cold': SYSTEMS,
    'scan-capped': SYSTEMS,
    'read-random': ['wcy-file', 'wcy-zodb', 'memmap', 'zarr', 'h5py'],
    'read-random-smallblk': ['wcy-file'],
    'write-random': ['wcy-file', 'wcy-zodb', 'memmap', 'zarr', 'h5py'],
    'txn-2xbudget': ['wcy-file', 'wcy-zodb'],
}
SMALL_BLKSIZE = 64 * 1024


def parse_size(text):
    units = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
    t = str(text).strip().upper().rstrip('B').rstrip('I')
    u = t[-1:] if t[-1:] in units else ''
    return int(float(t[:len(t) - len(u)]) * units[u])


def fmt_size(n):
    for u, s in ((GiB, 'G'), (MiB, 'M'), (1024, 'K')):
        if n >= u and n % u == 0:
            return '%d%s' % (n // u, s)
    return str(n)


def drop_caches():
    subprocess.run(['sync'], check=True)
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


# ~~~ the systems (used in the child only)

def _chunk_data(i, n):
    """A deterministic 32 MiB-ish chunk, different for every i."""
    import numpy as np
    global _BASE
    try:
        base = _BASE
    except NameError:
        base = _BASE = np.random.default_rng(0).random(CHUNK // ITEM)
    c = base[:n].copy() if n != len(base) else base
    c[0] = i            # cheap: every chunk differs
    return c


class System:
    # what open() imports the first time: imported before any clock starts
    # (a first pass of a new process times the scan of a warm page cache by a
    # process that has its libraries loaded, not the interpreter's imports:
    # those of ZODB alone, BTrees building its modules, take ~180 ms)
    modules = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = cfg['dir']
        self.blksize = cfg.get('blksize', BLKSIZE)

    def path(self, name):
        return os.path.join(self.dir, name)

    # ingest: create(); append(chunk); flush() ...; close()
    # read: open(); view(): ndarray-like for scans and single reads; close()
    def sum(self):
        return float(self.view().sum())

    def read1(self):
        v = self.view()
        return v.__getitem__

    def write_batch(self, idx, vals):
        v = self.view()
        for i, x in zip(idx, vals):
            v[i] = x
        self.flush()

    def nbytes_on_disk(self):
        return None


class WcyFile(System):
    name = 'wcy-file'
    modules = ('wendelin_cy.bigfile', 'wendelin_cy.bigarray')
    file = 'wcy.f8'

    def _open(self, path, n):
        from wendelin_cy.bigfile.file_file import BigFile_File
        from wendelin_cy.bigarray import BigArray
        import numpy as np
        self.f = BigFile_File(path, self.blksize)
        self.fh = self.f.fileh_open()
        self.A = BigArray((n,), np.float64, self.fh)
        self._v = None

    def create(self):
        p = self.path(self.file)
        if os.path.exists(p):
            os.unlink(p)
        self._open(p, 0)

    def append(self, chunk):
        self.A.append(chunk)

    def flush(self):
        self.fh.dirty_writeout()

    def open(self, path=None):
        p = path or self.path(self.file)
        self._open(p, os.path.getsize(p) // ITEM)

    def view(self):
        if self._v is None:
            self._v = self.A[:]
        return self._v

    def close(self):
        self._v = None
        if self.fh.isdirty():
            self.fh.dirty_writeout()
        # file size: the array may end inside a block
        n = self.A.nbytes
        self.A = None
        self.fh.close()
        if os.path.getsize(self.f.path) > n:
            os.truncate(self.f.path, n)
        self.f.close()

    def txn_big(self, nbytes):
        """One 'transaction' writing nbytes: fill through a view, write out."""
        import numpy as np
        p = self.path('wcy-txn.f8')
        self._open(p, nbytes // ITEM)
        a = self.A[:]
        step = CHUNK // ITEM
        for i, lo in enumerate(range(0, len(a), step)):
            a[lo:lo + step] = _chunk_data(i, min(step, len(a) - lo))
        del a
        self.fh.dirty_writeout()
        self.close()
        os.unlink(p)


class WcyZodb(System):
    name = 'wcy-zodb'
    modules = ('transaction', 'ZODB', 'ZODB.FileStorage', 'ZODB.blob', 'wendelin_cy.lib.zodb',
               'wendelin_cy.bigarray.array_zodb')
    file = 'data.fs'

    def _db(self):
        from wendelin_cy.lib.zodb import dbopen
        self.root = dbopen(self.path(self.file))
        self._v = None

    def create(self):
        import numpy as np
        import transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        for ext in ('', '.index', '.lock', '.tmp'):
            if os.path.exists(self.path(self.file + ext)):
                os.unlink(self.path(self.file + ext))
        shutil.rmtree(self.path(self.file + '.blobs'), ignore_errors=True)
        self._db()
        self.root['A'] = self.A = ZBigArray((0,), np.float64, blksize=self.blksize)
        transaction.commit()

    def append(self, chunk):
        self.A.append(chunk)

    def flush(self):
        import transaction
        transaction.commit()

    def open(self):
        self._db()
        self.A = self.root['A']

    def view(self):
        if self._v is None:
            self._v = self.A[:]
        return self._v

    def close(self):
        import transaction
        from wendelin_cy.lib.zodb import dbclose
        self._v = None
        transaction.commit()
        self.A = None
        dbclose(self.root)

    def nbytes_on_disk(self):
        n = os.path.getsize(self.path(self.file))
        for d, _, files in os.walk(self.path(self.file + '.blobs')):    # (dbopen's)
            n += sum(os.path.getsize(os.path.join(d, f)) for f in files)
        return n

    def txn_big(self, nbytes):
        import numpy as np
        import transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        self.root['T'] = T = ZBigArray((nbytes // ITEM,), np.float64,
                                      blksize=self.blksize)
        transaction.commit()
        a = T[:]
        step = CHUNK // ITEM
        for i, lo in enumerate(range(0, len(a), step)):
            a[lo:lo + step] = _chunk_data(i, min(step, len(a) - lo))
        del a
        transaction.commit()


class Memmap(System):
    name = 'memmap'
    file = 'raw.f8'

    def create(self):
        self.n = 0
        self.fd = open(self.path(self.file), 'wb+')
        self.mm = None

    def append(self, chunk):
        """The memmap way to append: grow the file, map the new tail, copy."""
        import numpy as np
        off = self.n * ITEM
        self.fd.truncate(off + chunk.nbytes)
        self.mm = np.memmap(self.fd, np.float64, 'r+', offset=off, shape=chunk.shape)
        self.mm[:] = chunk
        self.n += len(chunk)

    def flush(self):
        self.mm.flush()             # msync(MS_SYNC)

    def open(self):
        import numpy as np
        self.mm = np.memmap(self.path(self.file), np.float64, 'r+')

    def view(self):
        return self.mm

    def close(self):
        self.mm = None              # writers flushed already
        if getattr(self, 'fd', None) is not None:
            self.fd.close()


class Zarr(System):
    name = 'zarr'
    modules = ('zarr',)
    file = 'data.zarr'

    def create(self):
        import numpy as np
        import zarr
        p = self.path(self.file)
        shutil.rmtree(p, ignore_errors=True)
        self.z = zarr.create_array(store=p, shape=(0,), chunks=(self.blksize // ITEM,),
                                   dtype=np.float64, compressors=None, filters=None,
                                   fill_value=0.0, overwrite=True)
        self.n = 0

    def append(self, chunk):
        self.z.append(chunk)        # resize + write: whole chunks go to the store
        self.n += len(chunk)

    def flush(self):
        pass                        # every write is in the store already

    def open(self):
        import zarr
        self.z = zarr.open_array(self.path(self.file), mode='r+')

    def sum(self):
        z = self.z
        step = CHUNK // ITEM
        return float(sum(z[lo:lo + step].sum() for lo in range(0, z.shape[0], step)))

    def read1(self):
        return self.z.__getitem__

    def write_batch(self, idx, vals):
        for i, x in zip(idx, vals):
            self.z[int(i)] = x

    def close(self):
        self.z = None


class H5py(System):
    name = 'h5py'
    modules = ('h5py',)
    file = 'data.h5'

    def create(self):
        import h5py
        import numpy as np
        self.f = h5py.File(self.path(self.file), 'w')
        self.d = self.f.create_dataset('A', shape=(0,), maxshape=(None,),
                                       chunks=(self.blksize // ITEM,), dtype=np.float64)
        self.n = 0

    def append(self, chunk):
        n = self.n
        self.d.resize((n + len(chunk),))
        self.d[n:n + len(chunk)] = chunk
        self.n = n + len(chunk)

    def flush(self):
        self.f.flush()              # H5Fflush: to the OS, no fsync

    def open(self):
        import h5py
        self.f = h5py.File(self.path(self.file), 'r+')
        self.d = self.f['A']

    def sum(self):
        """The chunk loop: read 32 MiB (16 chunks) at a time into one buffer."""
        import numpy as np
        d = self.d
        step = CHUNK // ITEM
        buf = np.empty(step, np.float64)
        s = 0.0
        for lo in range(0, d.shape[0], step):
            hi = min(lo + step, d.shape[0])
            b = buf[:hi - lo]
            d.read_direct(b, np.s_[lo:hi])
            s += b.sum()
        return float(s)

    def read1(self):
        return self.d.__getitem__

    def write_batch(self, idx, vals):
        for i, x in zip(idx, vals):
            self.d[int(i)] = x
        self.f.flush()

    def close(self):
        self.f.close()


class DaskZarr(Zarr):
    name = 'dask-zarr'
    modules = ('zarr', 'dask.array')

    def sum(self):
        import dask.array as da
        # 32 MiB dask chunks (16 zarr chunks): 2 MiB tasks drown in overhead
        x = da.from_zarr(self.path(self.file), chunks=(CHUNK // ITEM,))
        return float(x.sum().compute())


CLASSES = {c.name: c for c in (WcyFile, WcyZodb, Memmap, Zarr, H5py, DaskZarr)}


# ~~~ child: one workload on one system

def _rss_mib():
    """Peak RSS of this process (VmHWM; ru_maxrss would count what a forked
    child shares with its parent)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(cfg):
    sys.path.insert(0, SRC)
    import numpy as np
    rng = np.random.default_rng(42)
    w, name = cfg['workload'], cfg['system']
    size, rep = cfg['size'], cfg['repeat']
    n = size // ITEM
    s = CLASSES[name](cfg)
    import importlib
    for m in s.modules:
        importlib.import_module(m)
    out = {'workload': w, 'system': name}
    if name == 'dask-zarr':
        import dask
        dask.config.set(scheduler='threads')
    base_rss = _rss_mib()
    times = []

    if w == 'ingest':
        # the data set stays for the later workloads; every repeat rebuilds it
        for r in range(rep):
            if cfg.get('cold_disk'):
                drop_caches()
            s.create()
            # every repeat starts with nothing left to write back: data the
            # previous run (or system) left dirty in the page cache would
            # otherwise throttle this one's writes
            os.sync()
            nch = -(-n // (CHUNK // ITEM))
            t0 = time.perf_counter()
            done = 0
            for i in range(nch):
                m = min(CHUNK // ITEM, n - done)
                s.append(_chunk_data(i, m))
                s.flush()
                done += m
            s.close()
            times.append(time.perf_counter() - t0)
        out.update(metric='GB/s', kind='tput',
                   values=[size / t / 1e9 for t in times])
        if name == 'wcy-zodb':
            out['note'] = 'db %.0f MiB' % (s.nbytes_on_disk() / MiB)

    elif w.startswith('scan'):
        # scan-warm/-cold/-capped map the data anew for every repeat (the
        # process starts with nothing mapped); scan-hot rescans one mapping
        expect = None
        if w in ('scan-warm', 'scan-hot'):
            s.open()
            expect = s.sum()        # warm the page cache (and the mapping)
            if w == 'scan-warm':
                s.close()
        for r in range(rep):
            if w == 'scan-cold' or (w == 'scan-capped' and r == 0):
                drop_caches()
            t0 = time.perf_counter()
            if w != 'scan-hot':
                s.open()
            v = s.sum()
            if w != 'scan-hot':
                s.close()
            times.append(time.perf_counter() - t0)
            if expect is not None and v != expect and not np.isclose(v, expect):
                raise AssertionError('sum changed: %r != %r' % (v, expect))
            expect = v
        if w == 'scan-hot':
            s.close()
        out.update(metric='GB/s', kind='tput', values=[size / t / 1e9 for t in times],
                   checksum=expect)

    elif w.startswith('read-random'):
        if w == 'read-random-smallblk':
            s.blksize = cfg['small_blksize']
            out['note'] = 'blksize %s' % fmt_size(s.blksize)
        s.open()
        k = cfg['nreads']
        get = s.read1()
        s.sum()                     # warm the page cache (pager: its last budget)
        lat = []
        for r in range(rep):
            idx = rng.integers(0, n, k)
            for i in idx:
                i = int(i)
                t0 = time.perf_counter_ns()
                get(i)
                lat.append(time.perf_counter_ns() - t0)
        del get
        s.close()
        lat.sort()
        out.update(metric='us', kind='lat', values=[statistics.median(lat) / 1e3],
                   mean_us=sum(lat) / len(lat) / 1e3,
                   p90_us=lat[int(0.9 * len(lat))] / 1e3)
        out['note'] = (out.get('note', '') + ' mean %.1f us' % out['mean_us']).strip()

    elif w == 'write-random':
        s.open()
        k = cfg['nwrites']
        d0 = s.nbytes_on_disk()
        for r in range(rep):
            idx = rng.integers(0, n, k)
            vals = rng.random(k)
            t0 = time.perf_counter()
            s.write_batch(idx, vals)
            times.append(time.perf_counter() - t0)
        if d0 is not None:
            grow = (s.nbytes_on_disk() - d0) / rep
            out['note'] = 'db +%.0f KiB/commit' % (grow / 1024)
            out['growth_kib'] = grow / 1024
        s.close()
        out.update(metric='ms/commit', kind='lat',
                   values=[t * 1e3 for t in times], nwrites=k)

    elif w == 'txn-2xbudget':
        nb = 2 * cfg['budget']
        if name == 'wcy-zodb':
            s.open()
        for r in range(rep):
            t0 = time.perf_counter()
            s.txn_big(nb)
            times.append(time.perf_counter() - t0)
        if name == 'wcy-zodb':
            s.close()
        out.update(metric='GB/s', kind='tput', values=[nb / t / 1e9 for t in times])
    else:
        raise ValueError(w)

    if name.startswith('wcy'):
        import wendelin_cy
        st = wendelin_cy.pager_stats()
        out['pager'] = {k: st[k] for k in ('peak_resident', 'loads', 'evictions',
                                           'spills', 'overshoots') if k in st}
    out['median'] = statistics.median(out['values'])
    out['rss_mib'] = _rss_mib()
    out['rss_base_mib'] = base_rss
    print('RESULT ' + json.dumps(out), flush=True)


# ~~~ parent

class Cgroup:
    """A cgroup-v1 memory cgroup that lives for one child."""
    BASE = '/sys/fs/cgroup/memory'

    def __init__(self, limit):
        self.path = os.path.join(self.BASE, 'wcy_bench_%d' % os.getpid())
        os.mkdir(self.path)
        try:
            with open(os.path.join(self.path, 'memory.limit_in_bytes'), 'w') as f:
                f.write(str(limit))
        except BaseException:
            os.rmdir(self.path)
            raise

    def enter(self):            # preexec_fn of the child
        with open(os.path.join(self.path, 'cgroup.procs'), 'w') as f:
            f.write(str(os.getpid()))

    def failcnt(self):
        with open(os.path.join(self.path, 'memory.failcnt')) as f:
            return int(f.read())

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)
        print('warning: could not remove %s' % self.path, file=sys.stderr)


def capped_unavailable(limit):
    if os.geteuid() != 0:
        return 'not root'
    if not os.path.isdir(Cgroup.BASE):
        return 'no cgroup-v1 memory controller at %s' % Cgroup.BASE
    try:
        Cgroup(limit).remove()
    except OSError as e:
        return 'cannot create a memory cgroup: %s' % e
    return None


def run_child(cfg, cgroup=None, timeout=3600):
    env = dict(os.environ)
    env['WENDELIN_CY_RAM_BUDGET'] = str(cfg['budget'])
    env['WENDELIN_CY_SCRATCH_DIR'] = cfg['dir']
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    cmd = [sys.executable, os.path.abspath(__file__), '--child', json.dumps(cfg)]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout,
                       preexec_fn=cgroup.enter if cgroup else None)
    for line in p.stdout.splitlines():
        if line.startswith('RESULT '):
            return json.loads(line[7:])
    err = (p.stderr.strip().splitlines() or ['exit %d' % p.returncode])[-1]
    return {'workload': cfg['workload'], 'system': cfg['system'],
            'error': err[:200], 'stderr': p.stderr[-4000:]}


def run_warm1(cfg, repeat):
    """First pass of a new process over a warm page cache: one untimed child
    warms the cache, then each repeat is a fresh child's first scan."""
    r = run_child(dict(cfg, repeat=1))
    if 'error' in r:
        return r
    vals, rss = [], []
    for _ in range(repeat):
        r = run_child(dict(cfg, repeat=1))
        if 'error' in r:
            return r
        vals += r['values']
        rss.append(r['rss_mib'])
    r.update(values=vals, median=statistics.median(vals), rss_mib=max(rss),
             note='a new process per repeat')
    return r


def source_rev():
    """Which wendelin_cy is measured: git commit of SRC (+ 'dirty'), or the
    REVISION file of a snapshot, and the mtime of the built pager."""
    d = os.path.dirname(SRC)
    rev = None
    try:
        with open(os.path.join(d, 'REVISION')) as f:
            rev = f.read().strip()
    except OSError:
        try:
            rev = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=d,
                                 capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    so = [f for f in os.listdir(os.path.join(SRC, 'wendelin_cy', '_pager'))
          if f.endswith('.so')]
    if so:
        st = os.stat(os.path.join(SRC, 'wendelin_cy', '_pager', so[0]))
        rev = '%s (pager built %s)' % (
            rev, time.strftime('%H:%M:%SZ', time.gmtime(st.st_mtime)))
    return rev


def machine():
    import numpy
    d = {'python': platform.python_version(), 'platform': platform.platform(),
         'cpus': os.cpu_count(), 'numpy': numpy.__version__}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    d['cpu'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo') as f:
            d['mem_gib'] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    for mod in ('h5py', 'zarr', 'dask', 'ZODB'):
        try:
            d[mod] = __import__(mod).__version__
        except Exception:
            pass
    return d


def ratio(rec, base):
    if base is None or 'median' not in rec or 'median' not in base:
        return None
    if rec['kind'] == 'tput':
        return rec['median'] / base['median']
    return base['median'] / rec['median']


def table(results, budget):
    by = {(r['workload'], r['system']): r for r in results}
    rows = []
    hdr = ('workload', 'system', 'median', 'unit', 'x memmap', 'x h5py',
           'peak RSS MiB', 'budget', 'note')
    for r in results:
        w = r['workload']
        if 'median' in r:
            val = '%.3g' % r['median']
            unit = r['metric']
            rm = ratio(r, by.get((w, 'memmap')))
            rh = ratio(r, by.get((w, 'h5py')))
            rss = '%.0f' % r['rss_mib']
            note = r.get('note', '')
        else:
            val, unit, rm, rh, rss = 'n/a', '', None, None, '-'
            note = r.get('error') or r.get('reason', '')
        rows.append((w, r['system'], val, unit,
                     '-' if rm is None else '%.2f' % rm,
                     '-' if rh is None else '%.2f' % rh,
                     rss, fmt_size(budget) if r['system'].startswith('wcy') else '-',
                     note))
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    lines = ['| ' + ' | '.join(str(h).ljust(w) for h, w in zip(hdr, widths)) + ' |',
             '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    for x in rows:
        lines.append('| ' + ' | '.join(str(v).ljust(w) for v, w in zip(x, widths)) + ' |')
    return '\n'.join(lines)


TARGETS = [
    # (description, workload, system, baseline, minimum speed ratio)
    # issue 18 (performance 2), ZBigArray on FileStorage with blobs
    ('ingest + durable commit, ZBigArray >= 1.2x h5py', 'ingest', 'wcy-zodb', 'h5py', 1.2),
    ('cold scan, ZBigArray >= 1.0x memmap', 'scan-cold', 'wcy-zodb', 'memmap', 1.0),
    ('capped scan, ZBigArray >= 1.0x memmap', 'scan-capped', 'wcy-zodb', 'memmap', 1.0),
    ('warm scan 1st pass, ZBigArray >= 0.9x memmap', 'scan-warm1', 'wcy-zodb', 'memmap', 0.9),
    ('random reads, ZBigArray latency <= h5py / 5', 'read-random', 'wcy-zodb', 'h5py', 5.0),
    ('random writes + commit, ZBigArray <= memmap time', 'write-random', 'wcy-zodb', 'memmap', 1.0),
    ('warm scan, BigFile_File >= 0.3x memmap', 'scan-warm', 'wcy-file', 'memmap', 0.3),
    ('cold scan, BigFile_File >= 0.9x memmap', 'scan-cold', 'wcy-file', 'memmap', 0.9),
    ('capped scan, BigFile_File >= 0.9x memmap', 'scan-capped', 'wcy-file', 'memmap', 0.9),
    ('warm scan, ZBigArray >= 1.5x h5py chunk loop', 'scan-warm', 'wcy-zodb', 'h5py', 1.5),
    ('warm scan, ZBigArray >= 3x zarr', 'scan-warm', 'wcy-zodb', 'zarr', 3.0),
    ('ingest, ZBigArray >= 1.0x h5py', 'ingest', 'wcy-zodb', 'h5py', 1.0),
    ('random reads, BigFile_File latency <= 2x h5py', 'read-random', 'wcy-file', 'h5py', 0.5),
    ('random reads, ZBigArray latency <= 2x h5py', 'read-random', 'wcy-zodb', 'h5py', 0.5),
]


def targets(results, budget):
    """The project's performance targets, checked on this run's medians."""
    by = {(r['workload'], r['system']): r for r in results}
    out = []
    for desc, w, s, b, need in TARGETS:
        r, base = by.get((w, s)), by.get((w, b))
        q = ratio(r, base) if r and base else None
        out.append((desc, 'n/a' if q is None else '%.2fx' % q,
                    '-' if q is None else ('met' if q >= need else 'NOT met')))
    for r in results:
        if r['workload'] == 'write-random' and r['system'] == 'wcy-zodb' and 'growth_kib' in r:
            k = r.get('nwrites', 1000)
            bar = 8 * 1024 * k / 1000.0         # 8 MiB per 1000 writes
            out.append(('store growth, %d random writes, ZBigArray <= %.0f KiB' % (k, bar),
                        '%.0f KiB' % r['growth_kib'],
                        'met' if r['growth_kib'] <= bar else 'NOT met'))
    lim = budget / MiB
    for r in results:
        if not r['system'].startswith('wcy') or 'rss_mib' not in r:
            continue
        slack = 64 if (r['system'] == 'wcy-file' and r['workload'].startswith('scan')) else 128
        out.append(('peak RSS %s %s <= budget + %d MiB' % (r['workload'], r['system'], slack),
                    '%.0f MiB (budget + %.0f)' % (r['rss_mib'], r['rss_mib'] - lim),
                    'met' if r['rss_mib'] <= lim + slack else 'NOT met'))
    return out


def print_targets(results, budget):
    print('\n# project targets (this run)')
    for desc, got, verdict in targets(results, budget):
        print('%-58s %-24s %s' % (desc, got, verdict))


def plot(results, out):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    by = {(r['workload'], r['system']): r for r in results}
    wls = [w for w in WORKLOADS if any(r['workload'] == w and 'median' in r
                                       for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, base in zip(axes, ('memmap', 'h5py')):
        systems = [s for s in SYSTEMS if s != base]
        wb = [w for w in wls if (w, base) in by and 'median' in by[(w, base)]]
        width = 0.8 / len(systems)
        for j, s in enumerate(systems):
            xs, ys = [], []
            for i, w in enumerate(wb):
                r = by.get((w, s))
                q = ratio(r, by.get((w, base))) if r else None
                if q:
                    xs.append(i + (j - len(systems) / 2 + 0.5) * width)
                    ys.append(q)
            ax.bar(xs, ys, width, label=s, color='C%d' % SYSTEMS.index(s))
        ax.axhline(1.0, color='k', lw=0.8)
        ax.set_yscale('log')
        ax.set_xticks(range(len(wb)))
        ax.set_xticklabels(wb, rotation=25, fontsize=8)
        ax.set_ylabel('speed relative to %s (log; > 1 faster)' % base)
        ax.legend(fontsize=7)
        ax.set_title('relative to %s (same run, medians)' % base)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--size', default='2G', help='array size in bytes (default 2G)')
    ap.add_argument('--budget', default='512M', help='wendelin_cy RAM budget (512M)')
    ap.add_argument('--cap', default=None,
                    help='memory limit of the capped scan (default budget + 256M)')
    ap.add_argument('--repeat', type=int, default=None, help='repeats (default 3)')
    ap.add_argument('--nwrites', type=int, default=None,
                    help='element writes per commit of write-random (default 1000)')
    ap.add_argument('--only', default=None,
                    help='comma-separated workloads and/or systems (%s; %s)'
                    % (','.join(WORKLOADS), ','.join(SYSTEMS)))
    ap.add_argument('--quick', action='store_true',
                    help='smoke test: 64M array, 16M budget, 1 repeat')
    ap.add_argument('--dir', default='/tmp', help='where the temp dir goes (/tmp)')
    ap.add_argument('--src', default=None,
                    help='import wendelin_cy from this src/ dir (default: the '
                    'checkout\'s src/, built in place); e.g. a snapshot '
                    '`git archive HEAD | tar -x` built with build_ext --inplace, '
                    'so that rebuilds in the checkout cannot change a long run')
    ap.add_argument('--json', help='write results here')
    ap.add_argument('--plot', help='write a bar chart (png) here')
    ap.add_argument('--load', metavar='JSON',
                    help='do not run: print the table (and --plot) of a saved --json')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(json.loads(a.child))
    if a.load:
        with open(a.load) as f:
            saved = json.load(f)
        print('# %s: %s, wendelin_cy %s' % (a.load, ' '.join(saved['argv']),
                                            saved.get('wendelin_cy')))
        print(table(saved['results'], saved['budget']))
        print_targets(saved['results'], saved['budget'])
        if a.plot:
            plot(saved['results'], a.plot)
        return 0
    global SRC
    if a.src:
        SRC = os.environ['WENDELIN_CY_SRC'] = os.path.abspath(a.src)
    rev = source_rev()

    if a.quick:
        size = parse_size('64M') if a.size == '2G' else parse_size(a.size)
        budget = parse_size('16M') if a.budget == '512M' else parse_size(a.budget)
        repeat = a.repeat or 1
        nreads, nwrites = 200, 20
    else:
        size, budget = parse_size(a.size), parse_size(a.budget)
        repeat = a.repeat or 3
        nreads, nwrites = 2000, 1000
    nwrites = a.nwrites or nwrites
    size -= size % BLKSIZE
    cap = parse_size(a.cap) if a.cap else budget + 256 * MiB
    only = set(a.only.split(',')) if a.only else set()
    bad = only - set(WORKLOADS) - set(SYSTEMS)
    if bad:
        ap.error('unknown in --only: %s' % ', '.join(sorted(bad)))
    wsel = [w for w in WORKLOADS if not (only & set(WORKLOADS)) or w in only]
    ssel = [s for s in SYSTEMS if not (only & set(SYSTEMS)) or s in only]

    work = tempfile.mkdtemp(prefix='wcy-compare-', dir=a.dir)
    common = dict(size=size, budget=budget, repeat=repeat, dir=work,
                  nreads=nreads, nwrites=nwrites, small_blksize=SMALL_BLKSIZE)
    print('# compare.py: size %s, budget %s, repeat %d, dir %s, wendelin_cy %s'
          % (fmt_size(size), fmt_size(budget), repeat, work, rev), flush=True)
    results = []
    t_start = time.time()
    try:
        root_ok = os.geteuid() == 0
        cap_reason = capped_unavailable(cap)
        # build every data set the selection reads (dask-zarr reads zarr's)
        need = set()
        for w in wsel:
            for s in RUNS[w]:
                if s in ssel and w != 'txn-2xbudget':
                    need.add('zarr' if s == 'dask-zarr' else s)
        if 'ingest' not in wsel:
            for s in sorted(need):
                r = run_child(dict(common, workload='ingest', system=s, repeat=1))
                if 'error' in r:
                    raise SystemExit('building the %s data set failed: %s\n%s'
                                     % (s, r['error'], r.get('stderr', '')))
        for w in wsel:
            for s in RUNS[w]:
                if s not in ssel:
                    continue
                if w == 'ingest' and s not in need and s != 'dask-zarr':
                    continue
                cfg = dict(common, workload=w, system=s)
                if w == 'scan-cold' and not root_ok:
                    r = {'workload': w, 'system': s, 'reason': 'drop_caches needs root'}
                elif w == 'scan-capped':
                    if cap_reason:
                        r = {'workload': w, 'system': s, 'reason': cap_reason}
                    else:
                        cg = Cgroup(cap)
                        try:
                            r = run_child(cfg, cgroup=cg)
                            if 'median' in r:
                                r['note'] = ('cap %s, failcnt %d'
                                             % (fmt_size(cap), cg.failcnt()))
                        finally:
                            cg.remove()
                elif w == 'scan-warm1':
                    r = run_warm1(cfg, repeat)
                else:
                    r = run_child(cfg)
                results.append(r)
                if 'median' in r:
                    print('%-22s %-10s %10.4g %-9s rss %6.0f MiB  %s' % (
                        w, s, r['median'], r['metric'], r['rss_mib'],
                        r.get('note', '')), flush=True)
                else:
                    print('%-22s %-10s n/a: %s' % (w, s, r.get('error') or r.get('reason')),
                          flush=True)
                    if r.get('stderr'):
                        print(r['stderr'], file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(table(results, budget))
    print('\n# %.0f s; ratios > 1: faster than the baseline' % (time.time() - t_start))
    print_targets(results, budget)
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({'machine': machine(), 'argv': sys.argv, 'size': size,
                       'wendelin_cy': rev,
                       'budget': budget, 'cap': cap, 'repeat': repeat,
                       'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                       'results': results}, f, indent=1)
    if a.plot:
        plot(results, a.plot)
    return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
