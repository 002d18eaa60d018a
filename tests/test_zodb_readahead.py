"""Sequential scans of a ZBigArray read records ahead, at the right snapshot."""
import numpy as np
import transaction

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import file_zodb
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024


def test_sequential_scan_reads_ahead_at_the_connection_snapshot(tmp_path, budget):
    budget(1 << 20)                                  # 16 blocks
    path = str(tmp_path / "db.fs")
    root = dbopen(path)
    n = 64 * BS // 8
    root["A"] = A = ZBigArray((n,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = np.arange(n)
    transaction.commit()
    dbclose(root)

    root = dbopen(path)
    A = root["A"]
    a = A[:]
    hits0 = file_zodb._READER.hits
    assert np.array_equal(a[: n // 2], np.arange(n // 2))   # a sequential scan
    assert file_zodb._READER.hits > hits0, "no record was read ahead"

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
