"""The command line (python -m wendelin_cy), run in subprocesses: round trips,
info, verify on damaged copies of a database, errors, the RAM budget, and an
import killed in the middle."""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _zodb_util import env_with_src

MiB = 1 << 20


def run(*args, cwd, budget='64M', check=None, **extra):
    env = env_with_src(WENDELIN_CY_RAM_BUDGET=budget)
    if 'PYTHONPATH' in extra:
        extra['PYTHONPATH'] += os.pathsep + env['PYTHONPATH']
    env.update(extra)
    env.pop('WENDELIN_CY_DEBUG', None)
    p = subprocess.run([sys.executable, '-m', 'wendelin_cy'] + [str(a) for a in args],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check is not None:
        assert p.returncode == check, (args, p.returncode, p.stdout, p.stderr)
    return p


def one_line_error(p, *words):
    """rc 2, one line on stderr that names what is wrong, no traceback."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('wendelin-cy: error: '), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def write_npy(path, nbytes, dtype='<f8', cols=1024):
    """A .npy of about nbytes of non-zero data, written in pieces."""
    dt = np.dtype(dtype)
    rows = nbytes // (cols * dt.itemsize)
    m = np.lib.format.open_memmap(path, mode='w+', dtype=dt, shape=(rows, cols))
    step = max(1, (8 * MiB) // (cols * dt.itemsize))
    for i in range(0, rows, step):
        j = min(rows, i + step)
        m[i:j] = np.arange(i * cols, j * cols, dtype=np.int64).reshape(j - i, cols) + 1
    m.flush()
    del m
    return rows, cols


def data_digest(path):
    """sha256 of the data of a .npy file (not of its header)."""
    with open(path, 'rb') as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        np.lib.format.read_array_header_1_0(f)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(4 * MiB), b''):
            h.update(chunk)
    return h.hexdigest()


def test_roundtrip_info_verify(tmp_path):
    pytest.importorskip('h5py')
    pytest.importorskip('zarr')
    import h5py
    import zarr
    a = np.arange(600_000, dtype='<f8').reshape(600, 1000)     # 4.6 MiB
    f = np.asfortranarray(np.arange(3000, dtype='>i4').reshape(30, 100))
    np.save(tmp_path / 'a.npy', a)
    np.save(tmp_path / 'f.npy', f)
    with h5py.File(tmp_path / 'in.h5', 'w') as h:
        h.create_dataset('g/d', data=a[:50].astype('f4'), chunks=(7, 1000))
    z = zarr.create_array(str(tmp_path / 'in.zarr'), name='x', shape=(40, 30), dtype='u2')
    z[...] = np.arange(1200).reshape(40, 30)
    db = tmp_path / 'db.fs'
    for src, key in (('a.npy', 'grp/A'), ('f.npy', 'F'), ('in.h5:/g/d', 'H'),
                     ('in.zarr/x', 'grp/Z')):
        p = run('import', src, db, key, '--commit-every', '1', cwd=tmp_path, check=0)
        assert 'imported %s into %s' % (src, key) in p.stderr

    p = run('info', db, '--json', cwd=tmp_path, check=0)
    info = json.loads(p.stdout)
    arrays = {x['key']: x for x in info['arrays']}
    assert sorted(arrays) == ['F', 'H', 'grp/A', 'grp/Z'] and info['partial'] == []
    A = arrays['grp/A']
    assert A['shape'] == [600, 1000] and A['dtype'] == 'float64' and A['order'] == 'C'
    assert A['nblocks'] == 3 and A['blocks']['blob'] == 2 and A['blocks']['hole'] == 0
    assert A['disk_bytes']['total'] >= a.nbytes - 2 * MiB and A['last_commit']
    assert arrays['F']['order'] == 'F' and arrays['F']['dtype'] == '>i4'
    text = run('info', db, cwd=tmp_path, check=0).stdout
    assert text.splitlines()[0].split()[:4] == ['KEY', 'SHAPE', 'DTYPE', 'ORDER']
    assert any(line.startswith('grp/A ') and '600x1000' in line for line in text.splitlines())
    detail = run('info', db, 'grp/A', cwd=tmp_path, check=0).stdout
    assert 'shape:        (600, 1000)' in detail and 'blob' in detail

    p = run('verify', db, cwd=tmp_path, check=0)
    assert '4 arrays' in p.stdout and 'no problems' in p.stdout

    run('export', db, 'grp/A', 'out.npy', cwd=tmp_path, check=0)
    run('export', db, 'F', 'outf.npy', cwd=tmp_path, check=0)
    run('export', db, 'H', 'out.h5', cwd=tmp_path, check=0)          # dataset /H
    run('export', db, 'grp/Z', 'out.zarr/deep/z', cwd=tmp_path, check=0)
    assert np.array_equal(np.load(tmp_path / 'out.npy'), a)
    outf = np.load(tmp_path / 'outf.npy')
    assert outf.dtype == f.dtype and outf.flags.f_contiguous and np.array_equal(outf, f)
    with h5py.File(tmp_path / 'out.h5', 'r') as h:
        assert np.array_equal(h['H'][...], a[:50].astype('f4'))
    assert np.array_equal(zarr.open_array(str(tmp_path / 'out.zarr'), path='deep/z')[...],
                          z[...])
    # the destination exists now
    one_line_error(run('export', db, 'grp/A', 'out.npy', cwd=tmp_path), 'exists', '--force')
    run('export', db, 'grp/A', 'out.npy', '--force', cwd=tmp_path, check=0)
    assert not glob.glob(str(tmp_path / '.*wendelin_cy-tmp*'))


def test_errors_are_one_line(tmp_path):
    np.save(tmp_path / 'a.npy', np.arange(10))
    np.save(tmp_path / 'u.npy', np.array(['ab', 'cd']))
    np.save(tmp_path / 'o.npy', np.array([1, None], dtype=object))
    db = tmp_path / 'db.fs'
    run('import', 'a.npy', db, 'A', cwd=tmp_path, check=0)
    run('import', 'u.npy', db, 'U', cwd=tmp_path, check=0)
    c = dict(cwd=tmp_path)
    one_line_error(run('info', 'foo://x', **c), 'unknown URI scheme', "'foo'")
    one_line_error(run('info', 'nodb.fs', **c), 'no database at nodb.fs')
    one_line_error(run('info', db, 'B', **c), "no key 'B'")
    one_line_error(run('export', db, 'A/x', 'o.npy', **c), "no key 'x' in A")
    run('import', 'a.npy', db, 'grp/A', cwd=tmp_path, check=0)
    one_line_error(run('info', db, 'grp', **c), "'grp' is not a ZBigArray", 'PersistentMapping')
    one_line_error(run('import', 'a.npy', db, 'A', **c), "key 'A' exists", '--force')
    one_line_error(run('import', 'missing.npy', db, 'M', **c), 'cannot open missing.npy')
    one_line_error(run('import', 'o.npy', db, 'O', **c), 'object', 'fixed-size')
    one_line_error(run('import', 'x.txt', db, 'X', **c), 'cannot tell the format')
    one_line_error(run('import', 'a.npy', db, 'A/sub', **c), 'not a mapping')
    if _have('h5py'):
        one_line_error(run('export', db, 'U', 'u.h5', **c), 'HDF5 cannot hold dtype <U2')
    # a missing optional package: h5py and zarr made unimportable
    block = tmp_path / 'block'
    for mod in ('h5py', 'zarr'):
        (block / mod).mkdir(parents=True)
        (block / mod / '__init__.py').write_text('raise ImportError("blocked for the test")\n')
    env = {'PYTHONPATH': str(block)}
    one_line_error(run('export', db, 'A', 'a.h5', **c, **env), 'h5py', "pip install 'wendelin_cy[io]'")
    one_line_error(run('import', 's.zarr', db, 'Z', **c, **env), 'zarr', 'wendelin_cy[io]')
    # usage mistakes are argparse's: rc 2 and a usage line, no traceback
    p = run('import', 'a.npy', **c)
    assert p.returncode == 2 and 'usage:' in p.stderr and 'Traceback' not in p.stderr
    p = run('import', 'a.npy', db, 'Q', '--commit-every', '-3', **c)
    assert p.returncode == 2 and 'must be positive' in p.stderr
    # and nothing above changed the database
    info = json.loads(run('info', db, '--json', **c, check=0).stdout)
    assert sorted(a['key'] for a in info['arrays']) == ['A', 'U', 'grp/A']
    assert info['partial'] == []


def _have(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


RSS_SCRIPT = textwrap.dedent('''
    import sys, time
    from wendelin_cy.cli import main

    def status(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024

    base = status('VmHWM')
    times = {}
    for name, argv in [('import', ['import', 'big.npy', 'db.fs', 'A', '-q']),
                       ('export', ['export', 'db.fs', 'A', 'out.npy', '-q'])] + (
                      [('export-h5', ['export', 'db.fs', 'A', 'out.h5', '-q'])]
                      if sys.argv[1] == '1' else []):
        t = time.perf_counter()
        rc = main(argv)
        times[name] = time.perf_counter() - t
        assert rc == 0, (name, rc)
    print('hwm', status('VmHWM'), 'base', base)
    for name, t in times.items():
        print('time', name, t)
''')


def test_rss_within_budget(tmp_path):
    """import and export of an input 4x the RAM budget keep the peak RSS
    (VmHWM) under budget + 128 MiB."""
    budget = 32 * MiB
    rows, cols = write_npy(str(tmp_path / 'big.npy'), 4 * budget)
    (tmp_path / 'rss.py').write_text(RSS_SCRIPT)
    env = env_with_src(WENDELIN_CY_RAM_BUDGET=str(budget))
    p = subprocess.run([sys.executable, 'rss.py', '1' if _have('h5py') else '0'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout.split()
    hwm = int(out[out.index('hwm') + 1])
    nbytes = rows * cols * 8
    print('peak RSS %.1f MiB (start %.1f MiB), budget %d MiB, data %.1f MiB; %s'
          % (hwm / MiB, int(out[out.index('base') + 1]) / MiB, budget // MiB,
             nbytes / MiB, ', '.join('%s %.0f MiB/s' % (out[i + 1], nbytes / MiB / float(out[i + 2]))
                                     for i, w in enumerate(out) if w == 'time')))
    assert hwm <= budget + 128 * MiB
    assert data_digest(tmp_path / 'out.npy') == data_digest(tmp_path / 'big.npy')


def _start_import(tmp_path, *extra, budget='32M'):
    env = env_with_src(WENDELIN_CY_RAM_BUDGET=budget)
    return subprocess.Popen(
        [sys.executable, '-m', 'wendelin_cy', 'import', 'big.npy', 'db.fs', 'grp/A',
         '--commit-every', '2', '-v'] + list(extra), cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_commits(p, n):
    seen = 0
    for line in p.stderr:
        if line.startswith('committed'):
            seen += 1
            if seen == n:
                return
    raise AssertionError('the import ended before %d commits (rc %s)' % (n, p.wait()))


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_import(tmp_path, sig):
    """Killed (or Ctrl-C, or SIGTERM) in the middle, an import leaves the database as it
    was plus an unfinished import that verify accepts and --resume finishes."""
    write_npy(str(tmp_path / 'big.npy'), 96 * MiB)
    np.save(tmp_path / 'small.npy', np.arange(5))
    c = dict(cwd=tmp_path)
    run('import', 'small.npy', 'db.fs', 'before', **c, check=0)
    p = _start_import(tmp_path)
    _wait_for_commits(p, 3)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 130, err
        assert 'Traceback' not in err
        assert 'interrupted: the import to grp/A is kept unfinished' in err
        assert '--resume' in err
    info = json.loads(run('info', 'db.fs', '--json', **c, check=0).stdout)
    assert [a['key'] for a in info['arrays']] == ['before']      # grp/A not there
    (part,) = info['partial']
    assert part['key'] == 'grp/A' and 0 < part['done'] < part['nbytes']
    assert 'unfinished import to grp/A' in run('info', 'db.fs', **c, check=0).stdout
    v = run('verify', 'db.fs', **c, check=0)
    assert '(unfinished import)' not in v.stdout and 'no problems' in v.stdout
    one_line_error(run('info', 'db.fs', 'grp/A', **c), "no key 'grp'")
    one_line_error(run('import', 'big.npy', 'db.fs', 'grp/A', **c), 'unfinished import', '--resume')
    one_line_error(run('import', 'small.npy', 'db.fs', 'grp/A', '--resume', **c),
                   'another source')
    r = run('import', 'big.npy', 'db.fs', 'grp/A', '--resume', '-v', **c, check=0)
    first = [ln for ln in r.stderr.splitlines() if ln.startswith('committed')][0]
    assert float(first.split()[1]) > 2, first       # went on from where it was
    info = json.loads(run('info', 'db.fs', '--json', **c, check=0).stdout)
    assert sorted(a['key'] for a in info['arrays']) == ['before', 'grp/A']
    assert info['partial'] == []
    run('export', 'db.fs', 'grp/A', 'out.npy', **c, check=0)
    assert data_digest(tmp_path / 'out.npy') == data_digest(tmp_path / 'big.npy')
    run('verify', 'db.fs', **c, check=0)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGKILL])
def test_interrupted_export_leaves_no_destination(tmp_path, sig):
    """An export stopped half way leaves no DEST (the data goes to a temporary
    name beside it, renamed at the end); Ctrl-C also removes the temporary
    file and exits with 130."""
    write_npy(str(tmp_path / 'big.npy'), 96 * MiB)
    run('import', 'big.npy', 'db.fs', 'A', cwd=tmp_path, check=0)
    env = env_with_src(WENDELIN_CY_RAM_BUDGET='32M')
    p = subprocess.Popen([sys.executable, '-m', 'wendelin_cy', 'export', 'db.fs', 'A',
                          'out.npy'], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    t0 = time.monotonic()
    while True:         # until the temporary file holds some data
        tmps = glob.glob(str(tmp_path / '.*wendelin_cy-tmp*'))
        if tmps and os.path.getsize(tmps[0]) > 8 * MiB:
            break
        assert p.poll() is None, ('the export ended first', p.communicate())
        assert time.monotonic() - t0 < 60, 'no temporary file after 60 s'
        time.sleep(0.005)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert not (tmp_path / 'out.npy').exists()
    if sig == signal.SIGINT:
        assert p.returncode == 130 and 'Traceback' not in err, err
        assert not glob.glob(str(tmp_path / '.*wendelin_cy-tmp*'))
    else:
        assert p.returncode == -signal.SIGKILL
    run('export', 'db.fs', 'A', 'out.npy', cwd=tmp_path, check=0)      # again: fine
    assert data_digest(tmp_path / 'out.npy') == data_digest(tmp_path / 'big.npy')


def _db_with_blocks(tmp_path, fmt=None):
    """A FileStorage with an 8-block array written one block per commit."""
    rows, cols = write_npy(str(tmp_path / 'src.npy'), 16 * MiB)
    args = ['import', 'src.npy', 'db.fs', 'A', '--commit-every', '2']
    if fmt:
        args += ['--zblk-fmt', fmt]
    run(*args, cwd=tmp_path, budget='16M', check=0)    # 2 MiB boxes: a segment each
    run('verify', 'db.fs', cwd=tmp_path, check=0)


def _damaged_copy(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    shutil.copy(tmp_path / 'db.fs', d / 'db.fs')
    if (tmp_path / 'db.fs.blobs').exists():
        shutil.copytree(tmp_path / 'db.fs.blobs', d / 'db.fs.blobs')
    return d


def test_verify_finds_missing_and_truncated_blob_files(tmp_path):
    _db_with_blocks(tmp_path)
    d = _damaged_copy(tmp_path, 'bad')
    blobs = sorted(glob.glob(str(d / 'db.fs.blobs' / '**' / '*.blob'), recursive=True))
    assert len(blobs) >= 4, blobs
    os.unlink(blobs[1])
    with open(blobs[2], 'r+b') as f:
        f.truncate(MiB)
    p = run('verify', 'db.fs', cwd=d)
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2, p.stdout
    assert any('blob file missing' in ln for ln in lines)
    assert any('is truncated: 1048576 bytes' in ln for ln in lines)
    for ln in lines:
        assert ln.startswith('A: block ') and '(blob, oid 0x' in ln
    assert '2 problems' in p.stderr and 'Traceback' not in p.stderr
    j = json.loads(run('verify', 'db.fs', '--json', cwd=d).stdout)
    assert j['ok'] is False and {p['blk'] for p in j['problems']} <= set(range(8))
    assert len({p['blk'] for p in j['problems']}) == 2
    # the original is intact
    run('verify', 'db.fs', cwd=tmp_path, check=0)


def test_verify_finds_a_damaged_record(tmp_path):
    _db_with_blocks(tmp_path, 'ZBlk0')
    d = _damaged_copy(tmp_path, 'bad')
    # the record of block 3: overwrite the start of its pickle
    code = textwrap.dedent('''
        import sys
        from ZODB.FileStorage import FileStorage
        from ZODB.FileStorage.format import DATA_HDR_LEN
        import ZODB
        st = FileStorage('db.fs', read_only=True)
        db = ZODB.DB(st)
        c = db.open()
        z = c.root()['A'].zfile.blktab[3]
        oid = z._p_oid
        pos = st._lookup_pos(oid)
        db.close()
        with open('db.fs', 'r+b') as f:
            f.seek(pos + DATA_HDR_LEN)
            f.write(b'\\xff\\xfe\\xfd\\xfc')
        print('0x' + oid.hex())
    ''')
    env = env_with_src()
    oid = subprocess.run([sys.executable, '-c', code], cwd=d, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    p = run('verify', 'db.fs', 'A', cwd=d)
    assert p.returncode == 1, (p.stdout, p.stderr)
    (line,) = p.stdout.strip().splitlines()
    assert line.startswith('A: block 3 (ZBlk0, oid %s): load error' % oid), line
    # reading it through the pager fails as one line too, not as a crash
    one_line_error(run('export', 'db.fs', 'A', 'o.npy', cwd=d))
    assert not os.path.exists(d / 'o.npy')


def test_demo_commands_are_the_demos(tmp_path):
    p = run('demo', '--help', cwd=tmp_path, check=0)
    assert 'python -m wendelin_cy.demo' in p.stdout
    p = run('ml-demo', '--size', 'x', cwd=tmp_path)
    assert p.returncode == 2 and 'cannot parse size' in p.stderr
    p = run('--help', cwd=tmp_path, check=0)
    for cmd in ('info', 'import', 'export', 'verify', 'demo', 'ml-demo'):
        assert cmd in p.stdout


def _run_on_a_terminal(args, cwd):
    """Run the command with stderr on a pseudo-terminal; -> (rc, what the
    terminal showed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    env = env_with_src(WENDELIN_CY_RAM_BUDGET='32M', COLUMNS='100')
    p = subprocess.Popen([sys.executable, '-m', 'wendelin_cy'] + [str(a) for a in args],
                         cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = b''
    try:
        while True:
            r, _, _ = select.select([master], [], [], 60)
            if not r:
                raise AssertionError('no output for 60 s')
            try:
                data = os.read(master, 65536)
            except OSError:             # EIO: the other side is closed
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
        rc = p.wait(timeout=60)
        p.stdout.close()
    return rc, out.decode(errors='replace')


def test_progress_bar_on_a_terminal_only(tmp_path):
    """import, export and verify draw a tqdm bar when stderr is a terminal;
    --quiet, and a stderr that is not a terminal, have none."""
    write_npy(str(tmp_path / 'a.npy'), 8 * MiB)
    for args, quiet in ((['import', 'a.npy', 'db.fs', 'A'], ['import', 'a.npy', 'db.fs', 'B']),
                        (['export', 'db.fs', 'A', 'a1.npy'], ['export', 'db.fs', 'A', 'a2.npy']),
                        (['verify', 'db.fs'], ['verify', 'db.fs'])):
        rc, shown = _run_on_a_terminal(args, tmp_path)
        assert rc == 0, shown
        assert '%|' in shown and args[0] in shown, (args, shown)      # tqdm's bar
        rc, shown = _run_on_a_terminal(quiet + ['--quiet'], tmp_path)
        assert rc == 0 and '%|' not in shown, (quiet, shown)
    assert data_digest(tmp_path / 'a1.npy') == data_digest(tmp_path / 'a.npy')
    # a pipe (not a terminal): no bar
    p = run('import', 'a.npy', 'db.fs', 'C', cwd=tmp_path, check=0)
    assert '%|' not in p.stderr and 'imported a.npy into C' in p.stderr
    p = run('verify', 'db.fs', cwd=tmp_path, check=0)
    assert '%|' not in p.stderr + p.stdout and '3 arrays' in p.stdout
