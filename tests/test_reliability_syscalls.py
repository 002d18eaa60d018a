"""Reliability (issue 7, item 5): system calls handed mapped memory that is
not resident.

The kernel does not fault pager memory in for a syscall: it copies what is
accessible and fails with EFAULT at the first page that is not.  Whatever the
call reports must be true: an OSError, or a count of bytes that really are
the array's bytes - never garbage, never a silent short write reported as
complete.  The package's own helper (BigArray.tofile) prefaults and always
writes everything.  readinto() into mapped memory either lands in pages the
pager knows are dirty, or fails: what a commit stores is exactly what the
call reported.
"""
import errno
import io
import os
import socket

import numpy as np
import pytest
import transaction

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

BS = 64 * 1024
NBLK = 8
N = NBLK * BS // 8


def _data():
    return (np.arange(N, dtype=np.int64) * 2654435761) % (1 << 40)


@pytest.fixture
def zarr(tmp_path, budget):
    budget(1 << 20)                         # 16 blocks; the array has 8
    root = dbopen(str(tmp_path / 'data.fs'))
    root['A'] = A = ZBigArray((N,), np.int64, blksize=BS)
    A[:] = _data()
    transaction.commit()
    yield A
    transaction.abort()
    dbclose(root)


def _make_resident(A, which):
    fh = A._fileh
    fh.drop_clean(0, NBLK)
    if which == 'first':
        fh.prefault(0, 1)
    elif which == 'all':
        fh.prefault(0, NBLK)
    return memoryview(A[:]).cast('B')


RESIDENT = ['none', 'first', 'all']


def _check_reported(path, n, expect):
    got = open(path, 'rb').read()
    assert len(got) == n
    assert got == expect[:n], 'bytes reported written are not the array bytes'


@pytest.mark.parametrize('which', RESIDENT)
def test_os_write(zarr, tmp_path, which):
    m = _make_resident(zarr, which)
    expect = _data().tobytes()
    path = tmp_path / 'out'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        n = os.write(fd, m)
    except OSError as e:
        assert e.errno == errno.EFAULT
        n = 0
    finally:
        os.close(fd)
    _check_reported(path, n, expect)
    if which == 'all':
        assert n == len(expect)
    if which == 'first':
        assert n >= BS                       # short, and says so


@pytest.mark.parametrize('which', RESIDENT)
@pytest.mark.parametrize('how', ['buffered', 'raw', 'ndarray.tofile', 'socket'])
def test_file_writes_never_lie(zarr, tmp_path, which, how):
    expect = _data().tobytes()
    path = tmp_path / 'out'
    m = _make_resident(zarr, which)
    reported = None
    try:
        if how == 'buffered':
            with open(path, 'wb') as f:
                reported = f.write(m)
        elif how == 'raw':
            with open(path, 'wb', buffering=0) as f:
                reported = f.write(m)
        elif how == 'ndarray.tofile':
            with open(path, 'wb') as f:
                zarr[:].tofile(f)
            reported = len(expect)
        else:
            a, b = socket.socketpair()
            with a, b:
                a.settimeout(5)
                try:
                    reported = a.send(m[:32768])
                except OSError as e:
                    assert e.errno == errno.EFAULT
                    return
                got = b.recv(65536)
                assert len(got) == reported and got == expect[:reported]
            return
    except OSError as e:
        # EFAULT (os/io), or numpy's "N requested and M written"
        assert e.errno == errno.EFAULT or 'requested' in str(e), e
        got = open(path, 'rb').read()
        assert got == expect[:len(got)], 'garbage in the file after a failed write'
        return
    _check_reported(path, reported, expect)
    if which == 'all':
        assert reported == len(expect)


@pytest.mark.parametrize('order', ['C', 'K'])
def test_tofile_helper_writes_everything(tmp_path, budget, order):
    budget(1 << 20)                         # 16 blocks; the arrays have 48
    root = dbopen(str(tmp_path / 'data.fs'))
    try:
        root['A'] = A = ZBigArray((16, 3 * N // 16), np.int64, order='F', blksize=BS)
        ref = np.arange(A.size, dtype=np.int64).reshape(A.shape, order='F')
        A[...] = ref
        transaction.commit()
        A._fileh.drop_clean(0, 1 << 20)
        A.tofile(str(tmp_path / 'out'), order=order)
        got = np.fromfile(tmp_path / 'out', dtype=np.int64)
        if order == 'C':
            np.testing.assert_array_equal(got, ref.ravel(order='C'))
        else:
            np.testing.assert_array_equal(got, ref.ravel(order='F'))
        # into an io.BytesIO as well (no file descriptor at all)
        bio = io.BytesIO()
        A.tofile(bio)
        assert bio.getvalue() == ref.tobytes(order='C')
    finally:
        transaction.abort()
        dbclose(root)


@pytest.mark.parametrize('which', ['none', 'clean', 'dirty'])
def test_readinto_mapped_memory_stores_what_it_reported(zarr, tmp_path, which):
    A = zarr
    src = tmp_path / 'src'
    payload = np.full(2 * BS, 0x5A, np.uint8).tobytes()
    src.write_bytes(payload)
    fh = A._fileh
    fh.drop_clean(0, NBLK)
    if which == 'clean':
        fh.prefault(0, 2)                    # resident, read-only
    elif which == 'dirty':
        fh.prefault(0, 2, write=True)        # resident, writable
    m = memoryview(A[:]).cast('B')
    with open(src, 'rb', buffering=0) as f:
        try:
            n = f.readinto(m[:2 * BS])
        except OSError as e:
            assert e.errno == errno.EFAULT
            n = 0
    if which == 'dirty':
        assert n == 2 * BS
    del m
    transaction.commit()
    fh.drop_clean(0, NBLK)
    got = A[:].view(np.uint8)
    expect = _data().view(np.uint8).copy()
    expect[:n] = 0x5A
    np.testing.assert_array_equal(got, expect)
