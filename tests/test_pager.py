"""The pager core: mappings, faults, reclaim under the budget, dirty data."""
import errno
import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import wendelin_cy
from wendelin_cy.bigfile import BigFile, WRITEOUT_STORE, WRITEOUT_MARKSTORED
from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.bigfile.file_ram import BigFile_RAM
from wendelin_cy.ram import parse_size

BS = 64 * 1024           # small blocks keep the tests fast
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


@pytest.fixture(params=["ram", "file"])
def bigfile(request, tmp_path):
    if request.param == "ram":
        return BigFile_RAM(BS)
    return BigFile_File(tmp_path / "data", BS)


def stored(f, nblk):
    """What the BigFile holds (as the pager would load it), as bytes."""
    out = bytearray(nblk * BS)
    for blk in range(nblk):
        f.loadblk(blk, memoryview(out)[blk * BS:(blk + 1) * BS])
    return np.frombuffer(bytes(out), dtype=np.uint8)


def u8(vma):
    return np.ndarray((len(vma),), dtype=np.uint8, buffer=vma)


def vma_count():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def run_py(code, env=None):
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ contract

def test_blksize_validation():
    with pytest.raises(ValueError):
        BigFile_RAM(1000)
    with pytest.raises(ValueError):
        BigFile_RAM(0)
    with pytest.raises(TypeError):
        BigFile_RAM(4096.0)
    with pytest.raises(ValueError):
        BigFile_RAM(-4096)


def test_uninitialised_bigfile():
    class NoInit(BigFile):
        def __init__(self):
            pass
    with pytest.raises(ValueError, match="__init__"):
        NoInit().fileh_open()


def test_mmap_arguments(bigfile):
    fh = bigfile.fileh_open()
    with pytest.raises(ValueError):
        fh.mmap(-1, 2)
    with pytest.raises(ValueError):
        fh.mmap(0, -2)
    with pytest.raises(TypeError):
        fh.mmap(0.5, 2)
    assert len(fh.mmap(3, 0)) == 0
    v = fh.mmap(1, 2)
    assert v.filerange() == (1, 2)
    assert v.pagesize() == BS
    assert len(v) == 2 * BS
    assert v.addr_stop - v.addr_start == 2 * BS


def test_holes_read_zero_and_views_share_memory(bigfile):
    fh = bigfile.fileh_open()
    a = u8(fh.mmap(0, 4))
    b = u8(fh.mmap(2, 2))          # overlaps blocks 2, 3 of a
    assert not a.any()
    a[2 * BS + 5] = 42
    assert b[5] == 42              # one address per block: same memory
    b[BS + 1] = 7
    assert a[3 * BS + 1] == 7
    assert fh.dirty_blocks() == [2, 3]
    assert fh.isdirty()


def test_writeout_discard_invalidate(bigfile):
    fh = bigfile.fileh_open()
    a = u8(fh.mmap(0, 4))
    a[:] = 1
    a[BS:2 * BS] = 2
    fh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
    assert not fh.isdirty()
    want = np.ones(4 * BS, np.uint8)
    want[BS:2 * BS] = 2
    assert np.array_equal(stored(bigfile, 4), want)
    # a write after writeout dirties again; discard brings back the stored data
    a[0] = 99
    assert fh.dirty_blocks() == [0]
    fh.dirty_discard()
    assert not fh.isdirty()
    assert a[0] == 1
    # the storage changes behind our back: invalidate one block only
    bigfile.storeblk(1, memoryview(bytes([5]) * BS))
    bigfile.storeblk(2, memoryview(bytes([6]) * BS))
    assert a[BS] == 2
    fh.invalidate_page(1)
    assert a[BS] == 5              # reloaded
    assert a[2 * BS] == 1          # not invalidated: still the copy in RAM
    a[0] = 3
    with pytest.raises(RuntimeError):
        fh.invalidate_page(0)      # dirty: would lose the change
    fh.invalidate_page(10 ** 6)    # not loaded / beyond: nothing to do


def test_writeout_flags(bigfile):
    fh = bigfile.fileh_open()
    a = u8(fh.mmap(0, 2))
    a[:] = 9
    fh.dirty_writeout(WRITEOUT_STORE)          # stored, still dirty
    assert fh.isdirty()
    assert stored(bigfile, 2)[0] == 9
    fh.dirty_writeout(WRITEOUT_MARKSTORED)     # just marked clean
    assert not fh.isdirty()
    a[0] = 1
    assert fh.isdirty()
    with pytest.raises(ValueError):
        fh.dirty_writeout(0)
    with pytest.raises(ValueError):
        fh.dirty_writeout(8)


def test_storeblk_error_keeps_data_dirty():
    class Flaky(BigFile_RAM):
        fail = True

        def storeblk(self, blk, buf):
            if self.fail:
                raise OSError("disk full")
            BigFile_RAM.storeblk(self, blk, buf)
    f = Flaky(BS)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 2))
    a[:] = 4
    with pytest.raises(OSError, match="disk full"):
        fh.dirty_writeout()
    assert fh.dirty_blocks() == [0, 1]
    a[1] = 5                                   # still writable
    f.fail = False
    fh.dirty_writeout()
    assert not fh.isdirty()
    assert stored(f, 2)[1] == 5 and stored(f, 2)[2] == 4


def test_loadblk_error_at_entry_point_raises():
    class Broken(BigFile_RAM):
        def loadblk(self, blk, buf):
            raise IOError("disk on fire at %d" % blk)
    fh = Broken(BS).fileh_open()
    v = fh.mmap(0, 3)
    e0 = wendelin_cy.pager_stats()["load_errors"]
    with pytest.raises(OSError, match="disk on fire at 1"):
        v.prefault(BS, 10)
    assert wendelin_cy.pager_stats()["load_errors"] > e0


def test_loadblk_keeping_buffer_gets_a_detached_copy():
    # a view of loadblk's buffer that outlives loadblk (kept by it, or by
    # another thread's gc.get_objects()) never shows the pager's memory: the
    # load succeeds, the view keeps a copy of its own, and no new view of the
    # buffer can be taken once loadblk has returned
    kept = []

    class Keeper(BigFile_RAM):
        def loadblk(self, blk, buf):
            a = np.frombuffer(buf, dtype=np.uint8)
            a[:] = 7
            kept.append(a)
    v = Keeper(BS).fileh_open().mmap(0, 1)
    A = np.ndarray((BS,), np.uint8, buffer=v)
    assert (A == 7).all()
    k = kept.pop()
    assert (k == 7).all()
    k[:] = 1                        # the copy is the view's own ...
    assert (A == 7).all()
    A[:10] = 3                      # ... and the block's pages are not the view's
    assert (k[:10] == 1).all()
    with pytest.raises(BufferError):
        memoryview(k.base.obj)      # (the loader's buffer itself: finished)
    del k
    gc.collect()


def test_loadblk_touching_own_block_is_an_error():
    r = run_py("""
        import numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        holder = {}
        class Recursive(BigFile_RAM):
            def loadblk(self, blk, buf):
                holder['a'][0]
        v = Recursive(65536).fileh_open().mmap(0, 1)
        holder['a'] = np.ndarray((65536,), np.uint8, buffer=v)
        print(holder['a'][5])
    """)
    assert r.returncode == -signal.SIGBUS
    assert "touched the block it is loading" in r.stderr


def test_loadblk_error_inside_fault_ends_with_sigbus_and_diagnostic():
    r = run_py("""
        import numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        class Broken(BigFile_RAM):
            def loadblk(self, blk, buf):
                raise ValueError("corrupt record in block %d" % blk)
        v = Broken(65536).fileh_open().mmap(0, 4)
        a = np.ndarray((4 * 65536,), np.uint8, buffer=v)
        print(a.sum())
    """)
    assert r.returncode == -signal.SIGBUS
    assert "corrupt record in block 0" in r.stderr
    assert "loading block 0 of <BigFile_RAM" in r.stderr


def test_transient_loadblk_errors_are_retried_inside_fault(caplog):
    caplog.set_level(logging.WARNING, logger="wendelin_cy")
    class Flaky(BigFile_RAM):
        n = 0

        def loadblk(self, blk, buf):
            Flaky.n += 1
            if Flaky.n < 3:
                raise ConnectionResetError("blip")
            BigFile_RAM.loadblk(self, blk, buf)
    f = Flaky(BS)
    f.blocks[0] = bytes([3]) * BS
    a = u8(f.fileh_open().mmap(0, 1))
    assert a[10] == 3
    assert Flaky.n == 3
    # each retry is an event on the wendelin_cy.pager logger
    retries = [r for r in caplog.records if r.name == "wendelin_cy.pager"
               and "retry" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.WARNING] * 2
    assert "ConnectionResetError: blip; retry 1 of 3" in retries[0].getMessage()
    assert "retry 2 of 3" in retries[1].getMessage()


def test_budget_overshoot_is_logged(budget, caplog):
    """Pinned blocks that fill the budget: the next load overshoots it, and
    the overshoot reaches the wendelin_cy.pager logger (a warning the first
    time in the process, debug after)."""
    caplog.set_level(logging.DEBUG, logger="wendelin_cy.pager")
    bs = 1 << 20
    budget(2 * bs)
    f = BigFile_RAM(bs)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 4))
    before = wendelin_cy.pager_stats()["overshoots"]
    for b in range(3):
        a[b * bs] = 1
        fh.pin(b)
    a[3 * bs]                   # a 4th block, 3 pinned, budget of 2
    a[3 * bs] = 1
    n = wendelin_cy.pager_stats()["overshoots"]
    assert n > before
    over = [r for r in caplog.records if "RAM budget overshot" in r.getMessage()]
    assert over and over[-1].name == "wendelin_cy.pager"
    for b in range(3):
        fh.unpin(b)
    del a
    fh.close()


def test_real_segfault_reaches_faulthandler():
    # faulthandler enabled *after* the pager's handler: it must still see crashes,
    # and must not see the pager's own faults
    r = run_py("""
        import numpy as np, wendelin_cy, faulthandler, ctypes
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        v = BigFile_RAM(65536).fileh_open().mmap(0, 4)
        faulthandler.enable()
        a = np.ndarray((4 * 65536,), np.uint8, buffer=v)
        a[:] = 1
        print("sum", a.sum(), flush=True)
        ctypes.string_at(0)
    """)
    assert r.returncode == -signal.SIGSEGV
    assert "sum 262144" in r.stdout
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert "string_at" in r.stderr


def test_segfault_without_faulthandler_still_segfaults():
    r = run_py("""
        import wendelin_cy, ctypes
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        v = BigFile_RAM(65536).fileh_open().mmap(0, 1)
        ctypes.string_at(0)
    """)
    assert r.returncode == -signal.SIGSEGV


# ------------------------------------------------------------------ budget

def test_budget_reclaim_and_vma_count(bigfile, budget):
    budget(8 * BS if BS * 8 >= 1 << 20 else 1 << 20)
    nb = wendelin_cy.get_ram_budget() // BS
    fh = bigfile.fileh_open()
    nblk = 40 * nb                       # many more blocks than the budget holds
    a = u8(fh.mmap(0, nblk))
    v0 = vma_count()
    ev0 = wendelin_cy.pager_stats()["evictions"]
    peak_vmas = 0
    for blk in range(nblk):
        assert a[blk * BS] == 0
        s = wendelin_cy.pager_stats()
        assert s["resident"] + s["pool"] <= s["budget"]
        if blk % 50 == 0:
            peak_vmas = max(peak_vmas, vma_count() - v0)
    assert len(fh.resident_blocks()) <= nb
    # each resident block is at most ~2 VMAs (its own, and a split); never one per
    # block ever touched
    assert peak_vmas <= 2 * nb + 4, peak_vmas
    # every block touched beyond what the budget holds was evicted, by this loop
    assert wendelin_cy.pager_stats()["evictions"] - ev0 >= nblk - nb


def test_recency_keeps_hot_blocks(budget):
    budget(1 << 20)                      # 16 blocks of 64 KiB
    f = BigFile_RAM(BS)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 200))
    loads0 = f.nload
    hot = [0, 1, 2, 3]
    for blk in range(4, 200):
        for h in hot:                    # touched between every new block
            a[h * BS] += 0
        a[blk * BS]
    hot_loads = f.nload - loads0 - (200 - 4)
    assert set(hot) <= set(fh.resident_blocks())
    assert hot_loads <= 8, hot_loads     # loaded once (maybe twice), not per sweep


def test_dirty_beyond_budget_spills_and_writes_out(bigfile, budget):
    gc.collect()                         # handles of earlier tests
    spilled0 = wendelin_cy.pager_stats()["spilled"]
    budget(1 << 20)
    fh = bigfile.fileh_open()
    nblk = 64                            # 4 MiB of changes, budget 1 MiB
    a = u8(fh.mmap(0, nblk))
    rng = np.random.default_rng(1)
    model = rng.integers(0, 256, nblk * BS, dtype=np.uint8)
    for blk in range(nblk):
        a[blk * BS:(blk + 1) * BS] = model[blk * BS:(blk + 1) * BS]
        s = wendelin_cy.pager_stats()
        assert s["resident"] + s["pool"] <= s["budget"]
    s = wendelin_cy.pager_stats()
    assert s["spilled"] > spilled0
    assert fh.dirty_blocks() == list(range(nblk))
    assert np.array_equal(a, model)      # spilled blocks read back dirty
    a[5] = 1
    model[5] = 1
    fh.dirty_writeout()
    assert not fh.isdirty()
    assert wendelin_cy.pager_stats()["spilled"] == spilled0
    assert np.array_equal(stored(bigfile, nblk), model)


def test_discard_of_spilled_data(budget):
    gc.collect()
    spilled0 = wendelin_cy.pager_stats()["spilled"]
    budget(1 << 20)
    f = BigFile_RAM(BS)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 64))
    a[:] = 7
    assert wendelin_cy.pager_stats()["spilled"] > spilled0
    fh.dirty_discard()
    assert wendelin_cy.pager_stats()["spilled"] == spilled0
    assert not a.any()
    assert f.nstore == 0


def test_set_ram_budget_validation(budget):
    with pytest.raises(ValueError):
        wendelin_cy.set_ram_budget(0)
    with pytest.raises(ValueError):
        wendelin_cy.set_ram_budget(-5)
    with pytest.raises(ValueError):
        wendelin_cy.set_ram_budget("lots")
    with pytest.raises(TypeError):
        wendelin_cy.set_ram_budget(1.5e9)
    wendelin_cy.set_ram_budget("3M")
    assert wendelin_cy.get_ram_budget() == 3 << 20


def test_lowering_budget_reclaims_now(budget):
    budget(64 << 20)
    f = BigFile_RAM(BS)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 100))
    a.sum()
    assert len(fh.resident_blocks()) == 100
    wendelin_cy.set_ram_budget(1 << 20)
    s = wendelin_cy.pager_stats()
    assert s["resident"] + s["pool"] <= 1 << 20
    assert a.sum() == 0


@pytest.mark.parametrize("text,value", [
    ("512M", 512 << 20), ("2G", 2 << 30), ("4096", 4096), ("1.5g", 3 << 29),
    ("64k", 64 << 10), ("2GiB", 2 << 30), (" 100MB ", 100 << 20), (12345, 12345)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "12Q", "-5M", "1e9", None, True])
def test_parse_size_rejects(text):
    with pytest.raises((ValueError, TypeError)):
        parse_size(text)


def test_budget_from_environment():
    r = run_py("import wendelin_cy; print(wendelin_cy.get_ram_budget())",
               env=dict(os.environ, WENDELIN_CY_RAM_BUDGET="96M"))
    assert r.stdout.strip() == str(96 << 20)
    r = run_py("import wendelin_cy",
               env=dict(os.environ, WENDELIN_CY_RAM_BUDGET="nonsense"))
    assert r.returncode == 1 and "cannot parse size 'nonsense'" in r.stderr


def test_default_budget_is_within_available_memory():
    from wendelin_cy.ram import _meminfo_available, default_ram_budget
    env = os.environ.pop("WENDELIN_CY_RAM_BUDGET", None)
    try:
        assert 0 < default_ram_budget() <= _meminfo_available()
    finally:
        if env is not None:
            os.environ["WENDELIN_CY_RAM_BUDGET"] = env


def test_stats_keys():
    s = wendelin_cy.pager_stats()
    for k in ("budget", "resident", "dirty", "faults", "loads", "evictions", "writeouts"):
        assert isinstance(s[k], int)


# ------------------------------------------------------------------ kernel access

def test_syscalls_on_mapped_memory_after_prefault(tmp_path, budget):
    budget(1 << 20)
    f = BigFile_RAM(BS)
    f.blocks = {b: bytes([b + 1]) * BS for b in range(8)}
    fh = f.fileh_open()
    v = fh.mmap(0, 8)
    a = u8(v)
    a[0]                                  # some resident, some not
    wendelin_cy.set_ram_budget(1 << 20)
    m = memoryview(v)
    # the kernel does not fault pages in for a syscall: it says EFAULT ...
    fd = os.open(tmp_path / "raw", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as ei:
        os.write(fd, m[5 * BS:6 * BS])
    assert ei.value.errno == errno.EFAULT
    os.close(fd)
    # ... so prefault first
    out = tmp_path / "out"
    with open(out, "wb") as fo:
        for blk in range(8):
            v.prefault(blk * BS, BS)
            fo.write(m[blk * BS:(blk + 1) * BS])
    assert open(out, "rb").read() == b"".join(f.blocks[b] for b in range(8))
    # and into mapped memory: readinto needs write access
    v.prefault(0, BS, write=True)
    with open(out, "rb") as fi:
        assert fi.readinto(m[0:BS]) == BS
    assert fh.dirty_blocks() == [0]


def test_madvise(bigfile):
    fh = bigfile.fileh_open()
    v = fh.mmap(0, 8)
    v.madvise("willneed", 0, 3 * BS)
    assert fh.resident_blocks() == [0, 1, 2]
    v.madvise("dontneed", BS, BS)
    assert fh.resident_blocks() == [0, 2]
    v.madvise("sequential")
    with pytest.raises(ValueError):
        v.madvise("soon")
    with pytest.raises(ValueError):
        v.prefault(0, 9 * BS)


# ------------------------------------------------------------------ lifecycle

def test_close_with_live_views_refuses(bigfile):
    fh = bigfile.fileh_open()
    v = fh.mmap(0, 1)
    with pytest.raises(RuntimeError, match="still alive"):
        fh.close()
    del v
    fh.close()
    assert fh.closed
    with pytest.raises(ValueError):
        fh.mmap(0, 1)
    with pytest.raises(ValueError):
        fh.isdirty()


def test_handles_release_resources(budget):
    s0 = wendelin_cy.pager_stats()
    for _ in range(200):
        fh = BigFile_RAM(BS).fileh_open()
        a = u8(fh.mmap(0, 2))
        a[:] = 1
        del a
        del fh
    s1 = wendelin_cy.pager_stats()
    assert s1["regions"] == s0["regions"]
    assert s1["resident"] <= s0["resident"]
    assert s1["dirty"] == s0["dirty"]


# ------------------------------------------------------------------ concurrency

def test_threads_read_and_write_under_tiny_budget(budget):
    budget(1 << 20)
    f = BigFile_RAM(BS)
    nblk = 48
    fh = f.fileh_open()
    a = np.ndarray((nblk * BS // 8,), np.int64, buffer=fh.mmap(0, nblk))
    per = BS // 8
    errors = []

    def worker(t):
        try:
            rng = np.random.default_rng(t)
            for _ in range(300):
                blk = int(rng.integers(0, nblk))
                i = blk * per + t               # each thread owns one slot a block
                a[i] += 1
                assert a[blk * per + 7] == 0    # nobody writes slot 7
        except BaseException as e:              # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
    model = np.zeros_like(a)
    for t in range(4):
        rng = np.random.default_rng(t)
        for _ in range(300):
            model[int(rng.integers(0, nblk)) * per + t] += 1
    assert np.array_equal(a, model)
    fh.dirty_writeout()
    assert np.array_equal(stored(f, nblk).view(np.int64), model)


def test_threads_outside_python_fault_too(budget, tmp_path):
    # BLAS threads (not known to Python) read the mapped operand
    budget(1 << 20)
    n = 512
    m = np.random.default_rng(0).random((n, n))
    path = tmp_path / "m"
    m.tofile(path)
    f = BigFile_File(path, BS)
    fh = f.fileh_open()
    nblk = (m.nbytes + BS - 1) // BS
    x = np.ndarray((n, n), np.float64, buffer=fh.mmap(0, nblk))
    assert np.allclose(x @ m, m @ m)


def test_concurrent_loads_of_one_block_load_once():
    import time

    class Slow(BigFile_RAM):
        def loadblk(self, blk, buf):
            time.sleep(0.2)
            BigFile_RAM.loadblk(self, blk, buf)
    f = Slow(BS)
    f.blocks[0] = bytes([9]) * BS
    a = u8(f.fileh_open().mmap(0, 1))
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(int(a[100]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == [9] * 4
    assert f.nload == 1


def test_fork_child_reads_resident_and_file_blocks(tmp_path):
    path = tmp_path / "d"
    np.arange(8 * BS, dtype=np.uint8).tofile(path)
    fh = BigFile_File(path, BS).fileh_open()
    a = u8(fh.mmap(0, 8))
    a[0] = 200                                     # dirty, resident
    pid = os.fork()
    if pid == 0:                                   # child
        ok = a[0] == 200 and a[5 * BS + 3] == (5 * BS + 3) % 256
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert a[0] == 200                             # parent untouched


def test_fork_child_cannot_load_python_blocks_clear_error():
    r = run_py("""
        import os, numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        f = BigFile_RAM(65536)
        v = f.fileh_open().mmap(0, 2)
        a = np.ndarray((2 * 65536,), np.uint8, buffer=v)
        a[0] = 1
        pid = os.fork()
        if pid == 0:
            assert a[0] == 1           # resident: fine
            try:
                v.prefault(65536, 10)
            except RuntimeError as e:
                print("child:", e, flush=True)
            a[65536 + 5]               # not resident: clear diagnostic, SIGBUS
            os._exit(0)
        _, st = os.waitpid(pid, 0)
        print("status", os.waitstatus_to_exitcode(st), a[0], flush=True)
    """)
    assert "forked child" in r.stdout
    assert "status %d 1" % -signal.SIGBUS in r.stdout
    assert "forked child" in r.stderr


def test_no_livelock_when_budget_is_mostly_dirty():
    # regression: with dirty pages filling the budget, the few clean ones used to
    # evict each other while one instruction (a SIMD compare crossing a block
    # boundary) needed two of them: the fault never finished
    r = run_py("""
        import numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        BS = 256 * 1024; N = 24
        wendelin_cy.set_ram_budget(4 * BS)
        fh = BigFile_RAM(BS).fileh_open()
        a = np.ndarray((N * BS,), np.uint8, buffer=fh.mmap(0, N))
        mem = np.zeros(N * BS, np.uint8)
        rng = np.random.default_rng(1)
        for i in range(3000):
            lo = int(rng.integers(0, N * BS - 1))
            hi = int(rng.integers(lo + 1, min(N * BS, lo + 3 * BS) + 1))
            op = rng.integers(0, 4)
            if op == 0:
                assert np.array_equal(a[lo:hi], mem[lo:hi])
            elif op == 1:
                a[lo:hi] = i % 256; mem[lo:hi] = i % 256
            elif op == 2:
                fh.dirty_writeout()
            else:
                wendelin_cy.set_ram_budget(int(rng.integers(4, 12)) * BS)
        print("ok")
    """)
    assert r.stdout.strip() == "ok", r.stderr


def test_dirty_hook_called_on_clean_to_dirty(bigfile):
    fh = bigfile.fileh_open()
    calls = []
    fh.set_dirty_hook(lambda: calls.append(fh.dirty_blocks()))
    a = u8(fh.mmap(0, 4))
    a[0]                              # a read does not dirty
    assert calls == []
    a[5] = 1                          # loaded block, first write
    assert calls == [[0]]
    a[BS + 5] = 1                     # already dirty handle: no new call
    a[6] = 2
    assert len(calls) == 1
    fh.dirty_writeout()
    a[3 * BS] = 4                     # block not loaded yet, written first
    assert calls[1:] == [[3]]
    fh.dirty_discard()
    fh.set_dirty_hook(lambda: 1 / 0)  # errors are reported, the write goes on
    a[7] = 7
    assert a[7] == 7
    fh.set_dirty_hook(None)
    with pytest.raises(TypeError):
        fh.set_dirty_hook(42)


def test_sequential_faults_call_prefetch():
    class Prefetching(BigFile_RAM):
        def __init__(self, blksize):
            BigFile_RAM.__init__(self, blksize)
            self.asked = []

        def prefetch(self, blk, n):
            self.asked.append((blk, n))
    f = Prefetching(BS)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 64))
    for blk in range(0, 40):             # a sequential scan
        a[blk * BS]
    assert f.asked, "no readahead for a sequential scan"
    covered = set()
    for blk, n in f.asked:
        assert n > 0
        covered |= set(range(blk, blk + n))
    assert set(range(2, 40)) <= covered  # always ahead of the scan
    f.asked.clear()
    for blk in (50, 44, 60, 47, 55):     # random: no readahead
        a[blk * BS]
    assert f.asked == []


def test_prefetch_errors_are_not_fatal(caplog):
    class Bad(BigFile_RAM):
        def prefetch(self, blk, n):
            raise RuntimeError("prefetch broke")
    f = Bad(BS)
    f.blocks[3] = bytes([1]) * BS
    a = u8(f.fileh_open().mmap(0, 8))
    assert [int(a[b * BS]) for b in range(8)] == [0, 0, 0, 1, 0, 0, 0, 0]
    errs = [r for r in caplog.records if r.name == "wendelin_cy.pager"
            and r.exc_info and "prefetch broke" in str(r.exc_info[1])]
    assert len(errs) == 1 and errs[0].levelno == logging.ERROR
    assert "prefetch failed (ignored)" in errs[0].getMessage()
    del errs
    caplog.clear()          # the records' tracebacks hold the handle's frames


def test_cycle_through_bigfile_and_handle_is_collected():
    import weakref

    class Owning(BigFile_RAM):
        pass
    gc.collect()            # what earlier tests left in cycles is not counted
    f = Owning(BS)
    f.fh = f.fileh_open()                # bigfile -> handle -> bigfile
    u8(f.fh.mmap(0, 1))[0] = 1
    regions = wendelin_cy.pager_stats()["regions"]
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None
    assert wendelin_cy.pager_stats()["regions"] == regions - 1


def test_prefetch_extents_are_read_ahead_by_the_pager(tmp_path):
    # a BigFile whose blocks lie in a file at odd offsets (like records in a
    # log): prefetch() names the extents and the pager's thread reads them
    path = tmp_path / "log"
    nblk = 48
    rng = np.random.default_rng(3)
    payload = rng.integers(0, 256, nblk * BS, dtype=np.uint8)
    hdr = 100                                   # bytes of "header" before each block
    with open(path, "wb") as fo:
        for b in range(nblk):
            fo.write(bytes(hdr))
            fo.write(payload[b * BS:(b + 1) * BS].tobytes()[: BS - b])   # short blocks
    fd = os.open(path, os.O_RDONLY)

    class Log(BigFile):
        def __init__(self):
            BigFile.__init__(self, BS)
            self.loads = 0

        def _off(self, b):
            return sum(hdr + BS - k for k in range(b)) + hdr

        def loadblk(self, blk, buf):
            self.loads += 1
            n = BS - blk
            buf[:n] = os.pread(fd, n, self._off(blk))
            buf[n:] = bytes(BS - n)

        def prefetch(self, blk, n):
            return [(b, fd, self._off(b), BS - b) for b in range(blk, min(blk + n, nblk))]

    f = Log()
    want = payload.copy()
    for b in range(nblk):
        want[(b + 1) * BS - b:(b + 1) * BS] = 0
    s0 = wendelin_cy.pager_stats()
    a = u8(f.fileh_open().mmap(0, nblk))
    int(a[0]), int(a[BS]), int(a[2 * BS])       # sequential faults: read-ahead starts
    # the pager's thread reads asynchronously: on a loaded machine the scan
    # could overtake it, so let it read before scanning on (bounded wait)
    deadline = time.monotonic() + 30
    while (wendelin_cy.pager_stats()["readahead_loads"] == s0["readahead_loads"]
           and time.monotonic() < deadline):
        time.sleep(0.01)
    assert np.array_equal(a, want)              # the whole sequential scan
    s1 = wendelin_cy.pager_stats()
    hits = s1["readahead_hits"] - s0["readahead_hits"]
    assert hits > 0
    assert hits + f.loads == nblk               # every block loaded exactly once
    os.close(fd)


class _Futures(BigFile):
    """Blocks b hold bytes b+1; prefetch() answers with futures the test
    completes itself (blocks asked for: .pending)."""

    def __init__(self, nblk):
        BigFile.__init__(self, BS)
        self.nblk = nblk
        self.loads = []
        self.pending = {}

    @staticmethod
    def data(blk):
        return bytes([blk + 1]) * BS

    def loadblk(self, blk, buf):
        self.loads.append(blk)
        buf[:] = self.data(blk)

    def prefetch(self, blk, n):
        from concurrent.futures import Future
        out = []
        for b in range(blk, min(blk + n, self.nblk)):
            if b not in self.pending:
                self.pending[b] = Future()
                out.append((b, self.pending[b]))
        return out


def test_prefetch_futures_become_pages_in_the_completing_thread():
    f = _Futures(32)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 32))
    s0 = wendelin_cy.pager_stats()
    a[0], a[BS]                                 # sequential: blocks ahead asked for
    assert f.loads == [0, 1] and 2 in f.pending
    # completed in another thread, with a memoryview (and a short block: zeros follow)
    t = threading.Thread(target=f.pending[2].set_result,
                         args=(memoryview(f.data(2))[: BS - 10],))
    t.start()
    t.join()
    assert wendelin_cy.pager_stats()["readahead_loads"] == s0["readahead_loads"] + 1
    assert a[2 * BS] == 3 and a[3 * BS - 11] == 3 and not a[3 * BS - 10: 3 * BS].any()
    assert f.loads == [0, 1]                    # block 2 never went through loadblk
    assert wendelin_cy.pager_stats()["readahead_hits"] == s0["readahead_hits"] + 1
    # results that are not a block are ignored: the fault loads the block itself
    f.pending[3].set_result(None)
    f.pending[4].set_exception(OSError("lost"))
    f.pending[5].set_result(bytes(BS + 1))      # too long
    f.pending[6].cancel()
    assert [a[b * BS] for b in (3, 4, 5, 6)] == [4, 5, 6, 7]
    assert f.loads == [0, 1, 3, 4, 5, 6]


def test_prefetch_futures_of_a_changed_block_are_dropped():
    f = _Futures(32)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 32))
    a[0], a[BS]
    fut = f.pending[2]
    a[10 * BS] = 9                              # a write: contents may have changed
    fut.set_result(bytes([99]) * BS)            # data from before the write
    assert a[2 * BS] == 3                       # loaded anew, not the stale future
    assert 2 in f.loads
    fh.dirty_discard()


def test_prefetch_futures_completed_after_close_are_ignored():
    f = _Futures(32)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 32))
    a[0], a[BS]
    futs = list(f.pending.values())
    del a
    fh.close()
    for fut in futs:
        fut.set_result(f.data(0))               # nothing to place them in: no crash
    assert all(fut.done() for fut in futs)


def test_prefetch_future_with_a_bad_block_number_is_reported(caplog):
    from concurrent.futures import Future

    class Bad(BigFile_RAM):
        def prefetch(self, blk, n):
            return [(-1, Future())]
    a = u8(Bad(BS).fileh_open().mmap(0, 8))
    assert [int(a[b * BS]) for b in range(8)] == [0] * 8
    bad = [r for r in caplog.records if r.name == "wendelin_cy.pager" and r.exc_info
           and "prefetch: bad (blk, future)" in str(r.exc_info[1])]
    assert len(bad) == 1 and isinstance(bad[0].exc_info[1], ValueError)
    del bad
    caplog.clear()


def test_loadblk_may_return_hole(budget):
    from wendelin_cy.bigfile import HOLE
    budget(1 << 20)                       # recycled staging memory holds old data

    class Sparse(BigFile):
        def loadblk(self, blk, buf):
            if blk % 2 == 0:
                return HOLE
            buf[:] = bytes([7]) * len(buf)
    fh = Sparse(BS).fileh_open()
    a = u8(fh.mmap(0, 64))
    for _ in range(2):
        for blk in range(64):
            want = 0 if blk % 2 == 0 else 7
            assert a[blk * BS] == want and a[(blk + 1) * BS - 1] == want
    assert not a[: 2 * BS:][:BS].any()
    a[0] = 5                              # a hole block is writable like any other
    assert a[0] == 5 and fh.dirty_blocks() == [0]
    fh.dirty_discard()


def test_first_spill_with_threads_faulting_does_not_deadlock():
    # regression: reclaim opened the scratch file taking the GIL with the pager
    # lock held; a thread holding the GIL and faulting waited for the lock
    r = run_py("""
        import threading, numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        BS = 256 * 1024
        wendelin_cy.set_ram_budget(1 << 20)
        arrays = [np.ndarray((16 * BS,), np.uint8, buffer=BigFile_RAM(BS).fileh_open().mmap(0, 16))
                  for _ in range(4)]
        def work(a):
            for i in range(20):
                a[(i % 16) * BS:(i % 16) * BS + 100] = i     # dirty beyond the budget
                a.sum()
        ts = [threading.Thread(target=work, args=(a,)) for a in arrays]
        for t in ts: t.start()
        for t in ts: t.join(60)
        print("alive", sum(t.is_alive() for t in ts), wendelin_cy.pager_stats()["spills"] > 0)
    """)
    assert r.stdout.split() == ["alive", "0", "True"], r.stdout + r.stderr


def test_readers_never_see_a_block_being_evicted_as_zeros(tmp_path):
    # regression: eviction moved a block's memory away (MREMAP_DONTUNMAP) while
    # the old range was still readable: a reader saw zero pages for a moment.
    # 4 threads, own connections, 4 arrays of 4 blocks, a 4-block budget:
    # without the fix this failed 3 runs in 8.
    script = os.path.join(HERE, "scripts", "threads_evict_read.py")
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        r = subprocess.run([sys.executable, script, str(d)], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, PYTHONPATH=SRC))
        assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-2000:]


# ~~~ loadblk returning MapFile: the block is mapped from a file, not copied

def _mapfile_bigfile(files):
    from wendelin_cy.bigfile import MapFile

    class Mapped(BigFile):
        stored = {}

        def loadblk(self, blk, buf):
            return MapFile(files[blk])

        def storeblk(self, blk, buf):
            self.stored[blk] = bytes(buf)
    return Mapped(BS)


def test_loadblk_may_return_mapfile(tmp_path, budget):
    budget(1 << 20)                         # 16 blocks: evicted and mapped again
    n = 40
    files = []
    for blk in range(n):
        p = str(tmp_path / ('blk%d' % blk))
        np.full(BS, blk + 1, np.uint8).tofile(p)
        files.append(p)
    f = _mapfile_bigfile(files)
    fh = f.fileh_open()
    a = u8(fh.mmap(0, n))
    z0 = wendelin_cy.pager_stats()['zerocopy_loads']
    for _ in range(2):
        for blk in range(n):
            assert a[blk * BS] == blk + 1 and a[(blk + 1) * BS - 1] == blk + 1
    assert wendelin_cy.pager_stats()['zerocopy_loads'] - z0 >= 2 * n - 16
    # a write changes the memory, never the file (a private mapping)
    a[3 * BS + 5] = 200
    assert fh.dirty_blocks() == [3]
    fh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
    assert f.stored[3][5] == 200 and f.stored[3][6] == 4
    assert np.fromfile(files[3], np.uint8)[5] == 4
    assert a[3 * BS + 5] == 200            # still resident, as stored
    fh.dirty_discard()


def test_mapfile_short_file_reads_with_zeros_and_bad_input(tmp_path):
    from wendelin_cy.bigfile import MapFile
    short = str(tmp_path / 'short')
    np.full(BS // 2 + 3, 9, np.uint8).tofile(short)
    empty = str(tmp_path / 'empty')
    open(empty, 'wb').close()
    missing = str(tmp_path / 'missing')
    f = _mapfile_bigfile([short, empty, missing])
    fh = f.fileh_open()
    a = u8(fh.mmap(0, 2))
    assert (a[:BS // 2 + 3] == 9).all() and not a[BS // 2 + 3:BS].any()
    assert not a[BS:2 * BS].any()
    # a file that cannot be opened: the loader's error, at an entry point
    with pytest.raises(FileNotFoundError) as ei:
        fh.prefault(2, 3)
    assert isinstance(ei.value, wendelin_cy.LoadError)
    with pytest.raises(ValueError):
        MapFile(short, 100)                 # not page aligned
    with pytest.raises(ValueError):
        MapFile(short, -4096)
    with pytest.raises(TypeError):
        MapFile(12.5)


def test_hole_loaded_for_writing_into_recycled_memory_is_zero(budget):
    # a hole block first touched by a write gets recycled staging memory,
    # zeroed in place: the bytes not written must read as zeros
    from wendelin_cy.bigfile import HOLE
    budget(1 << 20)                       # 16 blocks: staging memory recycles

    class Holes(BigFile):
        def loadblk(self, blk, buf):
            if blk >= 64:
                return HOLE
            buf[:] = bytes([0xAB]) * len(buf)
    fh = Holes(BS).fileh_open()
    a = u8(fh.mmap(0, 128))
    for blk in range(64):                 # fill the pool with non-zero pages
        assert a[blk * BS + 17] == 0xAB
    for blk in range(64, 128):
        a[blk * BS + 5] = 1               # a write fault on a hole block
        assert a[blk * BS + 5] == 1
        assert not a[blk * BS:blk * BS + 5].any() and not a[blk * BS + 6:(blk + 1) * BS].any()
    fh.dirty_discard()


@given(data=st.binary(max_size=3000), cs=st.integers(1, 600),
       start=st.integers(0, 7), nz=st.lists(st.integers(0, 2999), max_size=5))
@settings(max_examples=300, deadline=None)
def test_zero_chunks_matches_numpy(data, cs, start, nz):
    from wendelin_cy._pager.virtmem import zero_chunks
    b = bytearray(len(data))              # mostly zeros, a few set bytes
    for i in nz:
        if i < len(b):
            b[i] = data[i] or 1
    v = memoryview(b)[min(start, len(b)):]
    a = np.frombuffer(v, np.uint8)
    want = [int(not a[i:i + cs].any()) for i in range(0, len(a), cs)]
    assert list(zero_chunks(v, cs)) == want


def test_sequential_scan_gets_warm_staging_blocks_within_budget(budget):
    # a scan whose blocks come through loadblk: the readahead thread makes
    # staging memory ready ahead of it (faulted in), never beyond the budget
    import time
    budget(4 << 20)                       # 64 blocks of 64 KiB

    class Seq(BigFile):
        def loadblk(self, blk, buf):
            buf[:] = bytes([blk % 251]) * len(buf)

        def prefetch(self, blk, n):
            return None
    fh = Seq(BS).fileh_open()
    a = u8(fh.mmap(0, 256))
    w0 = wendelin_cy.pager_stats()['warm_slots']
    for blk in range(256):
        assert a[blk * BS] == blk % 251 and a[(blk + 1) * BS - 1] == blk % 251
        time.sleep(0.0005)                # (the readahead thread gets a turn)
        st = wendelin_cy.pager_stats()
        assert st['resident'] + st['pool'] <= (4 << 20) + BS, st
    assert wendelin_cy.pager_stats()['warm_slots'] > w0
    for blk in range(256):                # and every block reads right again
        assert a[blk * BS + 7] == blk % 251


@pytest.mark.parametrize('slow_ns, backoff, small', [(0, 1000, True), (10**12, 1000, False),
                                                     (0, 0, False)])
def test_slow_huge_pages_make_new_blocks_use_small_pages(budget, slow_ns, backoff, small):
    # new 2 MiB staging blocks get huge pages; when one is slower to fault in
    # than slow_ns (a VM host taking free memory back), the next `backoff`
    # new blocks get small pages.  slow_ns=0: every huge page is "slow".
    import time
    from wendelin_cy._pager import virtmem
    B = 2 << 20
    budget(64 * B)

    class Seq(BigFile):
        def loadblk(self, blk, buf):
            buf[:] = bytes([blk % 251]) * len(buf)

        def prefetch(self, blk, n):
            return None
    old = virtmem._thp_policy(slow_ns, backoff)
    try:
        fh = Seq(B).fileh_open()
        a = u8(fh.mmap(0, 24))
        s0 = wendelin_cy.pager_stats()
        for blk in range(24):
            assert a[blk * B] == blk % 251 and a[(blk + 1) * B - 1] == blk % 251
            time.sleep(0.002)             # (the readahead thread gets a turn)
        s1 = wendelin_cy.pager_stats()
        assert s1['warm_slots'] > s0['warm_slots']
        assert (s1['small_page_slots'] > s0['small_page_slots']) == small
        for blk in range(24):
            assert a[blk * B + 12345] == blk % 251
        del a
        fh.close()
    finally:
        virtmem._thp_policy(*old)


def test_pin_keeps_a_block_in_place_under_reclaim(budget):
    """A pinned block stays resident at its memory while other blocks come and
    go through a budget of 2 blocks; unpinned it can be evicted again; pins
    count; unpin without pin and a negative block raise."""
    bs = 1 << 20
    budget(2 * bs)

    class F(BigFile):
        def loadblk(self, blk, buf):
            np.frombuffer(buf, np.uint8)[:] = blk % 251

        def storeblk(self, blk, buf):
            raise AssertionError
    fh = F(bs).fileh_open()
    vma = fh.mmap(0, 8)
    a = np.frombuffer(vma, np.uint8)
    fh.pin(0)
    fh.pin(0)
    for _ in range(3):
        for b in range(1, 8):
            assert a[b * bs] == b
            assert 0 in fh.resident_blocks()
    fh.unpin(0)
    for b in range(1, 8):
        a[b * bs]
    assert 0 in fh.resident_blocks()        # one pin left
    fh.unpin(0)
    for b in range(1, 8):
        a[b * bs]
    assert 0 not in fh.resident_blocks()
    assert a[0] == 0
    with pytest.raises(RuntimeError):
        fh.unpin(3)
    with pytest.raises(ValueError):
        fh.pin(-1)
    del a, vma
    fh.close()
