"""Workers for the crash and concurrency tests (tests/test_reliability_*.py).

A test that kills writers at random moments needs many short-lived writer
processes.  Starting Python and importing numpy and ZODB for each one costs
more than the work it does, and forking the test process itself is no good
either: a pager inherited through fork() refuses to load blocks.  So
``Zygote`` starts one helper process that imports the heavy libraries but not
wendelin_cy, and forks a fresh writer from it per trial; each writer imports
wendelin_cy after the fork and so gets a pager of its own.

Record file: one line per event, appended with one ``write()`` each::

    S <n> <digest>     state found when the writer started (committed earlier)
    P <n> <digest>     state about to be committed (written before commit())
    C <n> <digest>     state committed (written after commit() returned)

``<n>`` is the transaction counter ``root['n']``, stored with the arrays,
and ``<digest>`` is ``digest(root)``.  After a kill the database must hold
the state of the last S/C line, or that of a later P line (the transaction
that was in flight may or may not have landed).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

__all__ = ['digest', 'Zygote', 'read_records', 'acceptable', 'writer_step',
           'setup_arrays', 'reader_main']

BLKSIZE = 64 * 1024
NAMES = ('A', 'B')


def _src_dir():
    # src/wendelin_cy/testing/crash.py -> src
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digest(root):
    """sha1 over the counter and every array's shape, dtype, order and bytes
    (read in slices of the major axis, so a small RAM budget is enough)."""
    import numpy as np
    h = hashlib.sha1()
    h.update(repr(root.get('n')).encode())
    for name in NAMES:
        A = root.get(name)
        if A is None:
            h.update(b'-')
            continue
        h.update(repr((name, A.shape, A.dtype.str, A.order)).encode())
        a = A[...]
        flat = a.reshape(-1, order='A')     # a view: memory order, contiguous
        step = 1 << 16
        for i in range(0, flat.size, step):
            h.update(np.ascontiguousarray(flat[i:i + step]).tobytes())
        del a, flat
    return h.hexdigest()


def setup_arrays(root):
    import numpy as np
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    if 'A' not in root:
        root['A'] = ZBigArray((0,), np.int64, blksize=BLKSIZE)              # auto
        root['B'] = ZBigArray((8, 0), np.float32, order='F', blksize=BLKSIZE,
                              zblk_fmt='ZBlk1')
        root['n'] = 0


def writer_step(root, rng):
    """One random change of both arrays; the counter always moves."""
    import numpy as np
    A, B = root['A'], root['B']
    op = int(rng.integers(0, 6))
    if op == 0 or A.shape[0] < 1000:
        A.append(rng.integers(-2**62, 2**62, size=int(rng.integers(1, 5000))))
    elif op == 1:
        lo = int(rng.integers(0, A.shape[0]))
        hi = min(A.shape[0], lo + int(rng.integers(1, 20000)))
        A[lo:hi] = rng.integers(0, 1000, size=hi - lo)
    elif op == 2:
        idx = rng.integers(0, A.shape[0], size=50)
        A[idx] = rng.integers(0, 10, size=50)
    elif op == 3:
        B.append(rng.random((8, int(rng.integers(1, 3000))), dtype=np.float32))
    elif op == 4 and B.shape[1]:
        lo = int(rng.integers(0, B.shape[1]))
        b = B[:, lo:lo + 2000]
        b *= np.float32(2)
        del b
    if A.shape[0] > 150000:
        A.resize((int(rng.integers(1000, 20000)),))
    if B.shape[1] > 20000:
        B.resize((8, int(rng.integers(0, 5000))))
    root['n'] = root['n'] + 1


def _writer(dbpath, recpath, seed, budget):
    """Body of a writer process: change, record P, commit, record C, forever."""
    import numpy as np
    import transaction
    import wendelin_cy
    from wendelin_cy.lib.zodb import dbopen
    wendelin_cy.set_ram_budget(budget)
    fd = os.open(recpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def rec(kind, n, d):
        os.write(fd, ('%s %d %s\n' % (kind, n, d)).encode())

    root = dbopen(dbpath)
    setup_arrays(root)
    transaction.commit()
    rec('S', root['n'], digest(root))
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        writer_step(root, rng)
        rec('P', root['n'], digest(root))
        transaction.commit()
        rec('C', root['n'], digest(root))


def read_records(recpath):
    """-> list of (kind, n, digest); a torn last line is dropped."""
    out = []
    try:
        with open(recpath) as f:
            data = f.read()
    except FileNotFoundError:
        return out
    for line in data.split('\n'):
        parts = line.split()
        if len(parts) == 3 and parts[0] in 'SPC' and len(parts[2]) == 40:
            out.append((parts[0], int(parts[1]), parts[2]))
    return out


def acceptable(records, previous):
    """The digests the database may hold after a kill: the last S/C state
    (`previous`, if the writer recorded nothing) and a P state after it."""
    last = previous
    last_i = -1
    for i, (kind, _, d) in enumerate(records):
        if kind in 'SC':
            last, last_i = d, i
    ok = {last}
    for kind, _, d in records[last_i + 1:]:
        if kind == 'P':
            ok.add(d)
    return ok


_ZYGOTE_MAIN = r'''
import os, sys, json
import numpy, ZODB, ZODB.FileStorage, transaction, persistent, BTrees.LOBTree  # noqa
assert 'wendelin_cy' not in sys.modules
sys.stdout.write('ready\n'); sys.stdout.flush()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd['op'] == 'run':
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                sys.stdin.close()
                from wendelin_cy.testing import crash
                crash._writer(*cmd['args'])
            except BaseException:
                import traceback; traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({'pid': pid}), flush=True)
    elif cmd['op'] == 'wait':
        _, st = os.waitpid(cmd['pid'], 0)
        print(json.dumps({'status': os.waitstatus_to_exitcode(st)}), flush=True)
'''


class Zygote:
    """A helper process that forks writer processes on request."""

    def __init__(self):
        env = dict(os.environ)
        env['PYTHONPATH'] = _src_dir() + os.pathsep + env.get('PYTHONPATH', '')
        self.p = subprocess.Popen([sys.executable, '-c', _ZYGOTE_MAIN], env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)
        assert self.p.stdout.readline().strip() == 'ready'

    def _ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + '\n')
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError('zygote died (status %s)' % self.p.poll())
        return json.loads(line)

    def run_writer(self, dbpath, recpath, seed, budget=1 << 20):
        return self._ask(op='run', args=[dbpath, recpath, seed, budget])['pid']

    def kill_and_wait(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self._ask(op='wait', pid=pid)['status']

    def close(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# ~~~ concurrent readers over a read-only FileStorage

def open_readonly(path):
    """Root of a read-only view of FileStorage `path` (a snapshot as of now:
    a read-only FileStorage does not see later commits of another process)."""
    import ZODB
    from ZODB.FileStorage import FileStorage
    db = ZODB.DB(FileStorage(path, read_only=True))
    return db.open().root()


def reader_main(dbpath, outpath, duration, budget):
    """Reader process: reopen the database read-only again and again, read a
    digest of the snapshot (twice, the second time after dropping every
    block from RAM), and append it to `outpath`."""
    import wendelin_cy
    from wendelin_cy.lib.zodb import dbclose
    wendelin_cy.set_ram_budget(budget)
    fd = os.open(outpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    deadline = time.monotonic() + duration
    nread = 0
    while time.monotonic() < deadline:
        try:
            root = open_readonly(dbpath)
        except Exception as e:           # the file is being written: retry
            os.write(fd, ('E %s\n' % type(e).__name__).encode())
            time.sleep(0.01)
            continue
        if 'A' not in root:
            dbclose(root)
            time.sleep(0.01)
            continue
        d1 = digest(root)
        time.sleep(0.005)
        # every block read again, from the same snapshot, under a writer
        # still committing
        wendelin_cy.set_ram_budget(1 << 20)
        for name in NAMES:
            fh = root[name].__dict__.get('_v_fileh')
            if fh is not None:
                fh.drop_clean(0, 1 << 40)
        d2 = digest(root)
        wendelin_cy.set_ram_budget(budget)
        os.write(fd, ('R %d %s %s\n' % (root['n'], d1, d2)).encode())
        dbclose(root)
        nread += 1
    return nread


if __name__ == '__main__':
    if sys.argv[1] == 'reader':
        n = reader_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        print(n)
    elif sys.argv[1] == 'writer':
        _writer(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
