"""A dirty block mapped privately from a file (MapFile) holds RAM of its own
only for the pages written (the kernel's copies).  When the budget is short,
reclaim compacts such blocks (unmaps the pages that are still the file's,
counts the block as what is left) before it spills any dirty block to the
scratch file; a compacted block touched again is counted whole again.
Nothing written is lost on the way: checked against a numpy model."""
import os
import subprocess
import sys
import textwrap

import numpy as np
from hypothesis import given, settings, strategies as st, HealthCheck

import wendelin_cy
from wendelin_cy.bigfile import BigFile, MapFile

BS = 2 << 20
PAGE = 4096


class SegFile(BigFile):
    """Blocks mapped from one file; storeblk writes them back there (and
    keeps what it was given)."""

    def __init__(self, path, bs=BS):
        super().__init__(bs)
        self.path, self.bs = path, bs
        self.stored = {}

    def loadblk(self, blk, buf):
        return MapFile(self.path, blk * self.bs)

    def storeblk(self, blk, buf):
        data = self.stored[blk] = bytes(buf)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            assert os.pwrite(fd, data, blk * self.bs) == len(data)
        finally:
            os.close(fd)


def _segment(tmp_path, n, bs=BS, sync=True):
    p = str(tmp_path / "seg")
    data = np.arange(n * bs // 8, dtype=np.int64)
    with open(p, "wb") as f:
        f.write(data.tobytes())
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return p, data


def _mapped(tmp_path, n, bs=BS, sync=True):
    """A SegFile over a new segment of n blocks, its handle, the int64 view
    of all of it, and the segment's values (the model)."""
    path, model = _segment(tmp_path, n, bs=bs, sync=sync)
    f = SegFile(path, bs=bs)
    fh = f.fileh_open()
    a = np.ndarray((n * bs // 8,), np.int64, buffer=fh.mmap(0, n))
    return f, fh, a, model


def _stats():
    return wendelin_cy.pager_stats()


def _d(s0, k):
    return _stats()[k] - s0[k]


def test_sparse_writes_beyond_the_budget_compact_instead_of_spilling(tmp_path, budget):
    n = 48
    budget(8 * BS)                      # 16 MiB; 48 blocks get written: 96 MiB
    for sync in (True, False):          # (dirty page cache under the file: the same)
        f, fh, a, model = _mapped(tmp_path, n, sync=sync)
        s0 = _stats()
        rng = np.random.default_rng(sync)
        idx = np.unique(rng.integers(0, len(model), 3 * n))
        for i in idx:
            a[i] = -i - 1
            model[i] = -i - 1
        assert _d(s0, "compactions") > 0
        assert _d(s0, "spills") == 0, _stats()
        st = _stats()
        assert st["resident"] <= st["budget"], st
        assert st["dirty"] <= st["resident"]
        assert sorted(fh.dirty_blocks()) == sorted({int(i) * 8 // BS for i in idx})
        # reading everything back (compacted blocks are counted whole again
        # when touched) gives the model
        assert np.array_equal(a, model)
        assert _stats()["resident"] <= _stats()["budget"] + BS
        fh.dirty_writeout()
        for b in f.stored:
            assert f.stored[b] == model[b * BS // 8:(b + 1) * BS // 8].tobytes(), b
        assert set(f.stored) == {int(i) * 8 // BS for i in idx}
        assert not fh.isdirty()
        assert np.array_equal(a, model)
        del a
        fh.close()
        st = _stats()
        assert st["dirty"] == 0 and st["resident"] == 0, st


def test_dense_writes_are_spilled_not_compacted(tmp_path, budget):
    # a block written all over has no file pages left to unmap: reclaim
    # spills it (as it did before compaction), and data stays right
    n = 16
    budget(4 * BS)
    f, fh, a, model = _mapped(tmp_path, n)
    s0 = _stats()
    a[:] += 1
    model += 1
    assert _d(s0, "spills") > 0
    assert _stats()["resident"] <= _stats()["budget"]
    fh.dirty_writeout()
    assert b"".join(f.stored[b] for b in range(n)) == model.tobytes()
    del a
    fh.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["w", "r", "commit", "discard"]),
                              st.integers(0, 24 * 256 * 1024 // 8 - 1)), min_size=1, max_size=60))
def test_compacted_blocks_against_a_numpy_model(tmp_path_factory, ops):
    n = 24
    bs = 256 * 1024
    old = wendelin_cy.get_ram_budget()
    wendelin_cy.set_ram_budget(4 * bs)          # the fixture is function-scoped
    try:
        tmp = tmp_path_factory.mktemp("c")
        f, fh, a, base = _mapped(tmp, n, bs=bs)
        model = base.copy()
        nel = n * bs // 8
        stored = base.copy()            # what storage holds
        for op, i in ops:
            i %= nel
            if op == "w":
                a[i] = model[i] = -i
            elif op == "r":
                assert a[i] == model[i]
            elif op == "commit":
                f.stored.clear()
                fh.dirty_writeout()
                for b, data in f.stored.items():
                    stored[b * bs // 8:(b + 1) * bs // 8] = np.frombuffer(data, np.int64)
                assert np.array_equal(stored, model)
            else:
                fh.dirty_discard()
                model[:] = stored
            st_ = _stats()
            assert st_["resident"] <= st_["budget"] + bs, st_
        assert np.array_equal(a, model)
        del a
        fh.close()
    finally:
        wendelin_cy.set_ram_budget(old)


def test_peak_rss_of_sparse_writes_stays_within_the_budget(tmp_path):
    # 256 blocks (512 MiB) each written at one element, budget 32 MiB: the
    # process's peak RSS (VmHWM) stays near the budget, nothing is spilled
    path, _ = _segment(tmp_path, 256)
    code = textwrap.dedent("""
        import sys, numpy as np, wendelin_cy
        from wendelin_cy.bigfile import BigFile, MapFile
        BS = 2 << 20
        class F(BigFile):
            def loadblk(self, blk, buf):
                return MapFile(sys.argv[1], blk * BS)
            def storeblk(self, blk, buf):
                pass
        def hwm():
            for l in open('/proc/self/status'):
                if l.startswith('VmHWM'):
                    return int(l.split()[1]) * 1024
        wendelin_cy.set_ram_budget(32 << 20)
        base = hwm()
        fh = F(BS).fileh_open()
        a = np.ndarray((256 * BS // 8,), np.int64, buffer=fh.mmap(0, 256))
        for b in range(256):
            a[b * BS // 8 + 1000] = -1
        s = wendelin_cy.pager_stats()
        assert s['spills'] == 0, s
        print(hwm() - base, s['compactions'])
    """)
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grow, ncompact = map(int, out.stdout.split())
    assert ncompact >= 256 - 16
    # the budget, plus the kernel's copies of 256 pages, plus slack for Python
    assert grow <= (32 << 20) + 256 * PAGE + (16 << 20), grow / 2**20


def _present(addr, size):
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        e = np.frombuffer(os.pread(fd, size // PAGE * 8, addr // PAGE * 8), np.uint64)
    finally:
        os.close(fd)
    return int(((e >> np.uint64(63)) & np.uint64(1)).sum())


def test_a_block_first_touched_by_a_random_write_is_not_populated(tmp_path, budget):
    # populating it would map the whole block only for the kernel to copy the
    # one page written; a block first read is populated (a read of the rest
    # of it then costs no more faults)
    budget(64 * BS)
    n = 8
    f, fh, a, model = _mapped(tmp_path, n)
    base = a.ctypes.data
    for b in (5, 2, 7):                         # (not a sequential run)
        a[b * BS // 8 + 7] = -1
        assert _present(base + b * BS, BS) <= 16, b
    for b in (3, 0):
        assert a[b * BS // 8 + 7] == model[b * BS // 8 + 7]
        assert _present(base + b * BS, BS) == BS // PAGE, b
    model[[5 * BS // 8 + 7, 2 * BS // 8 + 7, 7 * BS // 8 + 7]] = -1
    assert np.array_equal(a, model)
    del a
    fh.close()


def test_loads_of_blocks_mapped_from_a_file_reuse_one_staging_slot(tmp_path, budget):
    # the slot a load does not need (it maps the file) is kept, emptied, for
    # the next: no fresh aligned mapping per block; its data is never seen
    budget(4 * BS)
    # a file of another block size loaded first leaves a spare of its size
    # (in a full run some earlier test does): it must not block the reuse
    small = tmp_path / "small"
    small.mkdir()
    f0, fh0, a0, model0 = _mapped(small, 2, bs=64 << 10)
    assert a0[5] == model0[5]
    n = 16
    f, fh, a, model = _mapped(tmp_path, n)
    assert a[7] == model[7]         # (first load: the slot may be fresh)
    s0 = _stats()
    for b in (9, 3, 14, 1, 11, 6, 12, 0, 5, 15):    # evictions and reloads
        i = b * BS // 8 + 3
        assert a[i] == model[i]
    assert _d(s0, "loads") == 10 and _d(s0, "fresh_slots") == 0, _stats()
    assert np.array_equal(a, model)
    del a, a0
    fh.close()
    fh0.close()
