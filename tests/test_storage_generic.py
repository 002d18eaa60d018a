"""The storage backends' fallback: with every fast path off, or with the
internals of a storage not of the shape a fast path expects, blocks load
through ZODB's public API, with the same data (wendelin_cy.storage)."""

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import transaction
from ZODB.FileStorage import FileStorage

from wendelin_cy import storage
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.storage import blobs, switch, StorageFastPathWarning

from _zodb_util import Conn, file_db, mapping_db

BS = 64 * 1024
NBLK = 6
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture
def fresh_checks(monkeypatch):
    """Forget which backends were checked and which fell back (restored after
    the test, so that no fallback leaks into other tests)."""
    monkeypatch.setattr(storage, '_by_type', {})
    monkeypatch.setattr(switch, '_fallen', {})
    monkeypatch.setattr(blobs, '_shape', [])


def _write(db, fmt='auto'):
    c = Conn(db)
    c.root['A'] = A = ZBigArray((NBLK * BS // 8,), np.int64, blksize=BS, zblk_fmt=fmt)
    c.commit()
    want = np.arange(A.shape[0], dtype=np.int64) * 3
    want[2 * BS // 8:3 * BS // 8] = 0           # a hole
    A[:] = want
    c.commit()
    c.close()
    return want


def _read(db):
    """-> (array read by a fresh connection, records it loaded, its backend)."""
    c = Conn(db)
    try:
        A = c.root['A']
        A.shape
        n0 = c.conn._load_count
        a = np.array(A[:])
        return a, c.conn._load_count - n0, storage.backend_of(c.conn)
    finally:
        c.abort()
        c.close()


@pytest.mark.parametrize('kind', ['file', 'mapping'])
def test_fast_paths_off_loads_through_the_objects(tmp_path, monkeypatch, kind):
    db = (file_db(str(tmp_path / 'g.fs')) if kind == 'file' else mapping_db())
    try:
        want = _write(db, 'ZBlk0')
        a, loads, be = _read(db)
        assert (a == want).all() and be is not storage.GENERIC
        if kind == 'file':
            assert loads <= 3, loads            # the blktab bucket(s), no ZBlk0
        monkeypatch.setattr(switch, '_on', False)
        assert not storage.fast_paths()
        a, loads, be = _read(db)
        assert (a == want).all()
        assert be is storage.GENERIC
        assert loads >= NBLK - 1                # every ZBlk0 activated (one is a hole)
    finally:
        db.close()


def test_fast_paths_off_reads_blob_blocks_and_writes_zblk0(tmp_path, monkeypatch):
    db = file_db(str(tmp_path / 'b.fs'), blobs=True)
    try:
        want = _write(db, 'blob')               # written by the fast path: ZBlkSeg
        monkeypatch.setattr(switch, '_on', False)
        a, _, _ = _read(db)
        assert (a == want).all()
        # no new blob from our files on the generic path: whole blocks as ZBlk0
        c = Conn(db)
        A = c.root['A']
        A[:] = want + 1
        c.commit()
        kinds = {type(z).__name__ for z in A.zfile.blktab.values()}
        c.close()
        assert kinds == {'ZBlk0'}
        a, _, _ = _read(db)
        assert (a == want + 1).all()
    finally:
        db.close()


def test_environment_turns_the_fast_paths_off():
    env = dict(os.environ, WENDELIN_CY_STORAGE_FAST_PATHS='0',
               PYTHONPATH=os.path.join(ROOT, 'src'))
    out = subprocess.run([sys.executable, '-c', 'import wendelin_cy.storage as s; '
                          'print(s.fast_paths())'], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == 'False'


def test_filestorage_of_another_shape_warns_once_and_loads_generically(
        tmp_path, monkeypatch, fresh_checks, caplog):
    db = file_db(str(tmp_path / 's.fs'))
    try:
        # A FileStorage class without _lookup_pos, as a new release might have
        # it.  The instance keeps a working one of its own, so that the
        # storage itself still loads: the fast path checks the class, once,
        # at its first use.
        fs = db.storage
        real = FileStorage._lookup_pos
        monkeypatch.setattr(fs, '_lookup_pos', real.__get__(fs), raising=False)
        monkeypatch.delattr(FileStorage, '_lookup_pos')
        caplog.set_level(logging.WARNING, logger='wendelin_cy')
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter('always')
            want = _write(db, 'ZBlk0')
            for _ in range(2):
                a, loads, be = _read(db)
                assert (a == want).all()
                assert be is storage.GENERIC
                assert loads >= NBLK - 1        # through the objects
        # a fallback is an event on the wendelin_cy.storage logger, not a
        # warning to the user's code
        assert not [w for w in got if issubclass(w.category, StorageFastPathWarning)]
        ours = _fallback_records(caplog)
        assert len(ours) == 1, [r.getMessage() for r in caplog.records]
        assert '_lookup_pos' in ours[0].getMessage() and ours[0].levelno == logging.WARNING
    finally:
        db.close()


def _fallback_records(caplog):
    return [r for r in caplog.records if r.name == 'wendelin_cy.storage'
            and 'fast path is off' in r.getMessage()]


def test_blob_of_another_shape_writes_zblk0(tmp_path, monkeypatch, fresh_checks, caplog):
    from ZODB.blob import Blob
    db = file_db(str(tmp_path / 'bb.fs'), blobs=True)
    try:
        monkeypatch.delattr(Blob, '_uncommitted')       # the Connection's side, gone
        caplog.set_level(logging.WARNING, logger='wendelin_cy')
        want = _write(db, 'blob')
        c = Conn(db)
        kinds = {type(z).__name__ for z in c.root['A'].zfile.blktab.values()}
        c.close()
        ours = _fallback_records(caplog)
        assert len(ours) == 1 and 'Blob' in ours[0].getMessage()
        assert kinds == {'ZBlk0'}
        a, _, _ = _read(db)
        assert (a == want).all()
    finally:
        transaction.abort()
        db.close()


def test_storage_suite_passes_with_every_fast_path_off():
    """The storage-parametrized suite, generic backend only: a fast path
    that falls back there fails the run (tests/_fail_on_fallback.py)."""
    env = dict(os.environ, WENDELIN_CY_STORAGE_FAST_PATHS='0',
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, 'src'), HERE]))
    r = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-x',
         '-p', '_fail_on_fallback', os.path.join(HERE, 'test_net_storages.py')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert ' passed' in r.stdout


def test_record_size_from_the_header_equals_the_loaded_record(tmp_path):
    """FileStorage's backend reads a record's size and tid from its header
    (wendelin_cy info uses it for sizes on disk): they are the loaded
    record's; the generic backend does not know them."""
    db = file_db(str(tmp_path / 'rs.fs'))
    try:
        _write(db, 'ZBlk0')
        st = db.storage
        be = storage.backend_for(st)
        assert be is not storage.GENERIC
        c = Conn(db)
        oids = [z._p_oid for z in c.root['A'].zfile.blktab.values() if z is not None]
        c.close()
        assert oids
        for oid in oids:
            data, tid = st.load(oid)
            assert be.record_size(st, oid) == (len(data), tid)
            assert storage.GENERIC.record_size(st, oid) is None
    finally:
        db.close()
