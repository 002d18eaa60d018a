"""Full blocks stored as ZODB blobs and mapped by the pager (no copy)."""
import gc
import os

import numpy as np
import pytest
import transaction
import ZODB
from ZODB.FileStorage import FileStorage

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import _zio, file_zodb
from wendelin_cy.lib.zodb import dbopen, dbclose

from _zodb_util import Conn, file_db

BS = 64 * 1024


def _blob_files(d):
    out = []
    for dirpath, _, files in os.walk(d):
        out += [os.path.join(dirpath, f) for f in files if f.endswith('.blob')]
    return sorted(out)


def _ones(path):
    """A FileStorage with blobs at path and a connection to it holding A, 4
    blocks committed as ones -> (db, conn, A)."""
    db = file_db(path, blobs=True)
    c = Conn(db)
    c.root['A'] = A = ZBigArray((4 * BS // 8,), np.int64, blksize=BS)
    c.commit()
    A[:] = 1
    c.commit()
    return db, c, A


def test_dbopen_stores_full_blocks_as_mapped_blobs(tmp_path):
    path = str(tmp_path / 'db.fs')
    root = dbopen(path)
    assert os.path.isdir(path + '.blobs')
    n = 10 * BS // 8
    root['A'] = A = ZBigArray((n,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = np.arange(n)
    transaction.commit()
    # the 10 blocks of the commit: one segment file, a ZBlkSeg each
    assert {type(z) for z in A.zfile.blktab.values()} == {file_zodb.ZBlkSeg}
    assert len(_blob_files(path + '.blobs')) == 1
    assert os.path.getsize(_blob_files(path + '.blobs')[0]) == 10 * BS
    dbclose(root)

    root = dbopen(path)
    A = root['A']
    z0 = wendelin_cy.pager_stats()['zerocopy_loads']
    assert (A[:] == np.arange(n)).all()
    assert wendelin_cy.pager_stats()['zerocopy_loads'] - z0 == 10
    dbclose(root)


def test_plain_filestorage_reads_blob_blocks_beside_it(tmp_path):
    path = str(tmp_path / 'db.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((4 * BS // 8,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = 7
    transaction.commit()
    dbclose(root)
    # FileStorage(path), as a user who does not know about the blob
    # directory would open it: the blocks are still found, in path.blobs
    db = ZODB.DB(FileStorage(path, read_only=True))
    c = Conn(db)
    assert (c.root['A'][:] == 7).all()
    c.close()
    db.close()
    # without that directory: a clear error at the entry point
    os.rename(path + '.blobs', path + '.elsewhere')
    db = ZODB.DB(FileStorage(path, read_only=True))
    c = Conn(db)
    A = c.root['A']
    with pytest.raises(wendelin_cy.LoadError, match='blob directory'):
        A._fileh.prefault(0, 1)
    c.close()
    db.close()


def test_readonly_dbopen_does_not_create_a_blob_directory(tmp_path):
    path = str(tmp_path / 'old.fs')
    db = ZODB.DB(FileStorage(path))         # a database made without blobs
    db.close()
    root = dbopen('file://%s?read_only=1' % path)
    dbclose(root)
    assert not os.path.exists(path + '.blobs')
    other = str(tmp_path / 'here')
    root = dbopen('file://%s?blobstorage_dir=%s' % (path, other))
    root['A'] = A = ZBigArray((BS // 8,), np.int64, blksize=BS)
    transaction.commit()
    A[:] = 1
    transaction.commit()
    dbclose(root)
    assert len(_blob_files(other)) == 1


def test_commit_makes_blob_files_durable_before_the_storage_finishes(tmp_path, monkeypatch):
    from wendelin_cy._pager import virtmem
    events = []
    real_sync = virtmem.sync_filesystem
    monkeypatch.setattr(virtmem, 'sync_filesystem',
                        lambda fd: (events.append('sync'), real_sync(fd)))
    real_finish = FileStorage.tpc_finish

    def tpc_finish(self, *a, **kw):
        events.append('finish')
        return real_finish(self, *a, **kw)
    monkeypatch.setattr(FileStorage, 'tpc_finish', tpc_finish)
    db = file_db(str(tmp_path / 'd.fs'), blobs=True)
    c = Conn(db)
    c.root['A'] = A = ZBigArray((3 * BS // 8,), np.int64, blksize=BS)
    c.commit()
    events.clear()
    A[:] = 5
    c.commit()
    assert events == ['sync', 'finish']
    events.clear()
    A[0] = 6                                # a small change: a ZBlk1 overlay, no blob
    c.commit()
    assert events == ['finish']
    c.close()
    db.close()


class _FailVote:
    """A data manager whose vote fails: the whole commit must be undone."""

    def __init__(self, tm):
        self.transaction_manager = tm

    def sortKey(self):
        return '~zzz'

    def abort(self, txn):
        pass

    tpc_begin = commit = tpc_finish = tpc_abort = abort

    def tpc_vote(self, txn):
        raise RuntimeError('vote refused')


def _nothing_left_behind(db, path, before):
    """After a failed commit: the blob files are those of before, no
    uncommitted file is left in the blob directory's tmp, and a new
    connection sees the committed ones.  -> that connection."""
    gc.collect()
    assert _blob_files(path + '.blobs') == before
    assert os.listdir(os.path.join(path + '.blobs', 'tmp')) == []
    c2 = Conn(db)
    assert (c2.root['A'][:] == 1).all()
    return c2


def test_failed_commit_leaves_database_and_blob_directory_unchanged(tmp_path):
    path = str(tmp_path / 'f.fs')
    db, c, A = _ones(path)
    before = _blob_files(path + '.blobs')
    a = A[:]
    a[:] = 2
    c.tm.get().join(_FailVote(c.tm))
    with pytest.raises(RuntimeError, match='vote refused'):
        c.commit()
    c.abort()
    assert (a == 1).all()                  # memory back to the database's state
    del a
    c2 = _nothing_left_behind(db, path, before)
    c.close()
    c2.close()
    db.close()


def test_other_connection_sees_rewritten_blob_block_at_its_boundary(tmp_path):
    db, c1, A = _ones(str(tmp_path / 'i.fs'))
    c2 = Conn(db)
    b = c2.root['A'][:]
    assert (b == 1).all()                  # blocks mapped from the blob files
    A[BS // 8:] = 3                        # blocks 1..3 rewritten: new blobs
    c1.commit()
    assert (b == 1).all()                  # c2's snapshot holds until its boundary
    c2.abort()
    assert (b[:BS // 8] == 1).all() and (b[BS // 8:] == 3).all()
    del b
    c1.close()
    c2.close()
    db.close()


def test_pack_keeps_current_blocks_readable(tmp_path):
    path = str(tmp_path / 'p.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((4 * BS // 8,), np.int64, blksize=BS)
    transaction.commit()
    for v in (1, 2, 3):
        A[:] = v
        transaction.commit()
    a = A[:]
    assert (a == 3).all()
    nfiles = len(_blob_files(path + '.blobs'))
    import time
    root._p_jar.db().pack(time.time() + 1)
    assert len(_blob_files(path + '.blobs')) < nfiles      # old revisions gone
    assert (a == 3).all()
    del a
    dbclose(root)
    root = dbopen(path)
    assert (root['A'][:] == 3).all()
    dbclose(root)


def test_blob_format_needs_a_storage_with_blobs(monkeypatch):
    from _zodb_util import mapping_db
    monkeypatch.setenv(file_zodb.ZBLK_FMT_ENV, 'blob')
    db = mapping_db()
    c = Conn(db)
    c.root['A'] = A = ZBigArray((BS // 8,), np.int64, blksize=BS)
    c.commit()
    A[:] = 1
    with pytest.raises(ValueError, match="needs a storage with blobs"):
        c.commit()
    c.abort()
    assert not A[:].any()
    c.close()
    db.close()


def test_failed_blob_write_fails_the_commit_cleanly(tmp_path, monkeypatch):
    # a blob file that cannot be written (disk full, say): the commit raises,
    # the database and the blob directory are as before, abort restores the
    # views, and the next commit works
    path = str(tmp_path / 'w.fs')
    db, c, A = _ones(path)
    before = _blob_files(path + '.blobs')
    real = file_zodb._write_blob_file
    calls = []

    def failing(fd, vma, off=0):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device')
        return real(fd, vma, off)
    monkeypatch.setattr(_zio, '_write_blob_file', failing)
    a = A[:]
    a[:] = 2
    with pytest.raises(OSError, match='No space left'):
        c.commit()
    c.abort()
    assert (a == 1).all()
    monkeypatch.setattr(_zio, '_write_blob_file', real)
    del a
    c2 = _nothing_left_behind(db, path, before)
    A[:] = 3
    c.commit()
    c2.abort()
    assert (c2.root['A'][:] == 3).all()
    c.close()
    c2.close()
    db.close()


def test_savepoint_rollback_with_blob_blocks(tmp_path):
    db, c, A = _ones(str(tmp_path / 's.fs'))
    a = A[:]
    a[:BS // 8] = 2
    sp = c.tm.savepoint()
    a[:] = 3
    sp.rollback()
    assert (a[:BS // 8] == 2).all() and (a[BS // 8:] == 1).all()
    c.commit()
    c2 = Conn(db)
    b = c2.root['A'][:]
    assert (b[:BS // 8] == 2).all() and (b[BS // 8:] == 1).all()
    del a, b
    c.close()
    c2.close()
    db.close()


def test_commit_of_twice_the_budget_writes_every_block_right(tmp_path, budget):
    """Blob blocks are written by two threads with O_DIRECT after the pager's
    writeout, while the pager reclaims (8 dirty blocks, a budget of 4): each
    block is pinned for its write, so the device never reads pages the pager
    has meanwhile moved and refilled with another block.  (Unpinned, about a
    third of these commits stored some block with another one's bytes.)"""
    budget(8 << 20)
    rows = (2 << 20) // 128
    n = 8 * rows
    ref = np.arange(n, dtype=np.float64)[:, None] * 16 + np.arange(16)
    for i in range(12):
        path = str(tmp_path / ('data%d.fs' % i))
        root = dbopen(path)
        root['X'] = A = ZBigArray((n, 16), np.float64)
        transaction.commit()
        v = A[:]
        for b in range(8):
            v[b * rows:(b + 1) * rows] = ref[b * rows:(b + 1) * rows]
        del v
        transaction.commit()
        dbclose(root)
        root = dbopen(path)
        try:
            x = root['X'][:]
            bad = [b for b in range(8)
                   if not np.array_equal(x[b * rows:(b + 1) * rows], ref[b * rows:(b + 1) * rows])]
            assert not bad, 'commit %d: blocks %s stored wrong' % (i, bad)
            del x
        finally:
            dbclose(root)
