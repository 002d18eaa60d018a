"""Sequential scans of a ZBigArray read records ahead, at the right snapshot."""
import time

import numpy as np
import transaction

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import file_zodb
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024


import pytest


def _ahead():
    """Blocks read ahead so far, by either mechanism."""
    return wendelin_cy.pager_stats()["readahead_hits"] + file_zodb._READER.hits


@pytest.mark.parametrize("kind", ["filestorage", "mapping"])
def test_sequential_scan_reads_ahead_at_the_connection_snapshot(tmp_path, budget, kind,
                                                                 monkeypatch):
    # FileStorage: the pager's thread reads the record payloads into RAM;
    # MappingStorage: our reader thread loads the records.  (Blocks stored as
    # records: with the default format, a FileStorage keeps full blocks as
    # blobs, which are mapped, and read ahead by the kernel.)
    monkeypatch.setenv(file_zodb.ZBLK_FMT_ENV, "ZBlk0")
    budget(1 << 20)                                  # 16 blocks
    path = str(tmp_path / "db.fs") if kind == "filestorage" else "memory://ra"
    root = dbopen(path)
    n = 64 * BS // 8
    root["A"] = A = ZBigArray((n,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = np.arange(n)
    transaction.commit()
    if kind == "filestorage":
        dbclose(root)
        root = dbopen(path)
    else:                           # a new connection: nothing in RAM
        db = root._p_jar.db()
        root._p_jar.close()
        root = db.open().root()
    A = root["A"]
    a = A[:]
    hits0 = _ahead()
    loads0 = wendelin_cy.pager_stats()["readahead_loads"]
    vma = a.base
    while not hasattr(vma, "madvise"):
        vma = vma.base
    vma.madvise("sequential", 0, 4 * BS)         # say it (faults would find out too)
    if kind == "filestorage":                    # give the pager's thread a moment
        deadline = time.time() + 10
        while wendelin_cy.pager_stats()["readahead_loads"] == loads0 and time.time() < deadline:
            time.sleep(0.01)
    assert np.array_equal(a[: n // 2], np.arange(n // 2))   # a sequential scan
    assert _ahead() > hits0, ("no block was read ahead", wendelin_cy.pager_stats())

    # another connection commits; at our next boundary a scan must see its
    # data, never a record read ahead for the old snapshot
    db = root._p_jar.db()
    tm2 = transaction.TransactionManager()
    c2 = db.open(transaction_manager=tm2)
    c2.root()["A"][:] = -1
    tm2.commit()
    c2.close()
    assert a[n // 2 + 5] == n // 2 + 5           # still our snapshot: old data
    transaction.abort()                           # boundary
    a = A[:]
    assert (a == -1).all()
    dbclose(root)


def test_blocks_read_ahead_are_invalidated_like_loaded_ones(tmp_path, budget, monkeypatch):
    # blocks the pager's thread read ahead (never touched, never loadblk'ed)
    # must still be dropped when another connection changes them
    monkeypatch.setenv(file_zodb.ZBLK_FMT_ENV, "ZBlk0")     # (records, not blobs)
    budget(4 << 20)
    path = str(tmp_path / "db.fs")
    root = dbopen(path)
    n = 32 * BS // 8
    root["A"] = A = ZBigArray((n,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = 1
    transaction.commit()
    dbclose(root)

    root = dbopen(path)
    A = root["A"]
    a = A[:]
    vma = a.base
    while not hasattr(vma, "madvise"):
        vma = vma.base
    loads0 = wendelin_cy.pager_stats()["readahead_loads"]
    vma.madvise("sequential", 0, 16 * BS)
    deadline = time.time() + 10
    while wendelin_cy.pager_stats()["readahead_loads"] - loads0 < 4 and time.time() < deadline:
        time.sleep(0.01)
    assert wendelin_cy.pager_stats()["readahead_loads"] - loads0 >= 4
    db = root._p_jar.db()
    tm2 = transaction.TransactionManager()
    c2 = db.open(transaction_manager=tm2)
    c2.root()["A"][:] = 2
    tm2.commit()
    c2.close()
    assert (a == 1).all()                   # our snapshot, read ahead or not
    transaction.abort()
    assert (A[:] == 2).all()                # the new one: nothing stale survives
    dbclose(root)
