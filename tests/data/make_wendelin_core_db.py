"""A small database written by wendelin.core itself, for
tests/test_wendelin_core_db.py (databases written by wendelin.core open in
wendelin_cy and stay readable by wendelin.core after wendelin_cy wrote to them).

Made with wendelin.core commit ca119d6eb97385fd1887bfd3e3daed7487eb18b4
(2.0.alpha4, its C extensions built in a venv of its own, not WCFS; numpy
1.26.4, ZODB 6.4, Python 3.11), non-WCFS mode:

    /work/wc-venv/bin/python tests/data/make_wendelin_core_db.py \
        --write tests/data/wendelin-core-ca119d6/data.fs

The functions below that only use numpy (``expected``, ``MODS``,
``apply_mods``, ``expected_after``) are what the test imports; the others
import wendelin.core (or wendelin_cy) and run by hand:

    # check a database with wendelin.core (the values as written, or after MODS)
    /work/wc-venv/bin/python tests/data/make_wendelin_core_db.py --check DB [--modified]
    # apply MODS to a copy through wendelin_cy (this project's python), and
    # add an array made by wendelin_cy in wendelin.core's format
    PYTHONPATH=src python tests/data/make_wendelin_core_db.py --modify-with-wendelin-cy SRC DST

What is in it (wendelin.core picks the block format of every block it
writes from ``file_zodb.ZBlk_fmt_write``, set here per commit):

Blocks are 2 MiB (the only size wendelin.core handles without WCFS):

* ``i64_1d``: int64, 1-d, ZBlk0;
* ``f64_C``: float64 (40, 30), C order, ZBlk0;
* ``c128_F``: complex128 (16, 12, 10), F order, ZBlk1 (4 KiB chunks; one
  of them all zeros, so absent);
* ``struct``: a structured dtype (int32, float64, bytes), 1-d, ZBlk1;
* ``i32_appended``: int32, made with 100 items (ZBlk0), then appended to
  twice (ZBlk1), the second time into block 1;
* ``i16_mixed``: int16, 6 blocks, mostly zeros: blocks 0, 2 and 5 ZBlk0,
  blocks 1 and 3 ZBlk1, block 4 a hole;
* ``f32_F_rewritten``: float32 (64, 20), F order, ZBlk1, changed in place
  in a second commit.
"""

import os
import shutil
import sys

import numpy as np

WENDELIN_CORE_COMMIT = 'ca119d6eb97385fd1887bfd3e3daed7487eb18b4'

STRUCT = np.dtype([('n', '<i4'), ('x', '<f8'), ('tag', 'S3')])

# wendelin.core without WCFS handles only blocks of its RAM page size (2 MiB):
# arrays of several blocks are mostly zeros, which neither format stores
# (ZBlk0 cuts trailing zeros, ZBlk1 stores no all-zero chunk)
BS = 2 * 1024 * 1024
N16 = BS // 2           # int16 items per block
N32 = BS // 4

# name -> (shape, dtype, order)
ARRAYS = {
    'i64_1d': ((3000,), np.int64, 'C'),
    'f64_C': ((40, 30), np.float64, 'C'),
    'c128_F': ((16, 12, 10), np.complex128, 'F'),
    'struct': ((700,), STRUCT, 'C'),
    'i32_appended': ((100,), np.int32, 'C'),
    'i16_mixed': ((6 * N16,), np.int16, 'C'),
    'f32_F_rewritten': ((64, 20), np.float32, 'F'),
}


def expected():
    """name -> the content each array has as wendelin.core wrote it."""
    e = {}
    e['i64_1d'] = np.arange(3000, dtype=np.int64) * 7 - 1000
    e['f64_C'] = (np.arange(1200, dtype=np.float64) / 8).reshape(40, 30)
    c = np.arange(16 * 12 * 10, dtype=np.float64).reshape((16, 12, 10), order='F')
    c = c + 1j * (c % 13)
    c.reshape(-1, order='F')[256:512] = 0      # a whole 4 KiB chunk of zeros
    e['c128_F'] = c
    s = np.zeros(700, dtype=STRUCT)
    s['n'] = np.arange(700) - 350
    s['x'] = np.arange(700) * 0.25
    s['tag'] = [b'a%02d' % (i % 100) for i in range(700)]
    e['struct'] = s
    a = np.arange(100, dtype=np.int32)
    a = np.concatenate([a, np.arange(1000, 2500, dtype=np.int32)])
    tail = np.zeros(N32, dtype=np.int32)        # ... into block 1
    tail[-300:] = -5
    a = np.concatenate([a, tail])
    e['i32_appended'] = a
    m = np.zeros(6 * N16, dtype=np.int16)
    m[0:2048] = np.arange(2048)                 # block 0 (ZBlk0)
    m[N16:N16 + 4096] = -np.arange(4096)        # block 1 (ZBlk1: 2 chunks)
    m[N16 + 100000] = 5                         # ... and a third one
    m[2 * N16:2 * N16 + 1000] = 3               # block 2 (ZBlk0)
    m[3 * N16 + 10:3 * N16 + 20] = 77           # block 3 (ZBlk1, sparse)
    m[5 * N16:5 * N16 + 300] = np.arange(300) % 251     # block 5 (ZBlk0); block 4: a hole
    e['i16_mixed'] = m
    f = (np.arange(64 * 20, dtype=np.float32).reshape((64, 20), order='F') + 0.5)
    f[5, 3] = -1.0
    f[60, 19] = 1e6
    e['f32_F_rewritten'] = f
    return e


# the blocks of i16_mixed and their format (as wendelin.core wrote them)
I16_FORMATS = {0: 'ZBlk0', 1: 'ZBlk1', 2: 'ZBlk0', 3: 'ZBlk1', 5: 'ZBlk0'}

# what the test writes through wendelin_cy: (name, index, value) or
# (name, 'append', values)
MODS = [
    ('i16_mixed', slice(100, 103), np.array([-7, -8, -9], np.int16)),     # ZBlk0 block 0
    ('i16_mixed', N16 + 5, np.int16(1234)),                              # ZBlk1 block 1
    ('i16_mixed', 3 * N16 + 300000, np.int16(-2)),                       # ZBlk1 block 3
    ('i16_mixed', 4 * N16 + 2000, np.int16(9)),                          # the hole, block 4
    ('c128_F', (3, 4, 5), 7 - 7j),
    ('f64_C', (39, 29), -0.125),
    ('i32_appended', 'append', np.arange(-100, 0, dtype=np.int32)),
    ('i64_1d', 'append', np.array([1, 2, 3], np.int64)),
]


def apply_mods(arrays):
    """Apply MODS to `arrays` (name -> an array: numpy arrays, or ZBigArrays of
    wendelin.core or of wendelin_cy); numpy arrays are replaced when appended
    to, so arrays must be a dict."""
    for name, idx, value in MODS:
        a = arrays[name]
        if isinstance(idx, str):
            if isinstance(a, np.ndarray):
                arrays[name] = np.concatenate([a, value])
            else:
                a.append(value)
        elif isinstance(a, np.ndarray):
            a[idx] = value
        else:
            a[:][idx] = value     # (a view: both packages write through it)


def expected_after():
    e = expected()
    apply_mods(e)
    return e


def made_by_wendelin_cy():
    """The array --modify-with-wendelin-cy adds (a wendelin.core-format
    ZBigArray made by wendelin_cy.compat.wendelin_core)."""
    a = np.zeros((300, 7), dtype=np.float32, order='F')
    a[10:20, 3] = 1.5
    a[299, 6] = -3
    return a


# ~~~ by hand: need wendelin.core (or wendelin_cy)

def _write(path):
    import transaction
    from wendelin.bigarray.array_zodb import ZBigArray
    from wendelin.bigfile import file_zodb
    from wendelin.lib.zodb import dbclose, dbopen
    assert file_zodb.ZBlk1.CHUNKSIZE == 4096

    def fmt(f):
        file_zodb.ZBlk_fmt_write = f

    e = expected()
    if os.path.exists(path):
        sys.exit('%s exists' % path)
    root = dbopen(path)
    for name, (shape, dtype, order) in ARRAYS.items():
        root[name] = ZBigArray(shape, dtype, order=order, blksize=BS)
    root['_written_by'] = 'wendelin.core ' + WENDELIN_CORE_COMMIT
    transaction.commit()

    fmt('ZBlk0')
    for name in ('i64_1d', 'f64_C'):
        root[name][:] = e[name]
    transaction.commit()

    fmt('ZBlk1')
    for name in ('c128_F', 'struct'):
        root[name][:] = e[name]
    transaction.commit()

    # appended: 100 items (ZBlk0), then 1500 and 300 more (ZBlk1)
    a = root['i32_appended']
    fmt('ZBlk0')
    a[:100] = e["i32_appended"][:100]
    transaction.commit()
    fmt('ZBlk1')
    a.append(e['i32_appended'][100:1600])
    transaction.commit()
    a.append(e['i32_appended'][1600:])        # (zeros, then -5 in block 1)
    transaction.commit()

    # mixed: one commit per format
    m, want = root['i16_mixed'], e['i16_mixed']
    fmt('ZBlk0')
    for blk in (0, 2, 5):
        m[blk * N16:(blk + 1) * N16] = want[blk * N16:(blk + 1) * N16]
    transaction.commit()
    fmt('ZBlk1')
    for blk in (1, 3):
        m[blk * N16:(blk + 1) * N16] = want[blk * N16:(blk + 1) * N16]
    transaction.commit()

    # rewritten: ZBlk1, then a few elements changed in place
    r, want = root['f32_F_rewritten'], e['f32_F_rewritten']
    first = (np.arange(64 * 20, dtype=np.float32).reshape((64, 20), order='F') + 0.5)
    r[:] = first
    transaction.commit()
    v = r[:]
    v[5, 3] = want[5, 3]
    v[60, 19] = want[60, 19]
    del v
    transaction.commit()
    dbclose(root)

    formats = _formats(path)
    assert formats['i16_mixed'] == I16_FORMATS, formats['i16_mixed']
    print('wrote', path, os.path.getsize(path), 'bytes; block formats:', formats)


def _formats(path):
    """name -> {blk: class name of its ZBlk} (with wendelin.core)."""
    import transaction
    from wendelin.lib.zodb import dbclose, dbopen
    root = dbopen(path)
    try:
        return {name: {k: type(v).__name__ for k, v in root[name].zfile.blktab.items()}
                for name in ARRAYS}
    finally:
        transaction.abort()
        dbclose(root)


def _check(path, modified):
    """Read every array of `path` with wendelin.core; compare."""
    import transaction
    import wendelin.bigarray.array_zodb as az
    from wendelin.lib.zodb import dbclose, dbopen
    want = expected_after() if modified else expected()
    if modified:
        want['made_by_wendelin_cy'] = made_by_wendelin_cy()
    root = dbopen(path)
    bad = []
    try:
        for name, w in want.items():
            A = root[name]
            assert type(A) is az.ZBigArray, type(A)
            got = A[:]   # (wendelin.core: A[...] fails on n-d arrays)
            ok = (A.shape == w.shape and A.dtype == w.dtype
                  and np.array_equal(np.asarray(got), w))
            if w.ndim > 1:
                ok = ok and got.flags.f_contiguous == w.flags.f_contiguous
            print('%-16s %-28s %s' % (name, '%s %s' % (A.shape, A.dtype), 'ok' if ok else 'DIFFERS'))
            if not ok:
                bad.append(name)
        print('block formats:', {n: {k: type(v).__name__ for k, v in root[n].zfile.blktab.items()}
                                 for n in want})
    finally:
        transaction.abort()
        dbclose(root)
    if bad:
        sys.exit('wendelin.core reads differently: %s' % ', '.join(bad))
    print('wendelin.core reads every array of %s as expected%s'
          % (path, ' (after MODS)' if modified else ''))


def _modify_with_wendelin_cy(src, dst):
    import transaction
    from wendelin_cy.lib.zodb import dbclose, dbopen
    from wendelin_cy.compat.wendelin_core import ZBigArray
    shutil.copyfile(src, dst)
    root = dbopen(dst)
    apply_mods({name: root[name] for name in ARRAYS})
    want = made_by_wendelin_cy()
    A = root['made_by_wendelin_cy'] = ZBigArray(want.shape, want.dtype, order='F')
    transaction.commit()
    A[...][:] = want
    transaction.commit()
    dbclose(root)
    print('applied MODS to', dst, 'with wendelin_cy')


def main(argv):
    if len(argv) == 2 and argv[0] == '--write':
        _write(argv[1])
    elif argv[:1] == ['--check'] and len(argv) in (2, 3):
        _check(argv[1], modified=argv[2:] == ['--modified'])
    elif len(argv) == 3 and argv[0] == '--modify-with-wendelin-cy':
        _modify_with_wendelin_cy(argv[1], argv[2])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv[1:])
