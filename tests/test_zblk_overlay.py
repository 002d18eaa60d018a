"""Small writes stay small (issue 18): a few changed elements of a block
written whole are stored as a ZBlk1 overlay of 4 KiB chunks over it; dense
changes rewrite the block; the store grows with what changed."""
import os

import numpy as np
import pytest
import transaction
from hypothesis import HealthCheck, given, settings, strategies as st

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import _zblk_io, _zio
from wendelin_cy.bigfile.file_zodb import ZBlk0, ZBlk1, ZBlkSeg, ZData

from _zodb_util import Conn, file_db

BS = 256 * 1024             # 64 pages of 4 KiB
NBLK = 8
PAGE = 4096


def _size(path):
    n = os.path.getsize(path)
    for d, _, files in os.walk(path + '.blobs'):
        n += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return n


def _filled(path, blobs=True, nblk=NBLK, bs=BS):
    """A FileStorage (with blobs: as dbopen opens it) holding A, float64,
    every block written whole -> (db, conn, A, numpy copy)."""
    db = file_db(path, blobs=blobs)
    c = Conn(db)
    n = nblk * bs // 8
    c.root['A'] = A = ZBigArray((n,), np.float64, blksize=bs)
    c.commit()
    model = np.random.default_rng(0).random(n)
    A[:] = model
    c.commit()
    whole = ZBlkSeg if blobs else ZBlk0
    assert {type(z) for z in A.zfile.blktab.values()} == {whole}
    return db, c, A, model


def _close(db, c):
    c.close()
    db.close()


def _overlaid(path, ks):
    """_filled, then the elements per + k (k in ks) of block 1 set to -1 - k
    (an overlay over it), committed, and the database opened again ->
    (db, conn, A, model)."""
    db, c, A, model = _filled(path, blobs=True)
    a = A[:]
    per = BS // 8
    for k in ks:
        a[per + k] = model[per + k] = -1.0 - k
    c.commit()
    del a
    _close(db, c)
    db = file_db(path, blobs=True)
    c = Conn(db)
    return db, c, c.root['A'], model


def _reads_back(path, model, blobs=True):
    """The database at path, opened afresh, holds model in A."""
    db = file_db(path, blobs)
    c = Conn(db)
    np.testing.assert_array_equal(c.root['A'][:], model)
    _close(db, c)


@pytest.mark.parametrize('blobs', [True, False], ids=['segments', 'ZBlk0'])
def test_sparse_writes_grow_the_store_by_about_the_pages_changed(tmp_path, blobs):
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs)
    a = A[:]
    rng = np.random.default_rng(1)
    # 4 elements in each block: overlays (within 1/OVERLAY_MAX of the block)
    per = BS // 8
    idx = np.concatenate([b * per + rng.choice(per, 4, replace=False) for b in range(NBLK)])
    s0 = _size(path)
    a[idx] = model[idx] = rng.random(len(idx))
    c.commit()
    grow = _size(path) - s0
    pages = {int(i) * 8 // PAGE for i in idx}
    # one 4 KiB record per page changed, plus per block a ZBlk1 and its
    # chunk table, plus blktab and the ZBigFile: far below one 32 KiB chunk
    # per write (k * 32 KiB), let alone a block per write
    assert grow <= len(pages) * (PAGE + 512) + NBLK * 1024 + 16 * 1024, grow
    blocks = {int(i) * 8 // BS for i in idx}
    base_type = ZBlkSeg if blobs else ZBlk0
    nrec = 0
    for b in blocks:
        z = A.zfile.blktab[b]
        assert type(z) is ZBlk1 and type(z.base) is base_type
        assert z.chunksize == _zblk_io.OVERLAY_CHUNKSIZE
        assert {o // PAGE + b * (BS // PAGE) for o in z.chunktab.keys()} == \
            {p for p in pages if p * PAGE // BS == b}
        nrec += len(z.chunktab)
    assert nrec == len(pages)
    del a
    _close(db, c)
    _reads_back(path, model, blobs)


def test_dense_change_rewrites_the_block_whole(tmp_path):
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs=False)
    a = A[:]
    per = BS // 8
    # block 1: more than 1/OVERLAY_MAX of its pages changed -> one ZBlk0
    n = (BS // _zblk_io.OVERLAY_MAX) // 8 + per // 64 * 2
    a[per:per + n] = model[per:per + n] = -1.0
    # block 2: within the limit -> an overlay
    m = (BS // _zblk_io.OVERLAY_MAX) // 8 // 2
    a[2 * per:2 * per + m] = model[2 * per:2 * per + m] = -2.0
    c.commit()
    tab = A.zfile.blktab
    assert type(tab[1]) is ZBlk0
    assert type(tab[2]) is ZBlk1 and type(tab[2].base) is ZBlk0
    assert len(tab[2].chunktab) == m * 8 // PAGE
    np.testing.assert_array_equal(a, model)
    del a
    _close(db, c)


def test_an_overlay_growing_past_its_limit_is_compacted(tmp_path):
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs=True)
    a = A[:]
    per_page = PAGE // 8
    limit = BS // _zblk_io.OVERLAY_MAX // PAGE      # pages an overlay may hold
    seen = []
    for p in range(limit + 1):                      # one more page per commit
        i = BS // 8 * 3 + p * per_page
        a[i] = model[i] = -p
        c.commit()
        seen.append(type(A.zfile.blktab[3]))
    assert seen[:limit] == [ZBlk1] * limit
    assert seen[limit] is ZBlkSeg                   # written whole again
    assert type(A.zfile.blktab[2]) is ZBlkSeg
    np.testing.assert_array_equal(a, model)
    del a
    _close(db, c)


def test_rewriting_the_same_values_stores_nothing(tmp_path):
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs=True)
    a = A[:]
    before = dict(A.zfile.blktab.items())
    a[::1000] = model[::1000]       # the pages are written, their bytes are the same
    s0 = _size(path)
    c.commit()
    assert dict(A.zfile.blktab.items()) == before
    assert _size(path) - s0 < 4096, 'an empty transaction at most'
    np.testing.assert_array_equal(a, model)
    del a
    _close(db, c)


def test_overlay_of_an_older_version_keeps_its_chunk_size(tmp_path):
    """ZBlk1 records keep their chunk size: an overlay with 32 KiB chunks,
    as earlier versions wrote them, reads and is updated in 32 KiB chunks."""
    path = str(tmp_path / 'db.fs')
    bs = 2 * 1024 * 1024
    db, c, A, model = _filled(path, blobs=False, nblk=1, bs=bs)
    tab = A.zfile.blktab
    old = tab[0]
    z1 = ZBlk1(32 * 1024, base=old)
    zd = ZData(b'\x01' * 100)
    z1.chunktab[32 * 1024] = zd
    tab[0] = z1
    A.zfile.rev += 1
    c.commit()
    b = bytearray(model.tobytes())
    b[32 * 1024:32 * 1024 + 100] = b'\x01' * 100
    b[32 * 1024 + 100:64 * 1024] = bytes(32 * 1024 - 100)
    model[:] = np.frombuffer(bytes(b), np.float64)
    _close(db, c)

    db = file_db(path)
    c = Conn(db)
    A = c.root['A']
    a = A[:]
    np.testing.assert_array_equal(a, model)
    a[5] = model[5] = 7.0
    c.commit()
    z = A.zfile.blktab[0]
    assert type(z) is ZBlk1 and z.chunksize == 32 * 1024
    assert sorted(z.chunktab.keys()) == [0, 32 * 1024]
    del a
    _close(db, c)
    db = file_db(path)
    c = Conn(db)
    np.testing.assert_array_equal(c.root['A'][:], model)
    _close(db, c)


def _pagemap_works():
    import mmap
    m = mmap.mmap(-1, 2 * PAGE)
    try:
        m[PAGE] = 1
        w = _zblk_io._written_pages(memoryview(m))
        return w is not None
    finally:
        m.close()


def test_written_pages_are_the_ones_copied_from_a_private_file_mapping(tmp_path):
    import mmap
    if not _pagemap_works():
        pytest.skip('the kernel does not show which pages are anonymous '
                    '(/proc/self/pagemap); the commit compares whole blocks then')
    f = tmp_path / 'f'
    f.write_bytes(os.urandom(16 * PAGE))
    with open(f, 'rb') as fp:
        m = mmap.mmap(fp.fileno(), 16 * PAGE, flags=mmap.MAP_PRIVATE,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        mv = memoryview(m)
        sum(mv[::PAGE])                     # every page read: the file's
        mv[3 * PAGE + 5] = mv[3 * PAGE + 5]     # written, same byte: a copy
        mv[9 * PAGE] = 0
        w = _zblk_io._written_pages(mv)
        assert np.flatnonzero(w).tolist() == [3, 9]
        mv.release()
    finally:
        m.close()


def test_commit_compares_only_the_written_pages_of_a_mapped_block(tmp_path, monkeypatch):
    """The pager maps segment blocks privately: at commit only the pages the
    kernel copied (written) are compared, not the whole block."""
    if not _pagemap_works():
        pytest.skip('no /proc/self/pagemap flags here')
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs=True)
    _close(db, c)
    db = file_db(path, blobs=True)          # (the blocks are loaded: mapped)
    c = Conn(db)
    A = c.root['A']
    calls = []
    real = _zio._ne_chunks
    monkeypatch.setattr(_zio, '_ne_chunks', lambda *a: calls.append(1) or real(*a))
    a = A[:]
    for r in range(3):                      # (again over the overlay, still mapped)
        a[100 + r * 1000] = model[100 + r * 1000] = -1.0 - r
        c.commit()
    assert calls == []
    np.testing.assert_array_equal(a, model)
    z = A.zfile.blktab[0]
    assert type(z) is ZBlk1 and len(z.chunktab) == 3
    del a
    _close(db, c)


def test_an_overlaid_segment_block_loads_as_a_patched_mapping(tmp_path):
    """A ZBlk1 over a segment block is loaded by mapping the segment (no
    copy of the block) with its chunks written over the mapping; writes and
    commits after that see the right bytes, and other blocks are untouched."""
    import wendelin_cy
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _filled(path, blobs=True)
    a = A[:]
    per = BS // 8
    a[per + 3] = model[per + 3] = -1.0
    a[per + 3000] = model[per + 3000] = 0.0         # (a chunk stored shorter: zeros after)
    c.commit()
    del a
    _close(db, c)

    db = file_db(path, blobs=True)
    c = Conn(db)
    A = c.root['A']
    assert type(A.zfile.blktab[1]) is ZBlk1
    z0 = wendelin_cy.pager_stats()['zerocopy_loads']
    a = A[:]
    np.testing.assert_array_equal(a[per:2 * per], model[per:2 * per])
    assert wendelin_cy.pager_stats()['zerocopy_loads'] == z0 + 1
    # a write into the mapped overlay block, committed, read back afresh
    a[per + 5000] = model[per + 5000] = -3.0
    a[per + 3] = model[per + 3] = model[per + 2]    # back to... another value
    c.commit()
    assert type(A.zfile.blktab[1]) is ZBlk1
    np.testing.assert_array_equal(a, model)
    del a
    _close(db, c)
    _reads_back(path, model)


def test_mapfile_rejects_bad_patches():
    from wendelin_cy.bigfile import MapFile
    with pytest.raises(ValueError):
        MapFile('/nonexistent', 0, patches=[(-1, b'x', 1)])
    with pytest.raises(ValueError):
        MapFile('/nonexistent', 0, patches=[(0, b'xy', 1)])
    assert MapFile('/nonexistent', 0, patches=[]).patches is None


# ~~~ property: sparse and dense writes, commits, reopen == numpy

_op = st.one_of(
    st.tuples(st.just('sparse'), st.lists(st.integers(0, NBLK * BS // 8 - 1),
                                          min_size=1, max_size=12)),
    st.tuples(st.just('dense'), st.integers(0, NBLK * BS // 8 - 1),
              st.integers(1, 2 * BS // 8)),
    st.tuples(st.just('zero'), st.integers(0, NBLK * BS // 8 - 1),
              st.integers(1, BS // 8)),
    st.tuples(st.just('same'), st.integers(0, NBLK * BS // 8 - 1)),
    st.tuples(st.just('reopen'), st.booleans()),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(ops=st.lists(st.lists(_op, min_size=1, max_size=4), min_size=1, max_size=5),
       blobs=st.booleans())
def test_random_writes_commits_and_reopens_read_back_as_numpy(tmp_path_factory, ops, blobs):
    d = tmp_path_factory.mktemp('ovl')
    path = str(d / 'db.fs')
    db, c, A, model = _filled(path, blobs, nblk=NBLK, bs=BS)
    rng = np.random.default_rng(len(ops))
    a = A[:]
    try:
        for txn in ops:
            for op in txn:
                kind = op[0]
                if kind == 'sparse':
                    idx = np.array(op[1])
                    a[idx] = model[idx] = rng.random(len(idx))
                elif kind in ('dense', 'zero'):
                    lo, n = op[1], op[2]
                    v = 0.0 if kind == 'zero' else rng.random(len(model[lo:lo + n]))
                    a[lo:lo + n] = model[lo:lo + n] = v
                elif kind == 'same':
                    a[op[1]] = model[op[1]]
                elif op[1]:             # reopen (after a commit)
                    del a
                    c.commit()
                    _close(db, c)
                    db = file_db(path, blobs)
                    c = Conn(db)
                    A = c.root['A']
                    a = A[:]
            c.commit()
            np.testing.assert_array_equal(a, model)
            for z in A.zfile.blktab.values():
                if type(z) is ZBlk1 and z.base is not None:
                    assert len(z.chunktab) * z.chunksize <= BS // _zblk_io.OVERLAY_MAX
    finally:
        del a
        transaction.abort()
        _close(db, c)
    _reads_back(path, model, blobs)


def test_a_commit_tells_overlay_chunks_unchanged_without_reading_them(tmp_path, monkeypatch):
    """The chunks a load patched into a mapped segment block are known by
    digest: the commit after a write elsewhere in the block reads none of
    their records again, and a chunk written with other bytes (or the same
    ones) is still told apart."""
    path = str(tmp_path / 'db.fs')
    db, c, A, model = _overlaid(path, (3, 1000, 2000, 4000))   # 4 chunks of block 1
    per = BS // 8
    a = A[:]
    np.testing.assert_array_equal(a[per:2 * per], model[per:2 * per])   # (loaded, patched)
    read = []
    real = _zio._loaddata
    monkeypatch.setattr(_zio, '_loaddata', lambda o: read.append(type(o)) or real(o))
    a[per + 5000] = model[per + 5000] = -7.0    # a chunk not overlaid yet
    a[per + 3] = model[per + 3]                 # the same value again
    a[per + 1000] = model[per + 1000] = 5.0     # an overlaid chunk, changed
    c.commit()
    assert ZData not in read, read
    z = A.zfile.blktab[1]
    assert type(z) is ZBlk1 and sorted(z.chunktab.keys()) == [0, 4096, 12288, 28672, 36864]
    np.testing.assert_array_equal(a, model)
    del a
    _close(db, c)
    _reads_back(path, model)
