"""A database written by wendelin_cy 0.1.0.dev0, before the redesign, opens
and reads the same: class paths and state layouts of the persistent objects
are part of the format (see tests/data/legacy_v0_1.py, which wrote it)."""

import os
import shutil
import sys

import numpy as np
import pytest
import transaction

from wendelin_cy.lib.zodb import dbclose, dbopen

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, 'data')
sys.path.insert(0, DATA)
import legacy_v0_1 as legacy  # noqa: E402
sys.path.remove(DATA)

CLASSES = {
    'wendelin_cy.bigfile.file_zodb': ['ZBigFile', 'ZBlk0', 'ZBlk1', 'ZData', 'ZBlkSeg'],
    'wendelin_cy.bigarray.array_zodb': ['ZBigArray'],
}


@pytest.fixture
def legacy_path(tmp_path, budget):
    budget('16M')
    d = tmp_path / 'legacy'
    shutil.copytree(os.path.join(DATA, 'legacy-0.1'), d)   # opening writes .index
    return str(d / 'data.fs')


@pytest.fixture
def legacy_db(legacy_path):
    root = dbopen(legacy_path)
    yield root
    transaction.abort()
    dbclose(root)


def test_class_paths_are_where_databases_recorded_them():
    import importlib
    for mod, names in CLASSES.items():
        m = importlib.import_module(mod)
        for name in names:
            cls = getattr(m, name)
            assert cls.__module__ == mod and cls.__name__ == name, (mod, name)


def test_records_name_the_class_paths():
    with open(os.path.join(DATA, 'legacy-0.1', 'data.fs'), 'rb') as f:
        raw = f.read()
    for mod, names in CLASSES.items():
        assert mod.encode() in raw
        for name in names:
            assert name.encode() in raw, name


def test_arrays_read_as_written(legacy_db):
    root = legacy_db
    assert root['_written_by'].startswith('0.1.0.dev0')
    for name, want in legacy.expected().items():
        A = root[name]
        assert A.shape == want.shape and A.dtype == want.dtype, name
        got = A[...]
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
        if want.ndim == 2:
            assert A[...].flags.f_contiguous == (name == 'f32_F_ZBlk0'), name


def test_every_block_format_is_in_it(legacy_db):
    from wendelin_cy.bigfile.file_zodb import ZBlk0, ZBlk1, ZBlkSeg
    seen = set()
    for name in list(legacy.expected()) + ['zfile']:
        z = legacy_db[name]
        z = getattr(z, 'zfile', z)
        for obj in z.blktab.values():
            base = getattr(obj, 'base', None)
            seen.add((type(obj), type(base) if base is not None else None))
    assert {(ZBlk0, None), (ZBlk1, None), (ZBlk1, ZBlk0), (ZBlkSeg, None),
            (ZBlk1, ZBlkSeg)} <= seen


def test_bare_zbigfile_and_values(legacy_db):
    Z = legacy_db['zfile']
    bs = legacy.BS
    fh = Z.fileh_open()
    vma = fh.mmap(0, 4)
    with memoryview(vma) as mv:
        for blk in range(4):
            want = legacy.expected_file().get(blk, bytes(bs))
            assert bytes(mv[blk * bs:(blk + 1) * bs]).ljust(bs, b'\0') == want.ljust(bs, b'\0'), blk
    del mv, vma
    fh.close()
    meta = legacy_db['meta']
    want = legacy.expected_meta()
    for k in ('n', 'name', 'ratio'):
        assert meta[k] == want[k]
    assert type(meta['kept']) is np.ndarray
    np.testing.assert_array_equal(meta['kept'], want['kept'])


def test_old_records_take_new_writes(legacy_path):
    # the new code writes over records the old one made, and reads them back
    root = dbopen(legacy_path)
    model = {name: want.copy() for name, want in legacy.expected().items()}
    root['i64_auto'][4999] = 5
    model['i64_auto'][4999] = 5
    root['f64_overlay0'][:100] = -1.0
    model['f64_overlay0'][:100] = -1.0
    root['u8_resized'].append(np.ones((3, 3), np.uint8))
    model['u8_resized'] = np.concatenate([model['u8_resized'], np.ones((3, 3), np.uint8)])
    transaction.commit()
    dbclose(root)
    root = dbopen(legacy_path)
    try:
        for name, want in model.items():
            np.testing.assert_array_equal(np.asarray(root[name][...]), want, err_msg=name)
    finally:
        transaction.abort()
        dbclose(root)
