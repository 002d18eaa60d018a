"""Import / export speed of wendelin_cy.io beside the formats' own copies.

    python benchmarks/cli_io.py [--size 256M] [--budget 128M] [--dir DIR]

For each format (npy, HDF5, zarr) in one run, on one FileStorage (blobs) in a
temporary directory: import (file -> ZBigArray), export (ZBigArray -> file),
and the format's own copy of the same data (npy: shutil.copyfile; HDF5: h5py
slab by slab, and HDF5's H5Ocopy; zarr: zarr slab by slab, chunk-aligned),
in MiB/s of array data, with the peak RSS of the process during each (VmHWM, reset before each).  Each export and
copy is made durable (fsync of the files, or the FileStorage's commit) so that
they are comparable.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

MiB = 1 << 20


def hwm():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) * 1024


def fsync_tree(path):
    for d, _, files in os.walk(path) if os.path.isdir(path) else [('', [], [path])]:
        for n in files:
            fd = os.open(os.path.join(d, n), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


PEAKS = []


def timed(fn):
    """Seconds fn() took; its peak RSS goes to PEAKS."""
    with open('/proc/self/clear_refs', 'w') as f:     # VmHWM from here on
        f.write('5')
    before = hwm()
    t = time.perf_counter()
    fn()
    t = time.perf_counter() - t
    PEAKS.append((before, hwm()))
    return t


def main():
    from wendelin_cy.ram import parse_size
    ap = argparse.ArgumentParser()
    ap.add_argument('--size', default='256M')
    ap.add_argument('--budget', default='128M')
    ap.add_argument('--dir', default=None)
    a = ap.parse_args()
    size, budget = parse_size(a.size), parse_size(a.budget)
    import wendelin_cy
    wendelin_cy.set_ram_budget(budget)
    import h5py
    import zarr
    from wendelin_cy import io
    from wendelin_cy.lib.zodb import dbclose, dbopen

    d = tempfile.mkdtemp(dir=a.dir, prefix='wcy-cli-bench-')
    rows, cols = size // (8 * 1024), 1024
    nbytes = rows * cols * 8
    slab = max(1, (16 * MiB) // (cols * 8))
    src = np.lib.format.open_memmap(os.path.join(d, 'src.npy'), 'w+', '<f8', (rows, cols))
    with h5py.File(os.path.join(d, 'src.h5'), 'w') as h:
        ds = h.create_dataset('d', (rows, cols), '<f8')
        z = zarr.create_array(os.path.join(d, 'src.zarr'), shape=(rows, cols), dtype='<f8',
                              chunks=(512, cols))
        for i in range(0, rows, slab):
            j = min(rows, i + slab)
            block = np.sin(np.arange(i * cols, j * cols, dtype='f8')).reshape(j - i, cols)
            src[i:j] = block
            ds[i:j] = block
            z[i:j] = block
    src.flush()
    del src, block
    fsync_tree(d)
    res = []

    def rate(t):
        return nbytes / MiB / t

    root = dbopen(os.path.join(d, 'db.fs'))
    try:
        # npy
        res.append(('npy', 'import', rate(timed(lambda: io.from_npy(
            os.path.join(d, 'src.npy'), root, 'N')))))
        A = root['N']

        def npy_out():
            io.to_npy(A, os.path.join(d, 'out.npy'))        # (fsyncs itself)
        res.append(('npy', 'export', rate(timed(npy_out))))

        def npy_copy():
            shutil.copyfile(os.path.join(d, 'src.npy'), os.path.join(d, 'copy.npy'))
            fsync_tree(os.path.join(d, 'copy.npy'))
        res.append(('npy', 'shutil.copyfile', rate(timed(npy_copy))))

        # HDF5
        res.append(('hdf5', 'import', rate(timed(lambda: io.from_hdf5(
            os.path.join(d, 'src.h5'), root, 'H', dataset='d')))))
        H = root['H']

        def h5_out():
            io.to_hdf5(H, os.path.join(d, 'out.h5'), 'd')
            fsync_tree(os.path.join(d, 'out.h5'))
        res.append(('hdf5', 'export', rate(timed(h5_out))))

        def h5_slabs():
            with h5py.File(os.path.join(d, 'src.h5'), 'r') as s, \
                    h5py.File(os.path.join(d, 'copy.h5'), 'w') as o:
                sd = s['d']
                od = o.create_dataset('d', sd.shape, sd.dtype)
                for i in range(0, rows, slab):
                    od[i:i + slab] = sd[i:i + slab]
            fsync_tree(os.path.join(d, 'copy.h5'))
        res.append(('hdf5', 'h5py slabs', rate(timed(h5_slabs))))

        def h5_ocopy():
            with h5py.File(os.path.join(d, 'src.h5'), 'r') as s, \
                    h5py.File(os.path.join(d, 'copy2.h5'), 'w') as o:
                s.copy('d', o)
            fsync_tree(os.path.join(d, 'copy2.h5'))
        res.append(('hdf5', 'H5Ocopy', rate(timed(h5_ocopy))))

        # zarr
        res.append(('zarr', 'import', rate(timed(lambda: io.from_zarr(
            os.path.join(d, 'src.zarr'), root, 'Z')))))
        Z = root['Z']

        def zarr_out():
            io.to_zarr(Z, os.path.join(d, 'out.zarr'), chunks=(512, cols))
            fsync_tree(os.path.join(d, 'out.zarr'))
        res.append(('zarr', 'export', rate(timed(zarr_out))))

        def zarr_slabs():
            s = zarr.open_array(os.path.join(d, 'src.zarr'), mode='r')
            o = zarr.create_array(os.path.join(d, 'copy.zarr'), shape=s.shape,
                                  dtype=s.dtype, chunks=s.chunks)
            step = s.chunks[0] * max(1, slab // s.chunks[0])
            for i in range(0, rows, step):
                o[i:i + step] = s[i:i + step]
            fsync_tree(os.path.join(d, 'copy.zarr'))
        res.append(('zarr', 'zarr slabs', rate(timed(zarr_slabs))))
    finally:
        dbclose(root)
        shutil.rmtree(d, ignore_errors=True)
    print('%d MiB of float64, budget %d MiB, FileStorage with blobs, %s'
          % (nbytes // MiB, budget // MiB, sys.platform))
    print('  %-5s %-16s %9s %20s' % ('', '', 'MiB/s', 'RSS MiB before/peak'))
    for (fmt, what, r), (before, peak) in zip(res, PEAKS):
        print('  %-5s %-16s %9.0f %13.0f /%5.0f' % (fmt, what, r, before / MiB, peak / MiB))
    print('(the RSS includes the pages the pager keeps, up to the budget, and what '
          'making the inputs left)')


if __name__ == '__main__':
    main()
