"""A small database as wendelin_cy 0.1.0.dev0 wrote it, before the redesign
of issue 14 (pager split into .pxi files, storages behind one interface).

Databases record the class paths of their persistent objects
(``wendelin_cy.bigfile.file_zodb.ZBigFile``, ``ZBlk0``, ``ZBlk1``, ``ZData``,
``ZBlkSeg``, ``wendelin_cy.bigarray.array_zodb.ZBigArray``) and the layout of
their states; ``tests/test_legacy_db.py`` opens the database this script
wrote and checks every array and value against ``expected()``.

Regenerate only with the version the directory is named for (it was made
at commit 8d76d43 + the stack-frame change, which wrote the same records):

    python tests/data/legacy_v0_1.py tests/data/legacy-0.1

It writes every block format: ZBlk0, ZBlk1 (with holes and an all-zero
chunk), ZBlk1 over a ZBlk0 base, blob segments (ZBlkSeg) and a ZBlk1 over a
segment base, in arrays of several dtypes and orders, one resized and
appended to, one bare ZBigFile, and a view stored in a persistent object
(as data).
"""

import os
import shutil
import sys

import numpy as np

BS = 16384          # small blocks: the committed files stay small


def expected():
    """name -> the content each array must have (plain numpy)."""
    e = {}
    e['i64_auto'] = np.arange(5000, dtype=np.int64) * 3 - 7
    e['i64_auto'][1234] = -1            # a small change over a segment block
    f = np.arange(64 * 100, dtype=np.float32).reshape((64, 100), order='F') / 7
    e['f32_F_ZBlk0'] = f
    s = np.zeros(20000, dtype=np.dtype([('a', '<i2'), ('b', '<u4')]))
    s['a'][::97] = np.arange(len(s['a'][::97]), dtype=np.int16)
    s['b'][15000:15010] = 0xdeadbeef
    e['struct_ZBlk1'] = s
    o = np.full(BS // 8 * 3, 2.5)       # 3 whole ZBlk0 blocks ...
    o[10] = 99.0                        # ... then one chunk of block 0 in a ZBlk1 over it
    e['f64_overlay0'] = o
    r = np.arange(3000, dtype=np.uint8).reshape(1000, 3)
    r = np.concatenate([r[:700], np.full((50, 3), 7, np.uint8)])
    e['u8_resized'] = r
    return e


def expected_file():
    """Blocks of the bare ZBigFile: {blk: bytes of the block}."""
    b0 = bytes(range(256)) * (BS // 256)
    b3 = b'\x01' * 100 + bytes(BS - 100)
    return {0: b0, 1: bytes(BS), 3: b3}


def expected_meta():
    return {'n': 42, 'name': 'legacy', 'ratio': 0.5,
            'kept': np.arange(10, dtype=np.int64) * 3 - 7}


def write(path):
    import transaction
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.bigfile.file_zodb import ZBigFile
    from wendelin_cy.lib.zodb import dbclose, dbopen

    e = expected()
    fs = os.path.join(path, 'data.fs')
    root = dbopen(fs)
    try:
        # segments (auto over a FileStorage with blobs), then a small change
        A = root['i64_auto'] = ZBigArray((5000,), np.int64, blksize=BS)
        transaction.commit()
        A[:] = np.arange(5000, dtype=np.int64) * 3 - 7
        transaction.commit()
        A[1234] = -1
        transaction.commit()

        F = root['f32_F_ZBlk0'] = ZBigArray((64, 100), np.float32, order='F',
                                            blksize=BS, zblk_fmt='ZBlk0')
        transaction.commit()
        F[...] = e['f32_F_ZBlk0']
        transaction.commit()

        S = root['struct_ZBlk1'] = ZBigArray((20000,), e['struct_ZBlk1'].dtype,
                                             blksize=BS, zblk_fmt='ZBlk1')
        transaction.commit()
        S[...] = e['struct_ZBlk1']
        transaction.commit()

        O = root['f64_overlay0'] = ZBigArray((BS // 8 * 3,), np.float64,
                                             blksize=BS, zblk_fmt='ZBlk0')
        transaction.commit()
        O[:] = 2.5
        transaction.commit()
        O.zfile.zblk_fmt = 'auto'
        transaction.commit()
        O[10] = 99.0
        transaction.commit()

        R = root['u8_resized'] = ZBigArray((1000, 3), np.uint8, blksize=BS)
        transaction.commit()
        R[...] = np.arange(3000, dtype=np.uint8).reshape(1000, 3)
        transaction.commit()
        R.resize((700, 3))
        transaction.commit()
        R.append(np.full((50, 3), 7, np.uint8))
        transaction.commit()

        Z = root['zfile'] = ZBigFile(BS, zblk_fmt='ZBlk0')
        transaction.commit()
        fh = Z.fileh_open()
        vma = fh.mmap(0, 4)
        with memoryview(vma) as mv:
            for blk, data in expected_file().items():
                mv[blk * BS:blk * BS + len(data)] = data
        transaction.commit()
        del mv, vma
        fh.close()

        meta = expected_meta()
        root['meta'] = {'n': meta['n'], 'name': meta['name'], 'ratio': meta['ratio'],
                        'kept': A[:10]}
        root['_written_by'] = _version()
        transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    for tail in ('.index', '.lock', '.tmp'):
        if os.path.exists(fs + tail):
            os.unlink(fs + tail)
    shutil.rmtree(os.path.join(fs + '.blobs', 'tmp'), ignore_errors=True)


def _version():
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=here,
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ''
    import wendelin_cy
    return '%s %s' % (getattr(wendelin_cy, '__version__', '?'), rev)


if __name__ == '__main__':
    out = sys.argv[1]
    if os.path.exists(out):
        sys.exit('%s exists: remove it first' % out)
    os.makedirs(out)
    write(out)
    print('wrote', out)
