"""Reliability (issue 7, item 6): the storage fails while a block is loaded.

A corrupt ZBlk record (a state that is not bytes), a block record of the
wrong size, a storage whose load() raises (missing record, I/O error): the
array never shows wrong data.  At an entry point (prefault, advanced
indexing, assignment, tofile) the error is a Python exception; inside a page
fault (a plain view touched) the process ends with SIGBUS after a diagnostic
naming the block and the file on stderr.

Records are corrupted through a second connection, which commits a bad state
for the ZBlk object as any other writer would.
"""
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transaction
import ZODB
from ZODB.FileStorage import FileStorage
from ZODB.POSException import POSKeyError

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile.file_zodb import CHUNKSIZE
from wendelin_cy.lib.zodb import dbclose

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')
BS = 64 * 1024
N = 4 * BS // 8
BAD = 2                     # the block that goes bad


def build(path, fmt='ZBlk0'):
    """A FileStorage with A = arange(N) (4 blocks) -> db."""
    db = ZODB.DB(FileStorage(path))
    tm = transaction.TransactionManager()
    c = db.open(tm)
    c.root()['A'] = A = ZBigArray((N,), np.int64, blksize=BS, zblk_fmt=fmt)
    A[:] = np.arange(N)
    if fmt == 'ZBlk1':      # chunk 1 of block BAD a hole (not stored)
        lo = (BAD * BS + CHUNKSIZE) // 8
        A[lo:lo + CHUNKSIZE // 8] = 0
    tm.commit()
    c.close()
    return db


def corrupt(db, how):
    """Commit a bad record for block BAD from a connection of its own."""
    tm = transaction.TransactionManager()
    c = db.open(tm)
    A = c.root()['A']
    z = A.zfile.blktab[BAD]
    if how == 'not-bytes':
        z._p_activate()
        z.__dict__['_data'] = 12345
        z._p_changed = True
    elif how == 'too-big':
        z._p_activate()
        z.__dict__['_data'] = b'\x01' * (BS + 4096)
        z._p_changed = True
    elif how == 'chunk-too-big':            # ZBlk1: chunk 0 overflows into chunk 1
        zd = z.chunktab[0]
        zd._p_activate()
        zd.__dict__['_data'] = b'\x07' * (CHUNKSIZE + 4096)
        zd._p_changed = True
    else:
        raise ValueError(how)
    tm.commit()
    c.close()


def failing_load(conn, exc):
    """Make the storage fail to load the record of block BAD, on every path a
    load may take: the connection's storage instance (load, loadBefore), and
    the FileStorage under it (loadBefore, used by readahead; _lookup_pos,
    used by the direct read of ZBlk0 payloads)."""
    A = conn.root()['A']
    oid = A.zfile.blktab[BAD]._p_oid

    def patch(obj, name):
        orig = getattr(obj, name, None)
        if orig is None:
            return

        def failing(o, *a, **k):
            if o == oid:
                raise exc
            return orig(o, *a, **k)
        setattr(obj, name, failing)

    inst = conn._storage
    for name in ('load', 'loadBefore'):
        patch(inst, name)
    base = getattr(inst, '_storage', None)
    if base is not None:
        for name in ('load', 'loadBefore', '_lookup_pos'):
            patch(base, name)


@pytest.fixture
def opened(tmp_path, budget):
    budget(64 << 20)
    dbs = []

    def open_(fmt='ZBlk0', how=None):
        db = build(str(tmp_path / 'data.fs'), fmt)
        if how:
            corrupt(db, how)
        dbs.append(db)
        c = db.open()
        return c.root()['A']
    yield open_
    transaction.abort()
    for db in dbs:
        db.close()


ENTRY_POINTS = {
    'prefault': lambda A: A._fileh.prefault(BAD, BAD + 1),
    'advanced-index': lambda A: A[[0, BAD * BS // 8 + 3]],
    'setitem': lambda A: A.__setitem__(slice(0, N), 5),
    'tofile': lambda A: A.tofile(os.devnull),
}


def _sources():
    return [('not-bytes', None), ('too-big', None),
            (None, POSKeyError(b'\0' * 8)), (None, OSError(errno.EIO, 'disk error'))]


@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
@pytest.mark.parametrize('how,exc', _sources(),
                         ids=['not-bytes', 'too-big', 'POSKeyError', 'EIO'])
def test_entry_point_raises(opened, entry, how, exc):
    A = opened(how=how)
    if exc is not None:
        failing_load(A._p_jar, exc)
    with pytest.raises(Exception) as ei:
        ENTRY_POINTS[entry](A)
    assert not isinstance(ei.value, (AssertionError, SystemError, RuntimeError)), ei.value
    # nothing half-loaded stays behind: other blocks are fine, the bad one
    # fails again, and an abort leaves the array as it was
    transaction.abort()
    assert A[[0]].tolist() == [0] and A[[N - 1]].tolist() == [N - 1]
    with pytest.raises(Exception):
        A._fileh.prefault(BAD, BAD + 1)


@pytest.mark.parametrize('how,exc', _sources(),
                         ids=['not-bytes', 'too-big', 'POSKeyError', 'EIO'])
def test_entry_point_error_is_LoadError_naming_block_and_file(opened, how, exc):
    A = opened(how=how)
    if exc is not None:
        failing_load(A._p_jar, exc)
    with pytest.raises(wendelin_cy.LoadError) as ei:
        A[[0, BAD * BS // 8 + 3]]
    msg = str(ei.value)
    assert 'block %d' % BAD in msg and A.zfile._p_oid.hex() in msg, msg


def test_oversized_chunk_is_an_error_not_wrong_data(opened):
    A = opened(fmt='ZBlk1', how='chunk-too-big')
    i = (BAD * BS + CHUNKSIZE) // 8
    try:
        a = A[[i]]                  # prefaulted: an error would raise here
    except Exception:
        return
    # chunk 1 of the block is a hole: if loading succeeded it must read zeros
    assert a[0] == 0, 'silently wrong data: %#x' % a[0]


# ~~~ inside a page fault: SIGBUS and a diagnostic

_FAULT = """
import sys, numpy as np, transaction
sys.path.insert(0, %(here)r)
import test_reliability_storage_faults as t
db = t.build('data.fs')
how, exc = %(how)r, %(exc)s
if how:
    t.corrupt(db, how)
c = db.open()
A = c.root()['A']
if exc is not None:
    t.failing_load(c, exc)
a = A[:]
print('block 0:', a[5], flush=True)
print('bad block:', a[t.BAD * t.BS // 8 + 3], flush=True)
"""


@pytest.mark.parametrize('how,exc', [
    ('not-bytes', 'None'), ('too-big', 'None'),
    (None, "__import__('ZODB.POSException').POSException.POSKeyError(b'x' * 8)"),
    (None, "OSError(5, 'disk error')")],
    ids=['not-bytes', 'too-big', 'POSKeyError', 'EIO'])
def test_fault_ends_with_sigbus_and_diagnostic(tmp_path, how, exc):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    code = textwrap.dedent(_FAULT % dict(here=HERE, how=how, exc=exc))
    r = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-3000:])
    assert 'block 0: 5' in r.stdout
    assert 'bad block' not in r.stdout               # never wrong data
    assert 'loading block %d of <_ZBigFileIO of <ZBigFile oid=' % BAD in r.stderr, r.stderr
    assert 'failed inside a page fault' in r.stderr


def test_view_used_after_dbclose_never_reads_wrong_data(tmp_path):
    # dbclose() with a view still alive: either dbclose refuses, or the view
    # keeps what was resident and a non-resident block ends the process with
    # SIGBUS and a diagnostic (the connection it would load through is closed)
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    code = textwrap.dedent("""
        import numpy as np, transaction
        from wendelin_cy.bigarray.array_zodb import ZBigArray
        from wendelin_cy.lib.zodb import dbopen, dbclose
        root = dbopen('data.fs')
        root['A'] = A = ZBigArray((%d,), np.int64, blksize=%d)
        A[:] = 3
        transaction.commit()
        A._fileh.drop_clean(0, 100)
        a = A[:]
        a[:10].sum()                        # block 0 resident
        try:
            dbclose(root)
        except (RuntimeError, ValueError) as e:
            print('dbclose refused:', e, flush=True)
            raise SystemExit(0)
        print('resident', a[5], flush=True)
        print('not resident', a[-1], flush=True)
    """ % (N, BS))
    r = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    if 'dbclose refused' in r.stdout:
        assert r.returncode == 0
        return
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-3000:])
    assert 'resident 3' in r.stdout and 'not resident' not in r.stdout
    assert 'loading block %d of <_ZBigFileIO' % (N * 8 // BS - 1) in r.stderr
    assert 'connection is closed' in r.stderr
