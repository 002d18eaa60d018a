"""Sequential scans over ZEO: the blocks ahead are asked for before they are
needed (Connection.prefetch), each at most once, at the connection's own
snapshot."""

import time

import numpy as np
import pytest
import transaction
import ZODB

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
import wendelin_cy.storage.zeo as _prefetch
from wendelin_cy.bigfile.file_zodb import _close_handles_of
from wendelin_cy.lib.zodb import dbstoropen, dbopen, dbclose

from storages import zeo_server  # noqa: F401

BS = 2 * 1024 * 1024
NBLK = 24


@pytest.fixture
def sent(monkeypatch):
    """oids of the loadBefore requests a ZEO client sends (a load that joins
    one in flight, or is answered from the cache, sends nothing)."""
    import ZEO.asyncio.client as zc
    log = []
    orig = zc.Protocol.load_before

    def load_before(self, oid, tid):
        if self.futures.get((oid, tid)) is None:
            log.append(oid)
        return orig(self, oid, tid)
    monkeypatch.setattr(zc.Protocol, 'load_before', load_before)
    return log


def _fill(uri):
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.uint8)
        transaction.commit()
        A.append(np.random.default_rng(1).integers(0, 256, NBLK * BS, dtype=np.uint8))
        transaction.commit()
    finally:
        dbclose(root)


def _scan(uri, sent):
    db = ZODB.DB(dbstoropen(uri))
    try:
        c = db.open()
        A = c.root()['A']
        a = A[:]
        oids = {z._p_oid for z in A.zfile.blktab.values()}
        del sent[:]
        s = 0
        for lo in range(0, len(a), BS):
            s += int(a[lo:lo + BS].sum())
            time.sleep(0.02)        # a consumer slower than the network
        del a
        _close_handles_of(c)
        c.close()
        return s, [o for o in sent if o in oids], db.storage
    finally:
        db.close()


def test_max_ahead(zeo_server):
    st = dbstoropen(zeo_server.uri)
    try:
        assert _prefetch.storage_prefetches(st)
        # ZEO's client cache is 20 MB by default: 4 blocks of 2 MiB at once
        assert _prefetch.max_ahead(st, BS) == 4
    finally:
        st.close()
    from ZODB.MappingStorage import MappingStorage
    assert not _prefetch.storage_prefetches(MappingStorage())
    assert _prefetch.max_ahead(MappingStorage(), BS) is None


def test_scan_asks_ahead_once_per_block(zeo_server, sent, budget):
    """Small budget: the pager's readahead window (budget / 4 blocks) fits
    in ZEO's cache; every block is requested exactly once."""
    _fill(zeo_server.uri)
    want = int(np.random.default_rng(1).integers(0, 256, NBLK * BS, dtype=np.uint8).sum(dtype=np.int64))
    budget(16 * BS)                     # readahead window: 4 blocks
    s, blocks, _ = _scan(zeo_server.uri, sent)
    assert s == want
    assert len(blocks) == NBLK and len(set(blocks)) == NBLK


def test_big_budget_does_not_load_twice(zeo_server, sent, budget):
    """Big budget: the pager asks for up to 16 blocks (32 MiB) ahead, more
    than ZEO's 20 MB client cache holds."""
    _fill(zeo_server.uri)
    budget(1 << 30)
    s, blocks, _ = _scan(zeo_server.uri, sent)
    assert len(blocks) == NBLK, '%d requests for %d blocks' % (len(blocks), NBLK)


from storages import net_storage, pg_cluster  # noqa: E402,F401


def test_blocks_read_ahead_are_of_the_scanning_connection_snapshot(net_storage, budget,
                                                                   monkeypatch):
    """Blocks are read ahead of a scan (ZEO: Connection.prefetch; RelStorage:
    our reader thread, and the pager places them); another connection's
    commit in the middle of the scan must not show (RelStorage: records
    newer than the snapshot are not used), and at the next boundary it
    must."""
    from wendelin_cy.bigfile import file_zodb
    from ZEO.ClientStorage import ClientStorage
    prefetched = []
    orig = ClientStorage.prefetch

    def prefetch(self, oids, tid):
        oids = list(oids)       # (Connection.prefetch passes a generator)
        prefetched.extend(oids)
        return orig(self, oids, tid)
    monkeypatch.setattr(ClientStorage, 'prefetch', prefetch)
    _fill(net_storage.uri)
    old = np.random.default_rng(1).integers(0, 256, NBLK * BS, dtype=np.uint8)
    budget(64 * BS)
    db = ZODB.DB(dbstoropen(net_storage.uri))
    try:
        tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
        c1, c2 = db.open(transaction_manager=tm1), db.open(transaction_manager=tm2)
        A1 = c1.root()['A']
        a = A1[:]
        assert a[0] == old[0]                    # c1's snapshot is taken
        A2 = c2.root()['A']
        A2[5 * BS:10 * BS] = 7                   # blocks 5..9 change
        tm2.commit()
        s0 = wendelin_cy.pager_stats()
        h0 = file_zodb._READER.hits
        z0 = file_zodb._zeo_direct_reads
        for lo in range(0, len(a), BS):          # a slow consumer: the reader gets ahead
            assert np.array_equal(a[lo:lo + BS], old[lo:lo + BS]), 'block %d' % (lo // BS)
            time.sleep(0.02)
        s1 = wendelin_cy.pager_stats()
        if net_storage.kind == 'zeo':
            assert len(prefetched) >= NBLK // 2
            # blocks read from ZEO's cache file straight into the page (the
            # changed ones cannot be: their current record is c2's)
            assert 0 < file_zodb._zeo_direct_reads - z0 <= NBLK - 5
        else:
            assert (s1['readahead_loads'] - s0['readahead_loads']
                    + file_zodb._READER.hits - h0) > 0
        tm1.abort()                              # boundary: the commit shows now
        a = A1[:]
        new = old.copy()
        new[5 * BS:10 * BS] = 7
        for lo in range(0, len(a), BS):
            assert np.array_equal(a[lo:lo + BS], new[lo:lo + BS]), 'block %d' % (lo // BS)
        del a
        _close_handles_of(c1)
        _close_handles_of(c2)
        c1.close()
        c2.close()
    finally:
        db.close()


def test_closing_a_relstorage_while_blocks_are_read_ahead(tmp_path):
    """The reader thread loads through a RelStorage instance of its own;
    closing the database in the middle of a scan must wait for the load in
    progress (an SQLite connection closed under a running query crashes the
    process), never hang, and leave later databases working."""
    pytest.importorskip('relstorage')
    from _zodb_util import run_py
    d = tmp_path / 'sqlite'
    d.mkdir()
    uri = 'sqlite://?data_dir=%s' % d
    _fill(uri)
    out = run_py("""
        import faulthandler, numpy as np, ZODB, wendelin_cy
        from wendelin_cy.lib.zodb import dbstoropen
        from wendelin_cy.bigfile import file_zodb
        faulthandler.enable()
        wendelin_cy.set_ram_budget(64 << 20)
        BS = %d
        for i in range(80):
            db = ZODB.DB(dbstoropen(%r))
            c = db.open()
            a = c.root()['A'][:]
            k = 1 + i %% 6
            s = sum(int(a[b * BS]) for b in range(k))      # sequential: reads ahead
            del a
            file_zodb._close_handles_of(c)
            c.close()
            db.close()                  # while the reader may be loading
        db = ZODB.DB(dbstoropen(%r))
        c = db.open()
        a = c.root()['A'][:]
        print('sum', int(a.sum(dtype=np.int64)), 'hits', file_zodb._READER.hits > 0)
        del a
        file_zodb._close_handles_of(c)
        c.close()
        db.close()
    """ % (BS, uri, uri), cwd=str(tmp_path), timeout=300)
    want = int(np.random.default_rng(1).integers(0, 256, NBLK * BS, dtype=np.uint8).sum(dtype=np.int64))
    assert out.split() == ['sum', str(want), 'hits', 'True']
