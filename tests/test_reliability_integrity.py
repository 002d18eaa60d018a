"""Reliability 2 (issue 19): a block whose stored bytes are not those
committed is never read as data.

An 8 MiB array (2 MiB blocks) is committed to the embedded default
(FileStorage with blobs) in each block format, then the files are damaged
on disk the way a bad disk or a careless copy would: 8 bytes flipped in the
middle of a block (in the blob file, or in data.fs for records), the blob
file truncated to half or extended.  Reading must raise
wendelin_cy.errors.CorruptBlockError (a LoadError) naming the array, the
block, the record and the file; inside a page fault the process ends with
SIGBUS and that diagnostic.  ``python -m wendelin_cy verify`` reports the
block and exits 1.  Records written before checksums still read.
"""
import glob
import os
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transaction

import wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.bigfile import _zblk
from wendelin_cy.errors import CorruptBlockError, LoadError
from wendelin_cy.lib.zodb import dbclose, dbopen

from _zodb_util import env_with_src

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20
N = 8 * MiB // 8            # int64: 4 blocks of 2 MiB
BS = 2 * MiB
MID = N // 2 + N // 8 + 3   # an element in the middle of block 2


def _build(tmp_path, fmt):
    path = str(tmp_path / 'data.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((N,), np.int64, zblk_fmt=fmt)
    A[:] = np.arange(N)
    transaction.commit()
    oid = A.zfile._p_oid.hex()
    dbclose(root)
    return path, oid


def _blobs(path):
    return sorted(glob.glob(path + '.blobs/**/*.blob', recursive=True))


def _flip(f, off):
    with open(f, 'r+b') as fp:
        fp.seek(off)
        x = fp.read(8)
        fp.seek(off)
        fp.write(bytes(255 - c for c in x))


def _flip_value(path, fmt, i=MID):
    """Flip the 8 bytes holding element i of A where they are stored."""
    if fmt == 'blob':
        (f,) = [b for b in _blobs(path) if os.path.getsize(b) >= 4 * BS]
        _flip(f, i * 8)
        return f
    data = open(path, 'rb').read()
    pat = struct.pack('<q', i)
    assert data.count(pat) == 1
    _flip(path, data.index(pat))
    return path


FORMATS = ['ZBlk0', 'ZBlk1', 'blob']


@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('verify', [True, 'env'])
def test_flipped_bytes_are_an_error_naming_array_block_oid_file(tmp_path, fmt, verify,
                                                                 monkeypatch):
    path, zoid = _build(tmp_path, fmt)
    damaged = _flip_value(path, fmt)
    if verify == 'env':
        monkeypatch.setenv('WENDELIN_CY_VERIFY', '1')
    root = dbopen(path, verify=None if verify == 'env' else verify)
    try:
        A = root['A']
        assert A[[0]][0] == 0 and A[[N - 1]][0] == N - 1      # other blocks: fine
        with pytest.raises(CorruptBlockError) as ei:
            A[[MID]]
        e = ei.value
        assert isinstance(e, LoadError) and isinstance(e, OSError)
        assert e.blk == MID * 8 // BS == 2
        msg = str(e)
        assert 'block 2' in msg and zoid in msg and 'ZBigArray oid=' in msg, msg
        assert e.oid and e.oid in msg and damaged in msg, msg
        assert 'checksum mismatch' in msg
        with pytest.raises(LoadError):                      # again: no half-loaded page
            A._fileh.prefault(2, 3)
        transaction.abort()
    finally:
        dbclose(root)


@pytest.mark.parametrize('how', ['truncate', 'extend'])
def test_blob_file_of_wrong_size_is_an_error_even_without_content_checks(tmp_path, how):
    path, _ = _build(tmp_path, 'blob')
    (f,) = [b for b in _blobs(path) if os.path.getsize(b) >= 4 * BS]
    size = os.path.getsize(f)
    with open(f, 'r+b') as fp:
        fp.truncate(size // 2 if how == 'truncate' else size + 4096)
    root = dbopen(path, verify=False)
    try:
        A = root['A']
        blk = 3 if how == 'truncate' else 0
        with pytest.raises(CorruptBlockError) as ei:
            A[[blk * BS // 8 + 5]]
        assert ('truncated' if how == 'truncate' else 'wrong blob file size') in str(ei.value)
        assert f in str(ei.value)
        transaction.abort()
    finally:
        dbclose(root)


def test_without_content_checks_flipped_bytes_are_read_as_stored(tmp_path):
    """The switch does what it says (a control for the tests above: the
    damage is real, and only the checksum finds it)."""
    path, _ = _build(tmp_path, 'ZBlk0')
    _flip_value(path, 'ZBlk0')
    root = dbopen(path, verify=False)
    try:
        assert root['A'][[MID]][0] != MID
    finally:
        transaction.abort()
        dbclose(root)


def test_env_switch(tmp_path, monkeypatch):
    path, _ = _build(tmp_path, 'ZBlk0')
    _flip_value(path, 'ZBlk0')
    for env, raises in [('0', False), ('1', True)]:
        monkeypatch.setenv('WENDELIN_CY_VERIFY', env)
        root = dbopen(path)
        try:
            if raises:
                with pytest.raises(CorruptBlockError):
                    root['A'][[MID]]
            else:
                assert root['A'][[MID]][0] != MID
        finally:
            transaction.abort()
            dbclose(root)


_FAULT = """
import numpy as np
from wendelin_cy.lib.zodb import dbopen
root = dbopen('data.fs')
a = root['A'][:]
print('first:', a[5], flush=True)
print('sum:', int(a.sum()), flush=True)      # a sequential scan: readahead too
"""


@pytest.mark.parametrize('fmt', FORMATS)
def test_in_a_page_fault_the_process_ends_with_the_diagnostic(tmp_path, fmt):
    path, zoid = _build(tmp_path, fmt)
    _flip_value(path, fmt)
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(_FAULT)], cwd=str(tmp_path),
                       env=env_with_src(WENDELIN_CY_VERIFY='1'), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGBUS, (r.returncode, r.stdout, r.stderr[-3000:])
    assert 'first: 5' in r.stdout
    assert 'sum:' not in r.stdout                   # never a sum of wrong data
    assert 'failed inside a page fault' in r.stderr
    assert 'CorruptBlockError' in r.stderr and 'block 2' in r.stderr and zoid in r.stderr


def test_zeo_client_reads_no_corrupt_block(tmp_path):
    from wendelin_cy.testing.servers import ZEOServer
    fs = str(tmp_path / 'zeo.fs')
    srv = ZEOServer(fs).start()
    try:
        root = dbopen(srv.uri)
        root['A'] = A = ZBigArray((N,), np.int64, zblk_fmt='ZBlk0')
        A[:] = np.arange(N)
        transaction.commit()
        dbclose(root)
        srv.stop()
        _flip_value(fs, 'ZBlk0')
        srv.start()
        root = dbopen(srv.uri, verify=True)
        try:
            with pytest.raises(CorruptBlockError):
                root['A'][[MID]]
            transaction.abort()
        finally:
            dbclose(root)
    finally:
        srv.stop()


# ~~~ verify

def _cli(*args, cwd):
    return subprocess.run([sys.executable, '-m', 'wendelin_cy'] + list(args), cwd=cwd,
                          env=env_with_src(), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('fmt', FORMATS)
def test_verify_finds_flipped_bytes(tmp_path, fmt):
    path, _ = _build(tmp_path, fmt)
    good = _cli('verify', 'data.fs', cwd=str(tmp_path))
    assert good.returncode == 0, (good.stdout, good.stderr)
    assert 'without checksums' not in good.stdout
    _flip_value(path, fmt)
    bad = _cli('verify', 'data.fs', cwd=str(tmp_path))
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    lines = bad.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('A: block 2'), bad.stdout
    assert 'checksum mismatch' in lines[0]


def test_verify_with_content_checks_off_still_checks(tmp_path):
    path, _ = _build(tmp_path, 'ZBlk1')
    _flip_value(path, 'ZBlk1')
    from wendelin_cy import verify
    root = dbopen(path, verify=False)
    try:
        r = verify.verify_database(root)
    finally:
        dbclose(root)
    assert [p.blk for p in r.problems] == [2]
    assert 'checksum mismatch' in r.problems[0].message


def test_records_without_checksum_still_read_and_verify_says_so(tmp_path, monkeypatch):
    """What older versions wrote: a ZBlk0 / ZData state of bytes alone, a
    ZBlkSeg without digest and file size."""
    old_get = _zblk._BytesRecord.__getstate__
    monkeypatch.setattr(_zblk._BytesRecord, '__getstate__', lambda self: self._payload())
    monkeypatch.setattr(_zblk.ZBlkSeg, '__getstate__',
                        lambda self: {'seg': self.seg, 'index': self.index})
    path = str(tmp_path / 'data.fs')
    root = dbopen(path)
    ref = {}
    for fmt in FORMATS:
        root[fmt] = A = ZBigArray((N,), np.int64, zblk_fmt=fmt)
        A[:] = ref[fmt] = np.arange(N) * (FORMATS.index(fmt) + 1)
    transaction.commit()
    dbclose(root)
    monkeypatch.setattr(_zblk._BytesRecord, '__getstate__', old_get)
    monkeypatch.undo()
    root = dbopen(path)
    try:
        for fmt in FORMATS:
            assert (root[fmt][:] == ref[fmt]).all()
    finally:
        dbclose(root)
    r = _cli('verify', 'data.fs', cwd=str(tmp_path))
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert '12 blocks without checksums' in r.stdout, r.stdout


def test_new_records_carry_size_and_digest(tmp_path):
    path, _ = _build(tmp_path, 'ZBlk0')
    root = dbopen(path)
    try:
        z = root['A'].zfile.blktab[1]
        state = z._p_jar._storage.load(z._p_oid)[0]
        from ZODB.serialize import ObjectReader
        st = ObjectReader(z._p_jar, z._p_jar._cache, z._p_jar.db().classFactory).getState(state)
        data, n, h = st
        assert n == len(data) > BS - 64 and h == wendelin_cy.storage.checksum.digest(data)
    finally:
        dbclose(root)
