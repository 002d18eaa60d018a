"""A sequential scan of blocks mapped from files (MapFile) has the pager's
readahead thread bring the next blocks' file ranges into the page cache
(prefetch() answering (blk, MapFile)); random access does not; bad answers
are advice, ignored."""
import os
import time

import numpy as np
import transaction

import wendelin_cy
from wendelin_cy.bigfile import BigFile, MapFile
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile._zblk import ZBlkSeg
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024


def _cached():
    """Blocks the readahead thread was asked to bring into the page cache
    (read, or found there already)."""
    return wendelin_cy.pager_stats()["readahead_cache_checked"]


def _settle(c0, want, timeout=10):
    """Wait until the readahead thread did `want` more blocks than c0 (or
    its queue is empty and nothing moves); the count then."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = wendelin_cy.pager_stats()
        if st["readahead_cache_checked"] - c0 >= want or (
                st["readahead_queued"] == 0 and time.time() > deadline - timeout + 0.5):
            break
        time.sleep(0.01)
    return _cached() - c0


class SegFile(BigFile):
    """Blocks [0, n) are the blocks of one file; prefetch answers where the
    blocks ahead lie, and may be given bad answers to hand out."""

    def __init__(self, path, n, bad=None, bs=BS):
        super().__init__(bs)
        self.path, self.n, self.bad, self.bs = path, n, bad or {}, bs
        self.asked = []

    def loadblk(self, blk, buf):
        return MapFile(self.path, blk * self.bs)

    def prefetch(self, blk, n):
        self.asked.append((blk, n))
        out = []
        for b in range(blk, min(blk + n, self.n)):
            out.append((b, self.bad.get(b) or MapFile(self.path, b * self.bs)))
        return out

    def storeblk(self, blk, buf):
        raise AssertionError("read only")


def _segment(tmp_path, n, name="seg", bs=BS):
    p = str(tmp_path / name)
    data = np.repeat(np.arange(1, n + 1, dtype=np.uint8), bs)
    data.tofile(p)
    return p


def _uncache(path):
    """Drop the (clean) pages of file path from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_sequential_scan_of_mapfile_blocks_brings_the_next_ones_into_the_page_cache(
        tmp_path, budget):
    budget(1 << 20)                     # 16 blocks: a window of 4 blocks
    n = 48
    f = SegFile(_segment(tmp_path, n), n)
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    c0 = _cached()
    for blk in range(n):
        assert a[blk * BS] == blk + 1 and a[(blk + 1) * BS - 1] == blk + 1
    assert f.asked, "a sequential scan asked for no readahead"
    asked = sum(max(0, min(b + k, n) - b) for b, k in f.asked)
    got = _settle(c0, asked)
    # every block asked for was brought in (none past the end of the file)
    assert got == asked, (got, asked, wendelin_cy.pager_stats())
    del a
    fh.close()


def test_blocks_ahead_not_in_the_page_cache_are_read_those_cached_are_not(
        tmp_path, budget):
    # 2 MiB blocks: the scan maps each one MADV_RANDOM (the kernel reads it
    # alone), so what is in the page cache ahead is the thread's doing
    bs = 2 << 20
    budget(16 * bs)                     # a window of 4 blocks
    n = 16
    p = _segment(tmp_path, n, bs=bs)
    for uncache in (True, False):
        f = SegFile(p, n, bs=bs)
        fh = f.fileh_open()
        if uncache:
            _uncache(p)
        read0 = wendelin_cy.pager_stats()["readahead_cached"]
        c0 = _cached()
        a = np.ndarray((n * bs,), np.uint8, buffer=fh.mmap(0, n))
        assert a[0] == 1 and a[bs] == 2         # a sequential run: blocks asked for
        assert f.asked
        _settle(c0, f.asked[0][1])              # (the thread is done with them)
        read = wendelin_cy.pager_stats()["readahead_cached"] - read0
        assert [int(a[b * bs]) for b in range(n)] == list(range(1, n + 1))
        asked = _settle(c0, sum(max(0, min(b + k, n) - b) for b, k in f.asked))
        if uncache:
            # the first block asked for was not in the cache: the thread read
            # it (the kernel's readahead for its mapping may have brought the
            # next ones, found in the cache then)
            assert 1 <= read <= asked, (read, asked)
        else:                           # all in the cache: nothing read
            assert wendelin_cy.pager_stats()["readahead_cached"] == read0 and asked > 0
        del a
        fh.close()


def test_blocks_ahead_not_in_the_page_cache_are_read_in_runs(tmp_path, budget):
    # consecutive blocks ahead that are not in the cache are read with one
    # request of several blocks, not one by one: the disk gets several 2 MiB
    # reads in flight (the speed-up of cold scans, docs/benchmarks.md)
    bs = 2 << 20
    budget(64 * bs)                     # a window of 16 blocks
    n = 32
    p = _segment(tmp_path, n, bs=bs)
    f = SegFile(p, n, bs=bs)
    fh = f.fileh_open()
    _uncache(p)
    st0 = wendelin_cy.pager_stats()
    c0 = _cached()
    a = np.ndarray((n * bs,), np.uint8, buffer=fh.mmap(0, n))
    assert a[0] == 1 and a[bs] == 2         # a sequential run: 15 blocks asked for
    _settle(c0, f.asked[0][1])              # read them before the scan goes on
    assert [int(a[b * bs]) for b in range(n)] == list(range(1, n + 1))
    _settle(c0, sum(max(0, min(b + k, n) - b) for b, k in f.asked))
    st = wendelin_cy.pager_stats()
    read = st["readahead_cached"] - st0["readahead_cached"]
    reads = st["readahead_cache_reads"] - st0["readahead_cache_reads"]
    assert read >= 8 and 1 <= reads and reads * 2 <= read, (read, reads)
    del a
    fh.close()


def test_random_access_to_mapfile_blocks_brings_nothing_ahead(tmp_path, budget):
    budget(1 << 20)
    n = 32
    f = SegFile(_segment(tmp_path, n), n)
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    _settle(_cached(), 0)
    c0 = _cached()
    order = np.random.default_rng(1).permutation(n)
    order = [b for i, b in enumerate(order) if i == 0 or b != order[i - 1] + 1]
    for blk in order:
        assert a[blk * BS] == blk + 1
    assert f.asked == [] and _settle(c0, 0) == 0
    del a
    fh.close()


def test_bad_mapfile_answers_of_prefetch_are_ignored(tmp_path, budget):
    budget(1 << 20)
    n = 24
    p = _segment(tmp_path, n)
    short = str(tmp_path / "short")
    np.ones(BS // 2, np.uint8).tofile(short)          # shorter than a block
    bad = {b: MapFile(str(tmp_path / "missing"), b * BS) for b in range(2, n, 3)}
    bad.update({b: MapFile(short, 0) for b in range(3, n, 3)})
    f = SegFile(p, n, bad)
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    c0 = _cached()
    for blk in range(n):                 # the loads themselves are all good
        assert a[blk * BS] == blk + 1
    assert f.asked
    good = sum(1 for b0, k in f.asked for b in range(b0, min(b0 + k, n)) if b not in bad)
    # only the blocks of the right file count (a short file is read up to
    # its end, less than a block; a missing one is skipped)
    assert _settle(c0, good) == good
    del a
    fh.close()

    # a block number out of range: the answer is dropped (and reported),
    # the scan goes on
    f.prefetch = lambda blk, k: [(10 ** 9, MapFile(p, 0))]
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    c0 = _cached()
    assert [int(a[b * BS]) for b in range(n)] == list(range(1, n + 1))
    assert _settle(c0, 0) == 0
    del a
    fh.close()


def _segment_db(tmp_path):
    """A database (dbopen: FileStorage with blobs) holding a ZBigArray "A" of
    40 blocks 0, 1, 2, ... appended 8 blocks per commit: 5 segments.
    (path, number of elements)."""
    path = str(tmp_path / "db.fs")
    root = dbopen(path)
    n = 40 * BS // 8
    root["A"] = A = ZBigArray((0,), np.int64, blksize=BS)
    transaction.commit()
    for lo in range(0, n, 8 * BS // 8):
        A.append(np.arange(lo, lo + 8 * BS // 8))
        transaction.commit()
    dbclose(root)
    return path, n


def test_zbigarray_scan_of_segment_blocks_reads_their_files_ahead(tmp_path, budget):
    # the embedded default: full blocks committed become ZBlkSeg, blocks of
    # blob files (segments) the pager maps; a scan has the files read ahead
    # (mapping ahead off: the files were just written, in the page cache,
    # and their blocks would be mapped ahead instead, tests/test_pager_map_ahead.py)
    from wendelin_cy._pager.virtmem import set_map_ahead
    budget(1 << 20)
    was = set_map_ahead(False)
    try:
        _scan_reads_files_ahead(tmp_path)
    finally:
        set_map_ahead(was)


def _scan_reads_files_ahead(tmp_path):
    path, n = _segment_db(tmp_path)
    root = dbopen(path)
    A = root["A"]
    assert all(type(A.zfile.blktab[b]) is ZBlkSeg for b in range(40))
    c0 = _cached()
    assert int(np.sum(A[:])) == n * (n - 1) // 2
    got = _settle(c0, 20)
    assert got >= 20, wendelin_cy.pager_stats()
    # random access afterwards: nothing more
    transaction.abort()
    _settle(_cached(), 0)
    c1 = _cached()
    a = A[:]
    for b in (30, 3, 17, 9, 25, 1):
        assert a[b * BS // 8] == b * BS // 8
    assert _settle(c1, 0) == 0
    del a
    dbclose(root)


def test_zbigarray_scan_looks_up_each_segment_file_once_per_transaction(
        tmp_path, budget, monkeypatch):
    # a segment's file used to be looked up for every block (its Blob's
    # record loaded, its file stat'ed): now once per segment per transaction
    from wendelin_cy.bigfile import _zio
    budget(1 << 20)
    path, n = _segment_db(tmp_path)
    calls = []
    real = _zio._blob_path
    monkeypatch.setattr(_zio, "_blob_path", lambda b: calls.append(b._p_oid) or real(b))
    root = dbopen(path)
    A = root["A"]
    segs = {A.zfile.blktab[b].__getstate__()["seg"]._p_oid for b in range(40)}
    assert len(segs) == 5
    assert int(np.sum(A[:])) == n * (n - 1) // 2
    assert set(calls) == segs and len(calls) == len(segs), calls
    # the next transaction: block 3 was evicted by the scan (16 blocks fit);
    # loading it again reads neither its record nor its segment's (extents
    # of ZBlkSegs are kept), but its file is stat'ed again (once per
    # transaction: a file changed under the database is seen)
    transaction.abort()
    del calls[:]
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(p) or real_stat(p, *a, **k))
    fields = []
    real_fields = _zio._seg_fields
    monkeypatch.setattr(_zio, "_seg_fields", lambda z: fields.append(z) or real_fields(z))
    a = A[:]
    assert a[3 * BS // 8] == 3 * BS // 8
    assert calls == [] and fields == []     # (no record read)
    assert len(stats) == 1 and stats[0].endswith(".blob"), stats
    assert a[3 * BS // 8 + 1] == 3 * BS // 8 + 1
    assert len(stats) == 1
    monkeypatch.undo()
    del a
    dbclose(root)
