"""Pickling a stored ZBigArray by reference; commits do not pile up garbage."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import transaction

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def test_pickling_a_stored_zbigarray_is_a_small_reference(tmp_path):
    path = str(tmp_path / "db.fs")
    root = dbopen(path)
    assert root._p_jar.db().wendelin_cy_uri == os.path.abspath(path)
    root["A"] = A = ZBigArray((1 << 20,), np.float64)      # 8 MiB
    A[:] = np.arange(1 << 20)
    transaction.commit()
    data = pickle.dumps(A)
    assert len(data) < 2048
    # another process reopens the same snapshot lazily
    code = textwrap.dedent("""
        import pickle, sys, numpy as np
        ref = pickle.loads(sys.stdin.buffer.read())
        a = np.asarray(ref)
        print(a.shape, float(a.sum()), a.flags.writeable)
    """)
    r = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=SRC), timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    n = 1 << 20
    assert r.stdout.decode().split() == ["(%d,)" % n, repr(float(n * (n - 1) // 2)),
                                         "False"]
    # ZODB itself still stores the array by state (reopen, data there)
    dbclose(root)
    root = dbopen(path)
    assert root["A"][12345] == 12345
    dbclose(root)


def test_unsaved_zbigarray_pickles_whole():
    from wendelin_cy.bigfile.file_zodb import ZBigFile  # noqa: F401  (import works)
    A = ZBigArray((10,), np.int64)
    B = pickle.loads(pickle.dumps(A))
    assert isinstance(B, ZBigArray) and B.shape == (10,)


def test_commits_do_not_accumulate_pickle_garbage(tmp_path):
    # ZODB's ObjectWriter/Pickler/BytesIO cycle holds each commit's pickles
    # until a gc run; a big-data loop makes too few objects to trigger one
    code = textwrap.dedent("""
        import numpy as np, transaction, wendelin_cy
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        from wendelin_cy.lib.zodb import dbopen
        wendelin_cy.set_ram_budget(16 << 20)
        root = dbopen(%r)
        root['A'] = A = ZBigArray((0,), np.float64); transaction.commit()
        x = np.ones(256 * 1024)
        for i in range(48):                 # 96 MiB in 2 MiB commits
            A.append(x); transaction.commit()
        hwm = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
        print(hwm // 1024)
    """ % str(tmp_path / "db.fs"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=SRC), timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 16 + 90, r.stdout         # was ~170 MiB
