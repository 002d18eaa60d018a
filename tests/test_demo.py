"""python -m wendelin_cy.demo (signal and ml) end to end, in subprocesses."""

import os
import re
import struct
import subprocess
import sys
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')


def run_demo(args, cwd, extra_path=None, timeout=240):
    path = [SRC] + ([extra_path] if extra_path else [])
    if os.environ.get('PYTHONPATH'):
        path.append(os.environ['PYTHONPATH'])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    env.pop('WENDELIN_CY_RAM_BUDGET', None)
    return subprocess.run([sys.executable, '-m', 'wendelin_cy.demo'] + args, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def check_png(path):
    """A well-formed PNG: signature, IHDR with a sane size, every chunk's CRC,
    IEND last."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG signature'
    pos, chunks = 8, []
    while pos < len(data):
        n, = struct.unpack('>I', data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        crc, = struct.unpack('>I', data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, 'bad CRC in chunk %r' % kind
        chunks.append((kind, body))
        pos += 12 + n
    assert chunks[0][0] == b'IHDR' and chunks[-1][0] == b'IEND'
    w, h = struct.unpack('>II', chunks[0][1][:8])
    assert 200 <= w <= 4000 and 200 <= h <= 4000, (w, h)
    assert any(k == b'IDAT' for k, _ in chunks)
    return w, h


def _mib(text, label):
    m = re.search(label + r' ([0-9.]+) (MiB|GiB)', text)
    assert m, (label, text)
    return float(m.group(1)) * (1024 if m.group(2) == 'GiB' else 1)


def test_signal_demo(tmp_path):
    pytest.importorskip('matplotlib')
    p = run_demo(['--size', '64M', '--budget', '32M', '--plot', 'tmp.png'], tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert 'throughput' in out and 'MiB/s' in out
    assert re.search(r'ingest: .* MiB/s', out) and re.search(r'scan .* MiB/s', out)
    assert 'peak RSS' in out and 'RAM budget 32.0 MiB' in out
    assert 'equals the generated one' in out and out.rstrip().endswith('OK')
    assert 'ingest' in p.stderr                 # the tqdm bars
    check_png(tmp_path / 'tmp.png')
    # the temporary database is gone
    m = re.search(r'FileStorage (\S+) \(temporary\)', out)
    assert m and not os.path.exists(os.path.dirname(m.group(1)))


def test_signal_demo_quiet_keep_uri_and_no_matplotlib(tmp_path):
    # a matplotlib that cannot be imported: the plot is skipped with a note
    fake = tmp_path / 'nompl'
    (fake / 'matplotlib').mkdir(parents=True)
    (fake / 'matplotlib' / '__init__.py').write_text('raise ImportError("no mpl")\n')
    p = run_demo(['--size', '8M', '--budget', '4M', '--uri', 'my.fs', '--keep',
                  '--quiet'], tmp_path, extra_path=str(fake))
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'plot skipped: matplotlib is not installed' in p.stdout
    assert 'ingest' not in p.stderr             # --quiet: no bars
    assert not (tmp_path / 'wendelin_cy_demo.png').exists()
    assert (tmp_path / 'my.fs').exists()        # --uri + --keep: data stays
    code = ('from wendelin_cy.lib.zodb import dbopen, dbclose; r = dbopen("my.fs"); '
            'print(r["wendelin_cy_demo"].shape); dbclose(r)')
    q = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert q.stdout.strip() == '(1048576,)', q.stderr


def test_bad_arguments(tmp_path):
    p = run_demo(['--budget', 'lots'], tmp_path)
    assert p.returncode == 2 and 'cannot parse size' in p.stderr


def test_ml_demo(tmp_path):
    pytest.importorskip('sklearn')
    pytest.importorskip('joblib')
    pytest.importorskip('matplotlib')
    p = run_demo(['ml', '--size', '32M', '--budget', '16M', '--plot', 'ml.png'],
                 tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert 'throughput' in out and 'rows/s' in out
    assert 'peak RSS' in out and 'RAM budget 16.0 MiB' in out
    m = re.search(r'accuracy on \d+ held-out rows: ([0-9.]+) \(Bayes-optimal for this '
                  r'data: ([0-9.]+)\)', out)
    assert m and float(m.group(1)) >= float(m.group(2)) - 0.03, out
    assert 'sums equal the in-process ones' in out
    assert 'sent by reference' in out and 'mapped in the workers' in out
    assert out.rstrip().endswith('OK')
    check_png(tmp_path / 'ml.png')
