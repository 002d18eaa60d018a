"""Mapping ahead: in a sequential scan, blocks coming next that prefetch()
says loadblk would map (a `placed` callable with the MapFile) and whose bytes
are in the page cache are mapped at once, without a fault each; what they
read, what a write to them stores and what another transaction changes are
as if each had been loaded by its own fault."""
import os

import numpy as np
import pytest
import transaction

import wendelin_cy
from wendelin_cy.bigfile import BigFile, MapFile
from wendelin_cy._pager.virtmem import set_map_ahead
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile._zblk import ZBlkSeg
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024


def _stat(k):
    return wendelin_cy.pager_stats()[k]


class SegFile(BigFile):
    """Blocks [0, n) are the blocks of one file; prefetch answers with
    `placed` (recording the blocks mapped ahead) unless told not to."""

    def __init__(self, path, n, with_placed=True):
        super().__init__(BS)
        self.path, self.n, self.with_placed = path, n, with_placed
        self.loaded, self.placed = [], []

    def loadblk(self, blk, buf):
        self.loaded.append(blk)
        return MapFile(self.path, blk * BS)

    def prefetch(self, blk, n):
        out = []
        for b in range(blk, min(blk + n, self.n)):
            m = MapFile(self.path, b * BS)
            out.append((b, m, self.placed.append) if self.with_placed else (b, m))
        return out

    def storeblk(self, blk, buf):
        raise AssertionError("read only")


def _segment(tmp_path, n):
    p = str(tmp_path / "seg")
    np.repeat(np.arange(1, n + 1, dtype=np.uint8), BS).tofile(p)
    with open(p, "rb") as f:            # (in the page cache)
        while f.read(1 << 20):
            pass
    return p


@pytest.fixture
def map_ahead():
    old = set_map_ahead(True)
    yield
    set_map_ahead(old)


def test_a_scan_maps_the_blocks_ahead_that_are_in_the_page_cache(tmp_path, budget, map_ahead):
    budget(4 << 20)                     # 64 blocks: a window of 16
    n = 48
    f = SegFile(_segment(tmp_path, n), n)
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    m0, f0 = _stat("mapped_ahead"), _stat("faults")
    assert [int(a[b * BS]) for b in range(n)] == list(range(1, n + 1))
    assert [int(a[(b + 1) * BS - 1]) for b in range(n)] == list(range(1, n + 1))
    mapped = _stat("mapped_ahead") - m0
    # every block was either loaded by its fault or mapped ahead, once
    assert sorted(f.loaded + f.placed) == list(range(n)), (f.loaded, f.placed)
    assert mapped == len(f.placed) >= n // 2
    assert _stat("faults") - f0 <= n - mapped
    # blocks mapped ahead are loaded blocks: evicted, they load again
    fh.drop_clean()
    assert int(a[5 * BS]) == 6
    del a
    fh.close()


def test_no_mapping_ahead_without_placed_or_when_turned_off(tmp_path, budget, map_ahead):
    budget(4 << 20)
    n = 32
    p = _segment(tmp_path, n)
    for with_placed, on in ((False, True), (True, False)):
        set_map_ahead(on)
        f = SegFile(p, n, with_placed)
        fh = f.fileh_open()
        a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
        m0 = _stat("mapped_ahead")
        assert [int(a[b * BS]) for b in range(n)] == list(range(1, n + 1))
        assert _stat("mapped_ahead") == m0 and f.placed == []
        assert f.loaded == list(range(n))
        del a
        fh.close()


def test_blocks_loaded_already_are_not_mapped_again(tmp_path, budget, map_ahead):
    budget(4 << 20)
    n = 32
    f = SegFile(_segment(tmp_path, n), n)
    fh = f.fileh_open()
    a = np.ndarray((n * BS,), np.uint8, buffer=fh.mmap(0, n))
    a[10 * BS] = 99                     # block 10: dirty, an anonymous copy
    del f.loaded[:]
    assert [int(a[b * BS]) for b in range(n)] == [99 if b == 10 else b + 1 for b in range(n)]
    assert 10 not in f.placed and 10 not in f.loaded
    del a
    fh.close()


def _segment_db(tmp_path, nblk=40):
    path = str(tmp_path / "db.fs")
    root = dbopen(path)
    n = nblk * BS // 8
    root["A"] = A = ZBigArray((0,), np.int64, blksize=BS)
    transaction.commit()
    for lo in range(0, n, 8 * BS // 8):
        A.append(np.arange(lo, lo + 8 * BS // 8))
        transaction.commit()
    dbclose(root)
    for dirpath, _, files in os.walk(path + ".blobs"):       # warm cache
        for fn in files:
            with open(os.path.join(dirpath, fn), "rb") as fp:
                fp.read()
    return path, n


def test_zbigarray_blocks_mapped_ahead_are_written_and_invalidated_as_loaded_ones(
        tmp_path, budget, map_ahead):
    budget(4 << 20)
    path, n = _segment_db(tmp_path)
    per = BS // 8
    root = dbopen(path)
    A = root["A"]
    assert all(type(A.zfile.blktab[b]) is ZBlkSeg for b in range(40))
    m0 = _stat("mapped_ahead")
    a = A[:]
    assert int(np.sum(a)) == n * (n - 1) // 2
    assert _stat("mapped_ahead") - m0 >= 20
    # a write into blocks mapped ahead (still loaded: 64 blocks fit) is stored
    a[20 * per + 3] = -1
    a[33 * per] = -2
    transaction.commit()
    # another connection changes block 25; our next transaction sees it
    db2 = root._p_jar.db()
    conn2 = db2.open(transaction.TransactionManager())
    B = conn2.root()["A"]
    B[25 * per + 1] = -3
    conn2.transaction_manager.commit()
    conn2.close()
    transaction.abort()
    a = A[:]
    assert a[25 * per + 1] == -3 and a[25 * per] == 25 * per
    assert a[20 * per + 3] == -1 and a[33 * per] == -2
    del a
    dbclose(root)
    root = dbopen(path)
    A = root["A"]
    want = np.arange(n)
    want[20 * per + 3], want[33 * per], want[25 * per + 1] = -1, -2, -3
    assert np.array_equal(A[:], want)
    dbclose(root)


def test_zbigarray_with_content_checks_maps_nothing_ahead(tmp_path, budget, map_ahead):
    budget(4 << 20)
    path, n = _segment_db(tmp_path)
    root = dbopen(path, verify=True)
    A = root["A"]
    m0 = _stat("mapped_ahead")
    assert int(np.sum(A[:])) == n * (n - 1) // 2
    assert _stat("mapped_ahead") == m0      # (each block checked by its own load)
    dbclose(root)
