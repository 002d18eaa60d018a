"""A database written by wendelin.core itself opens with wendelin_cy, reads
the same values, takes writes, and keeps wendelin.core's record formats
(tests/data/make_wendelin_core_db.py wrote it, with wendelin.core commit
ca119d6; docs/compat.md "Databases written by wendelin.core").

CI has no wendelin.core: what wendelin.core would read back is checked from
the raw records (class names, state layouts, and the block bytes decoded
the way wendelin.core decodes them, by a decoder of this file).  The same
check with wendelin.core itself is run by hand (the script's --check).
"""

import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import transaction
from hypothesis import HealthCheck, given, settings, strategies as st

from wendelin_cy.lib.zodb import dbclose, dbopen

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, 'data')
DB_DIR = os.path.join(DATA, 'wendelin-core-ca119d6')
sys.path.insert(0, DATA)
import make_wendelin_core_db as wc  # noqa: E402
sys.path.remove(DATA)

FILE = 'wendelin.bigfile.file_zodb'
ARRAY = 'wendelin.bigarray.array_zodb'
BS = wc.BS


@pytest.fixture
def db_path(tmp_path, budget):
    budget('64M')
    shutil.copyfile(os.path.join(DB_DIR, 'data.fs'), tmp_path / 'data.fs')
    return str(tmp_path / 'data.fs')


def _formats(root):
    return {name: {k: type(v).__name__ for k, v in root[name].zfile.blktab.items()}
            for name in wc.ARRAYS}


def _check_arrays(root, want):
    from wendelin_cy.compat import wendelin_core
    for name, w in want.items():
        A = root[name]
        assert type(A) is wendelin_core.ZBigArray, (name, type(A))
        assert A.shape == w.shape and A.dtype == w.dtype, name
        got = A[...]
        assert type(got) is np.ndarray
        if w.ndim > 1:
            assert got.flags.f_contiguous == (wc.ARRAYS[name][2] == 'F'), name
            assert got.flags.c_contiguous == (wc.ARRAYS[name][2] == 'C'), name
        np.testing.assert_array_equal(got, w, err_msg=name)


# ~~~ raw records: what wendelin.core would find

class _Ref(tuple):
    """A persistent reference: (oid, (module, class name) or None)."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == 'numpy' and name == 'dtype':
            return np.dtype
        return (module, name)

    def persistent_load(self, pid):
        if isinstance(pid, tuple):
            oid, cls = pid
            return _Ref((oid, cls))
        return _Ref((pid, None))


def _decode(data):
    f = io.BytesIO(data)
    u = _Unpickler(f)
    cls = u.load()
    state = u.load()
    if isinstance(cls, tuple) and len(cls) == 2 and isinstance(cls[0], tuple):
        cls = cls[0]            # (class, newargs)
    return cls, state


class Raw:
    """The current records of a FileStorage, read with ZODB's storage API."""

    def __init__(self, path):
        from ZODB.FileStorage import FileStorage
        self.st = FileStorage(path, read_only=True)

    def close(self):
        self.st.close()

    def load(self, oid):
        from ZODB.utils import load_current
        return _decode(load_current(self.st, oid)[0])

    def oids_since(self, tid):
        """oid -> class of every record written by transactions after tid."""
        out = {}
        for t in self.st.iterator(start=_next(tid)):
            for r in t:
                out[r.oid] = _decode(r.data)[0]
        return out

    def block_bytes(self, zfile_oid):
        """blk -> bytes of the block as wendelin.core decodes its records
        (ZBlk0: the bytes; ZBlk1: the chunks at their offsets, zeros between
        them), checking the state layouts on the way."""
        cls, state = self.load(zfile_oid)
        assert cls == (FILE, 'ZBigFile')
        assert type(state) is tuple and len(state) == 2, state
        blksize, tab = state
        assert type(blksize) is int and isinstance(tab, _Ref)
        assert tab[1] == ('BTrees.LOBTree', 'LOBTree')
        out = {}
        for blk, ref in self._btree_items(tab[0]):
            cls, st = self.load(ref[0])
            assert ref[1] == cls            # the reference names the same class
            if cls == (FILE, 'ZBlk0'):
                assert type(st) is bytes and len(st) <= blksize
                out[blk] = ('ZBlk0', st.ljust(blksize, b'\0'))
            else:
                assert cls == (FILE, 'ZBlk1'), cls
                assert isinstance(st, _Ref) and st[1] == ('BTrees.IOBTree', 'IOBTree')
                buf = bytearray(blksize)
                stop = 0
                for off, zref in self._btree_items(st[0]):
                    zcls, data = self.load(zref[0])
                    assert zcls == (FILE, 'ZData') and type(data) is bytes
                    assert off >= stop and off + len(data) <= blksize
                    buf[off:off + len(data)] = data
                    stop = off + len(data)
                out[blk] = ('ZBlk1', bytes(buf))
        return out

    def _btree_items(self, oid):
        """Items of a BTree record (and of its buckets), from the raw states:
        None (empty), ((bucket state,),) (one bucket inline), or
        ((child, key, child, ...), first bucket) with children records."""
        return list(self._tree(self.load(oid)[1]))

    def _tree(self, state):
        if state is None:
            return
        data = state[0]
        if len(data) == 1 and not isinstance(data[0], _Ref):
            yield from _bucket(data[0])
            return
        for i in range(0, len(data), 2):
            cls, cst = self.load(data[i][0])
            if cls[1].endswith('Bucket'):
                yield from _bucket(cst)
            else:
                yield from self._tree(cst)


def _bucket(state):
    items = state[0]
    for i in range(0, len(items), 2):
        yield items[i], items[i + 1]


def _next(tid):
    return (int.from_bytes(tid, 'big') + 1).to_bytes(8, 'big')


def _array_bytes(raw, oid):
    """(shape, dtype, order, zfile oid) of a ZBigArray record, layout checked."""
    cls, state = raw.load(oid)
    assert cls == (ARRAY, 'ZBigArray')
    assert type(state) is tuple and len(state) == 2
    d, slots = state
    assert set(d) == {'_dtype', '_shape', '_order', '_stridev'}, set(d)
    assert set(slots) == {'zfile'}
    dt, shape, order = d['_dtype'], d['_shape'], d['_order']
    assert type(dt) is np.dtype or isinstance(dt, np.dtype)
    assert type(shape) is tuple and all(type(x) is int for x in shape)
    item = dt.itemsize
    want_strides = tuple(item * int(np.prod(shape[i + 1:] if order == 'C' else shape[:i],
                                            dtype=np.int64)) for i in range(len(shape)))
    assert d['_stridev'] == want_strides
    assert slots['zfile'][1] == (FILE, 'ZBigFile')
    return shape, dt, order, slots['zfile'][0]


def _content_from_raw(raw, oid):
    """The array as wendelin.core would read it, from the raw records alone."""
    shape, dt, order, zoid = _array_bytes(raw, oid)
    blocks = raw.block_bytes(zoid)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    nblk = -(-nbytes // BS)
    flat = b''.join(blocks.get(b, (None, bytes(BS)))[1] for b in range(nblk))[:nbytes]
    a = np.frombuffer(flat, dtype=dt)
    return a.reshape(shape, order=order), {b: f for b, (f, _) in blocks.items()}


def _root_oids(raw):
    from ZODB.utils import z64
    cls, state = raw.load(z64)
    data = state['data'] if 'data' in state else state['_container']
    return {k: v[0] for k, v in data.items() if isinstance(v, _Ref)}


# ~~~ tests

def test_committed_file_is_what_wendelin_core_wrote():
    raw = Raw(os.path.join(DB_DIR, 'data.fs'))
    try:
        with open(os.path.join(DB_DIR, 'data.fs'), 'rb') as f:
            assert b'wendelin_cy' not in f.read()
        oids = _root_oids(raw)
        assert set(oids) == set(wc.ARRAYS)
        for name, want in wc.expected().items():
            got, fmts = _content_from_raw(raw, oids[name])
            np.testing.assert_array_equal(got, want, err_msg=name)
        assert _content_from_raw(raw, oids['i16_mixed'])[1] == wc.I16_FORMATS
    finally:
        raw.close()
    assert os.path.getsize(os.path.join(DB_DIR, 'data.fs')) < 256 * 1024


def test_arrays_read_as_written(db_path):
    root = dbopen(db_path)
    try:
        assert root['_written_by'] == 'wendelin.core ' + wc.WENDELIN_CORE_COMMIT
        _check_arrays(root, wc.expected())
        assert _formats(root)['i16_mixed'] == wc.I16_FORMATS
        f = _formats(root)
        assert f['c128_F'] == {0: 'ZBlk1'} and f['i64_1d'] == {0: 'ZBlk0'}
    finally:
        transaction.abort()
        dbclose(root)


def test_writes_keep_wendelin_core_formats(db_path):
    st0 = Raw(db_path)
    last = st0.st.lastTransaction()
    st0.close()

    root = dbopen(db_path)
    wc.apply_mods({name: root[name] for name in wc.ARRAYS})
    transaction.commit()
    dbclose(root)

    want = wc.expected_after()
    root = dbopen(db_path)
    try:
        _check_arrays(root, want)
        f = _formats(root)
        # auto: blocks keep their format; the hole (sparse) became a ZBlk1
        assert f['i16_mixed'] == {**wc.I16_FORMATS, 4: 'ZBlk1'}
        assert f['f64_C'] == {0: 'ZBlk0'} and f['c128_F'] == {0: 'ZBlk1'}
    finally:
        transaction.abort()
        dbclose(root)

    raw = Raw(db_path)
    try:
        written = raw.oids_since(last)
        names = set(written.values())
        # every record written names wendelin.core's classes (or BTrees')
        assert names <= {(FILE, 'ZBigFile'), (FILE, 'ZBlk0'), (FILE, 'ZBlk1'),
                         (FILE, 'ZData'), (ARRAY, 'ZBigArray'),
                         ('BTrees.LOBTree', 'LOBTree'), ('BTrees.IOBTree', 'IOBTree'),
                         ('BTrees.LOBTree', 'LOBucket'), ('BTrees.IOBTree', 'IOBucket')}, names
        assert {(FILE, 'ZBlk0'), (FILE, 'ZData'), (ARRAY, 'ZBigArray')} <= names
        with open(db_path, 'rb') as fobj:
            assert b'wendelin_cy' not in fobj.read()
        oids = _root_oids(raw)
        for name, w in want.items():
            got, fmts = _content_from_raw(raw, oids[name])
            np.testing.assert_array_equal(got, w, err_msg=name)
        # new ZBlk1 chunks are 4 KiB at multiples of 4 KiB, none all zeros
        for oid, cls in written.items():
            if cls == (FILE, 'ZData'):
                data = raw.load(oid)[1]
                assert 0 < len(data) <= 4096 and not data.endswith(b'\0')
    finally:
        raw.close()


def test_wendelin_core_zblk_fmt_is_followed(db_path, monkeypatch):
    monkeypatch.setenv('WENDELIN_CORE_ZBLK_FMT', 'ZBlk0')
    root = dbopen(db_path)
    root['c128_F'][...][0, 0, 0] = 5j           # a ZBlk1 block rewritten as ZBlk0
    transaction.commit()
    monkeypatch.setenv('WENDELIN_CORE_ZBLK_FMT', 'ZBlk1')
    root['i64_1d'][...][7] = -7                 # (opened after: ZBlk1)
    transaction.commit()
    with pytest.raises(ValueError, match='blob'):
        root['f64_C'].zfile.fileh_open(zblk_fmt='blob')
    dbclose(root)
    root = dbopen(db_path)
    try:
        f = _formats(root)
        assert f['c128_F'] == {0: 'ZBlk0'} and f['i64_1d'] == {0: 'ZBlk1'}
        want = wc.expected()
        want['c128_F'][0, 0, 0] = 5j
        want['i64_1d'][7] = -7
        _check_arrays(root, want)
    finally:
        transaction.abort()
        dbclose(root)


def test_new_array_in_wendelin_core_format(tmp_path, budget):
    budget('64M')
    from wendelin_cy.compat.wendelin_core import ZBigArray
    path = str(tmp_path / 'new.fs')
    root = dbopen(path)
    A = root['A'] = ZBigArray((300, 7), '<f4', order='F')
    model = np.zeros((300, 7), np.float32, order='F')
    transaction.commit()
    A[...][10:20, 3] = 1.5
    model[10:20, 3] = 1.5
    transaction.commit()
    dbclose(root)
    raw = Raw(path)
    try:
        got, fmts = _content_from_raw(raw, _root_oids(raw)['A'])
        np.testing.assert_array_equal(got, model)
        assert fmts == {0: 'ZBlk1'}             # sparse new block (auto)
    finally:
        raw.close()
    with pytest.raises(TypeError):
        ZBigArray((3,), object)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(
    st.sampled_from(['ZBlk0', 'ZBlk1', 'auto']),
    st.integers(0, 3 * BS // 4 - 1), st.integers(1, 5000), st.integers(-2**31, 2**31 - 1)),
    min_size=1, max_size=6))
def test_writes_decode_as_wendelin_core_does(tmp_path_factory, budget, ops):
    # random writes in random formats into a 3-block int32 wendelin.core-format
    # array: wendelin_cy and a decoder of wendelin.core's format both read
    # the numpy model
    budget('64M')
    from wendelin_cy.compat.wendelin_core import ZBigArray
    path = str(tmp_path_factory.mktemp('prop') / 'p.fs')
    root = dbopen(path)
    n = 3 * BS // 4
    root['A'] = ZBigArray((n,), np.int32)
    transaction.commit()
    model = np.zeros(n, np.int32)
    for fmt, start, length, value in ops:
        A = root['A']
        A._fileh.close()                        # a handle with this format
        A.__dict__['_v_fileh'] = A.zfile.fileh_open(zblk_fmt=fmt)
        A[...][start:start + length] = value
        model[start:start + length] = value
        transaction.commit()
    np.testing.assert_array_equal(root['A'][...], model)
    dbclose(root)
    raw = Raw(path)
    try:
        got, fmts = _content_from_raw(raw, _root_oids(raw)['A'])
        np.testing.assert_array_equal(got, model)
        assert set(fmts.values()) <= {'ZBlk0', 'ZBlk1'}
    finally:
        raw.close()


def _run(code, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.dirname(HERE), 'src'))
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_reading_changes_nothing_global(db_path, tmp_path):
    # reading through dbopen puts no wendelin.* module anywhere, and a
    # database opened with plain ZODB (no wendelin_cy class factory) does
    # not get wendelin_cy's classes
    out = _run('''
        import sys, ZODB, transaction
        from ZODB.FileStorage import FileStorage
        from wendelin_cy.lib.zodb import dbopen, dbclose
        path = sys.argv[1] + '/data.fs'
        root = dbopen(path)
        for k in ('i64_1d', 'c128_F', 'i16_mixed'):
            root[k][...].sum()
        print('after read:', sorted(m for m in sys.modules if m.split('.')[0] == 'wendelin'))
        transaction.abort(); dbclose(root)
        db = ZODB.DB(FileStorage(path, read_only=True))
        A = db.open().root()['i64_1d']
        print('plain ZODB:', type(A).__module__, type(A).__name__, 'wendelin_cy' in repr(type(A).__mro__))
        db.close()
    ''', os.path.dirname(db_path))
    assert 'after read: []' in out
    assert 'plain ZODB:' in out and out.strip().endswith('False')


def test_wendelin_core_imported_refuses_writes(db_path):
    # wendelin.core's own module in sys.modules: reads work, a write fails
    # clearly and the database is unchanged
    out = _run('''
        import sys, types, transaction
        fake = types.ModuleType('wendelin.bigfile.file_zodb')   # stands for wendelin.core's
        sys.modules['wendelin.bigfile.file_zodb'] = fake
        from wendelin_cy.lib.zodb import dbopen, dbclose
        from wendelin_cy.compat.wendelin_core import WendelinCoreImported
        path = sys.argv[1] + '/data.fs'
        root = dbopen(path)
        A = root['i64_1d']
        print('read', int(A[...][5]))
        A[...][5] = 99
        try:
            transaction.commit()
        except WendelinCoreImported as e:
            print('refused:', 'is imported in this process' in str(e))
        transaction.abort(); dbclose(root)
        root = dbopen(path)
        print('after', int(root['i64_1d'][...][5]))
        transaction.abort(); dbclose(root)
    ''', os.path.dirname(db_path))
    v = int(wc.expected()['i64_1d'][5])
    assert 'read %d' % v in out and 'refused: True' in out and 'after %d' % v in out, out


def test_after_a_write_wendelin_core_cannot_be_mixed_in(db_path):
    out = _run('''
        import sys, importlib, transaction
        from wendelin_cy.lib.zodb import dbopen, dbclose
        from wendelin_cy.compat import wendelin_core
        root = dbopen(sys.argv[1] + '/data.fs')
        root['f64_C'][...][0, 0] = 1.0
        transaction.commit(); dbclose(root)
        m = importlib.import_module('wendelin.bigfile.file_zodb')
        print('names:', m.ZBigFile is wendelin_core.ZBigFile, wendelin_core.names_installed())
        try:
            import wendelin.bigfile.file_zodb_other
        except ImportError as e:
            print('guard:', 'use wendelin.core in another process' in str(e))
        try:
            import wendelin.lib.zodb
        except ImportError as e:
            print('guard2:', 'use wendelin.core in another process' in str(e))
    ''', os.path.dirname(db_path))
    assert 'names: True True' in out and 'guard: True' in out and 'guard2: True' in out, out


def test_two_connections_change_different_blocks(db_path, monkeypatch):
    # both commits put a new block object in blktab, so both rewrite the
    # (unchanged) ZBigFile record: the conflict is resolved, each block
    # keeps its change
    import ZODB
    from ZODB.FileStorage import FileStorage
    from wendelin_cy import compat
    from wendelin_cy.bigfile import _wcore
    resolved = []
    orig = _wcore.ZBigFile._p_resolveConflict

    def spy(self, *states):
        resolved.append(1)
        return orig(self, *states)

    monkeypatch.setattr(_wcore.ZBigFile, '_p_resolveConflict', spy)
    db = ZODB.DB(FileStorage(db_path))
    compat.install(db)
    try:
        tm1, tm2 = transaction.TransactionManager(), transaction.TransactionManager()
        c1, c2 = db.open(tm1), db.open(tm2)
        n = wc.N16
        c1.root()['i16_mixed'][...][4 * n + 10] = 111         # the hole: a new ZBlk1
        monkeypatch.setenv('WENDELIN_CORE_ZBLK_FMT', 'ZBlk0')
        c2.root()['i16_mixed'][...][n + 10] = 222             # ZBlk1 -> a new ZBlk0
        tm1.commit()
        tm2.commit()
        assert resolved
        want = wc.expected()['i16_mixed']
        want[4 * n + 10], want[n + 10] = 111, 222
        c2.close()
        c1.close()
        tm3 = transaction.TransactionManager()
        c3 = db.open(tm3)
        np.testing.assert_array_equal(c3.root()['i16_mixed'][...], want)
        tm3.abort()
        c3.close()
    finally:
        db.close()


def test_info_and_verify_know_the_formats(db_path):
    from wendelin_cy.dbinfo import array_info
    from wendelin_cy.verify import verify_array
    root = dbopen(db_path)
    try:
        info = array_info('i16_mixed', root['i16_mixed'])
        assert info['blocks']['ZBlk0'] == 3 and info['blocks']['ZBlk1'] == 2
        assert info['blocks']['hole'] == 1 and info['blocks']['other'] == 0
        for name in wc.ARRAYS:
            rep = verify_array(name, root[name])
            assert rep.ok, (name, rep.problems)
    finally:
        transaction.abort()
        dbclose(root)


def test_early_and_bad_states():
    from wendelin_cy.compat.wendelin_core import ZBigArray, ZBigFile, ZBlk0, ZBlk1, ZData
    # early wendelin.core wrote no _order: C order
    A = ZBigArray.__new__(ZBigArray)
    A.__setstate__(({'_dtype': np.dtype('<i2'), '_shape': (4, 3)}, {'zfile': ZBigFile()}))
    assert A._order == 'C' and A._shape == (4, 3) and A._dtype == np.int16
    for bad in ({'_shape': (3,)}, 'x', ({'_dtype': np.dtype('O'), '_shape': (2,)}, {'zfile': None}),
                ({'_dtype': np.dtype('f8'), '_shape': (2,), '_order': 'K'}, {'zfile': None})):
        with pytest.raises((TypeError, ValueError)):
            ZBigArray.__new__(ZBigArray).__setstate__(bad)
    with pytest.raises(TypeError):
        ZBigFile.__new__(ZBigFile).__setstate__({'blksize': 4096})
    with pytest.raises(ValueError):
        ZBigFile.__new__(ZBigFile).__setstate__((0, None))
    for cls in (ZBlk0, ZData):
        with pytest.raises(TypeError):
            cls.__new__(cls).__setstate__(u'text')
    with pytest.raises(TypeError):
        ZBlk1.__new__(ZBlk1).__setstate__({0: b'x'})
    # a ZBlk1 with overlapping chunks, or one past the block: a clear error
    z = ZBlk1()
    z.chunktab[0] = ZData(b'\1' * 10)
    z.chunktab[5] = ZData(b'\2')
    with pytest.raises(ValueError, match='overlaps'):
        z.loadblkdata(bytearray(4096))
    z = ZBlk1()
    z.chunktab[4090] = ZData(b'\3' * 10)
    with pytest.raises(ValueError, match='past'):
        z.loadblkdata(bytearray(4096))
    z = ZBlk1()
    z.chunktab[100] = ZData(b'\4' * 3)          # chunks of any length read
    z.chunktab[1000] = ZData(b'\5' * 5000)
    buf = bytearray(b'\xff' * 8192)
    z.loadblkdata(buf)
    want = bytearray(8192)
    want[100:103] = b'\4' * 3
    want[1000:6000] = b'\5' * 5000
    assert buf == want
