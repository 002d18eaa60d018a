# cold sequential scan: BigFile_File BigArray vs numpy.memmap vs a plain pread loop
import os, sys, time, subprocess
import numpy as np
sys.path.insert(0, os.environ.get('WCY_SRC', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'src')))
import wendelin_cy
from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.bigarray import BigArray
path = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-cold.f8')  # 1 GiB, kept
N = 1 << 30
if not os.path.exists(path):
    with open(path, 'wb') as f:
        c = np.random.default_rng(0).random(32 << 17)
        for i in range(N // c.nbytes):
            f.write(c.tobytes())
wendelin_cy.set_ram_budget(sys.argv[2] if len(sys.argv) > 2 else '256M')
def drop():
    subprocess.run(['sync']); open('/proc/sys/vm/drop_caches', 'w').write('3\n')
def wcy():
    f = BigFile_File(path, 2 << 20, create=False); fh = f.fileh_open()
    A = BigArray((N // 8,), np.float64, fh); s = np.sum(A[:]); del A; fh.close(); f.close(); return s
def wcy_seq():
    f = BigFile_File(path, 2 << 20, create=False); fh = f.fileh_open()
    A = BigArray((N // 8,), np.float64, fh); a = A[:]
    a.base.madvise('sequential') if hasattr(a.base, 'madvise') else None
    s = np.sum(a); del a, A; fh.close(); f.close(); return s
def mm():
    return np.sum(np.memmap(path, np.float64, 'r'))
def pread():
    fd = os.open(path, os.O_RDONLY); buf = np.empty(1 << 18); s = 0.0; off = 0
    while True:
        n = os.preadv(fd, [buf], off)
        if not n: break
        s += buf[:n // 8].sum(); off += n
    os.close(fd); return s
def pread_fadv():
    # sequential 2 MiB preads with posix_fadvise(WILLNEED) 16 blocks ahead (what the pager's readahead asks the kernel)
    fd = os.open(path, os.O_RDONLY); buf = np.empty(1 << 18); s = 0.0; off = 0; bs = 2 << 20; ra = 0
    while True:
        while ra < off + 16 * bs:
            os.posix_fadvise(fd, ra, bs, os.POSIX_FADV_WILLNEED); ra += bs
        n = os.preadv(fd, [buf], off)
        if not n: break
        s += buf[:n // 8].sum(); off += n
    os.close(fd); return s
def pread_seq():
    # the same with POSIX_FADV_SEQUENTIAL on the fd (kernel readahead window x2), no WILLNEED
    fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    buf = np.empty(1 << 18); s = 0.0; off = 0
    while True:
        n = os.preadv(fd, [buf], off)
        if not n: break
        s += buf[:n // 8].sum(); off += n
    os.close(fd); return s
fn = globals()[sys.argv[1]]
ts = []
for r in range(3):
    drop(); t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
st = wendelin_cy.pager_stats()
print(sys.argv[1], 'GB/s', [round(N / t / 1e9, 2) for t in ts], {k: st[k] for k in ('loads','readahead_blocks','zerocopy_loads','faults','soft_faults')})
