"""The user tutorial, step by step, each session in its own process."""

import os
import subprocess
import sys
import textwrap

import pytest

from _zodb_util import run_py

IMPORTS = '''
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
import transaction
import numpy as np
'''

MYEVEN = '''\
cimport numpy as np

def counteven(np.ndarray[np.int64_t, ndim=1] a):
    cdef int n = a.shape[0]
    cdef int i, neven=0

    i = 0
    while i < n:
        if a[i] % 2 == 0:
            neven += 1
        i += 1

    return neven
'''

SETUP = '''\
import numpy
from setuptools import setup, Extension
from Cython.Build import cythonize
setup(ext_modules=cythonize([Extension("myeven", ["myeven.pyx"],
                                       include_dirs=[numpy.get_include()])]))
'''


@pytest.fixture(scope='module')
def myeven_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('myeven')
    (d / 'myeven.pyx').write_text(MYEVEN)
    (d / 'setup.py').write_text(SETUP)
    p = subprocess.run([sys.executable, 'setup.py', 'build_ext', '-i'], cwd=d,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return str(d)


@pytest.mark.parametrize('fmt', ['ZBlk0', 'ZBlk1', 'auto'])
def test_tutorial(tmp_path, myeven_dir, fmt):
    env = dict(WENDELIN_CY_ZBLK_FMT=fmt)

    # session 1: create, commit, write through a view, commit, close
    out = run_py(IMPORTS + textwrap.dedent('''
        root = dbopen('test.fs')
        root['A'] = A = ZBigArray((10,), np.int64)
        transaction.commit()
        print(type(A).__module__, type(A).__name__)
        a = A[:]
        print(type(a) is np.ndarray, type(a).__name__, repr(a))
        a[:] = np.arange(10)
        a[7] = 22
        print(repr(a))
        transaction.commit()
        del a
        dbclose(root)
    '''), cwd=tmp_path, **env)
    lines = out.splitlines()
    assert lines[0] == 'wendelin_cy.bigarray.array_zodb ZBigArray'
    # exactly numpy.ndarray, as the tutorial shows
    assert lines[1] == 'True ndarray array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])'
    assert lines[2] == 'array([ 0,  1,  2,  3,  4,  5,  6, 22,  8,  9])'

    # session 2: reopen, the data is there; mean, Cython, appends
    out = run_py(IMPORTS + textwrap.dedent('''
        import sys
        sys.path.insert(0, %r)
        from myeven import counteven
        root = dbopen('test.fs')
        A = root['A']
        a = A[:]
        print(type(a) is np.ndarray, type(a).__name__, repr(a))
        print(np.mean(a))
        try:
            counteven([1, 2, 3])
        except TypeError as e:
            print('TypeError', e)
        try:
            counteven(np.arange(2, dtype=np.int16))
        except ValueError as e:
            print('ValueError', e)
        print(counteven(np.arange(2, dtype=np.int64)))
        print(counteven(a))
        for i in range(4):
            A.append(np.arange(4*1024*1024))
            transaction.commit()
        print(A.shape)
        print(str(A[:]))
        a = A[:]
        print(np.mean(a))
        print(counteven(a))
        del a
        dbclose(root)
    ''' % myeven_dir), cwd=tmp_path, **env)
    lines = out.splitlines()
    assert lines[0] == 'True ndarray array([ 0,  1,  2,  3,  4,  5,  6, 22,  8,  9])'
    assert lines[1] == '6.0'
    assert lines[2].startswith('TypeError') and 'expected numpy.ndarray, got list' in lines[2]
    assert lines[3].startswith('ValueError') and 'Buffer dtype mismatch' in lines[3]
    assert lines[4] == '1'
    assert lines[5] == '6'
    assert lines[6] == '(16777226,)'
    assert lines[7] == '[      0       1       2 ... 4194301 4194302 4194303]'
    n = 4 * 1024 * 1024
    total = 60 + 4 * (n * (n - 1) // 2)
    assert float(lines[8]) == pytest.approx(total / 16777226, rel=1e-12)
    # evens: 0,2,4,6,22,8 in the first 10, half of each arange
    assert lines[9] == str(6 + 4 * (n // 2))

    # session 3: a fresh process sees the appended data
    out = run_py(IMPORTS + textwrap.dedent('''
        root = dbopen('test.fs')
        A = root['A']
        a = A[:]
        want = np.concatenate([[0, 1, 2, 3, 4, 5, 6, 22, 8, 9]] +
                              [np.arange(4*1024*1024)] * 4)
        print(A.shape, bool((a == want).all()))
        del a
        dbclose(root)
    '''), cwd=tmp_path, **env)
    assert out.split() == ['(16777226,)', 'True']
