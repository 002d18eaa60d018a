# Cold reads of segment-like files (64 MiB each) into the page cache, the
# ways the pager's readahead thread could issue them (root: drops the cache).
# usage: python cache_ahead.py [GiB] [method ...]
#   pread64M        64 MiB preadv per call (the raw-disk baseline of scale.py)
#   popN_huge       MADV_POPULATE_READ of N MiB at a time of one MADV_HUGEPAGE
#                   mapping per file, dropped after each (MADV_DONTNEED):
#                   pop2 is one block at a time (the readahead thread before
#                   issue 18's runs), pop16 the runs of RA_CACHE_RUN
#   pop2_huge_2thr  the same, one block at a time, from 2 threads
# Leaves $TMPDIR/wcy-repro-ra (delete it afterwards).
import ctypes, glob, mmap, os, sys, threading, time
D = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-ra')
MB = 1 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MADV_DONTNEED, MADV_HUGEPAGE, MADV_POPULATE_READ = 4, 14, 22
MAP_FIXED = 0x10


def build(gib):
    import numpy as np
    os.makedirs(D, exist_ok=True)
    for i in range(int(gib * 16)):
        p = os.path.join(D, '%03d' % i)
        if not os.path.exists(p):
            np.full(8 * MB, i, dtype=np.float64).tofile(p)
    os.sync()
    return sorted(glob.glob(os.path.join(D, '[0-9]*')))


def drop():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as f:
        f.write('3\n')


def pread(files, step):
    buf = bytearray(step)
    for fn in files:
        fd = os.open(fn, os.O_RDONLY)
        off = 0
        while os.preadv(fd, [buf], off):
            off += step
        os.close(fd)


def populate(files, step, nthreads=1):
    def work(k):
        for fn in files:
            fd = os.open(fn, os.O_RDONLY)
            size = os.fstat(fd).st_size
            raw = libc.mmap(None, size + 2 * MB, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            a = (raw + 2 * MB - 1) & ~(2 * MB - 1)
            assert libc.mmap(a, size, mmap.PROT_READ, mmap.MAP_PRIVATE | MAP_FIXED, fd, 0) == a
            libc.madvise(a, size, MADV_HUGEPAGE)
            for i, off in enumerate(range(0, size, step)):
                if i % nthreads == k:
                    libc.madvise(a + off, step, MADV_POPULATE_READ)
                    libc.madvise(a + off, step, MADV_DONTNEED)
            libc.munmap(raw, size + 2 * MB)
            os.close(fd)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


METHODS = {
    'pread64M': lambda f: pread(f, 64 * MB),
    'pop2_huge': lambda f: populate(f, 2 * MB),
    'pop8_huge': lambda f: populate(f, 8 * MB),
    'pop16_huge': lambda f: populate(f, 16 * MB),
    'pop32_huge': lambda f: populate(f, 32 * MB),
    'pop2_huge_2thr': lambda f: populate(f, 2 * MB, 2),
}


def main():
    args = sys.argv[1:]
    gib = float(args.pop(0)) if args and args[0][0].isdigit() else 4.0
    files = build(gib)
    total = sum(os.path.getsize(f) for f in files)
    for rnd in range(3):
        for name in args or list(METHODS):
            drop()
            t = time.perf_counter()
            METHODS[name](files)
            print('round %d  %-15s %.2f GB/s' % (rnd, name, total / (time.perf_counter() - t) / 1e9),
                  flush=True)


if __name__ == '__main__':
    main()
