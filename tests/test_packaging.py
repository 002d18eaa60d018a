"""Packaging: ``python -m build`` gives an sdist with the Cython sources and a
wheel built from that sdist; the wheel installs into a fresh virtual
environment (as ``pip install wendelin_cy-*.tar.gz`` would: pip builds the
same wheel from the sdist), where the extension imports, the console script
runs and a ZBigArray makes a round trip through a FileStorage.

The venv uses --system-site-packages for the dependencies (numpy, ZODB...):
only wendelin_cy itself is installed into it, and the test checks that it is
the copy the venv imports."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROUNDTRIP = textwrap.dedent('''
    import importlib.metadata, json, sys
    import numpy as np, transaction
    import wendelin_cy
    import wendelin_cy._pager.virtmem as vm
    from wendelin_cy import ZBigArray, dbopen, dbclose
    root = dbopen(sys.argv[1])
    root['A'] = A = ZBigArray((1000, 3), np.int32)
    A[:] = np.arange(3000, dtype=np.int32).reshape(1000, 3)
    transaction.commit()
    dbclose(root)
    root = dbopen(sys.argv[1])
    ok = bool((root['A'][:] == np.arange(3000).reshape(1000, 3)).all())
    dbclose(root)
    print(json.dumps({'file': wendelin_cy.__file__, 'ext': vm.__file__,
                      'version': wendelin_cy.__version__,
                      'dist_version': importlib.metadata.version('wendelin_cy'),
                      'ok': ok}))
''')


def _run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, (cmd, p.stdout[-3000:], p.stderr[-3000:])
    return p


def test_version_has_one_source():
    """pyproject.toml reads the version from wendelin_cy.__version__."""
    import wendelin_cy
    with open(os.path.join(ROOT, 'pyproject.toml')) as f:
        text = f.read()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "wendelin_cy.__version__" }' in text
    assert wendelin_cy.__version__.count('.') >= 2


def test_sdist_wheel_and_a_fresh_venv(tmp_path):
    pytest.importorskip('build', reason="the 'build' package is not installed "
                        "(it is in the test extra: pip install -e '.[test]')")
    dist = tmp_path / 'dist'
    # sdist from the tree, then the wheel from the sdist (build's default)
    _run([sys.executable, '-m', 'build', '-o', str(dist), ROOT])
    sdists = list(dist.glob('wendelin_cy-*.tar.gz'))
    wheels = list(dist.glob('wendelin_cy-*.whl'))
    assert len(sdists) == 1 and len(wheels) == 1, list(dist.iterdir())

    with tarfile.open(sdists[0]) as t:
        names = {n.split('/', 1)[1] for n in t.getnames() if '/' in n}
    pager = 'src/wendelin_cy/_pager/'
    for need in ('virtmem.pyx', 'load.pxi', 'api.pxi', 'posix.pxd', 'wcy.h', 'virtmem.pyi'):
        assert pager + need in names, need
    for need in ('src/wendelin_cy/py.typed', 'setup.py', 'pyproject.toml', 'README.md'):
        assert need in names, need
    with zipfile.ZipFile(wheels[0]) as z:
        wnames = set(z.namelist())
    assert 'wendelin_cy/py.typed' in wnames
    assert 'wendelin_cy/_pager/virtmem.pyi' in wnames
    assert any(n.startswith('wendelin_cy/_pager/virtmem.') and n.endswith('.so') for n in wnames)
    assert not any(n.endswith('virtmem.c') for n in wnames)      # a build product only

    venv = tmp_path / 'venv'
    _run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)])
    py = str(venv / 'bin' / 'python')
    _run([py, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
          '--force-reinstall', str(wheels[0])])

    work = tmp_path / 'work'            # away from the source tree
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['WENDELIN_CY_RAM_BUDGET'] = '64M'
    (work / 'rt.py').write_text(ROUNDTRIP)
    out = json.loads(_run([py, 'rt.py', 'db.fs'], cwd=work, env=env).stdout)
    assert out['ok']
    assert out['file'].startswith(str(venv)) and out['ext'].startswith(str(venv)), out
    assert out['version'] == out['dist_version']
    import wendelin_cy
    assert out['version'] == wendelin_cy.__version__

    # the console script of the wheel
    p = _run([str(venv / 'bin' / 'wendelin-cy'), 'info', 'db.fs', '--json'], cwd=work, env=env)
    arrays = json.loads(p.stdout)['arrays']
    assert [(a['key'], a['shape'], a['dtype']) for a in arrays] == [('A', [1000, 3], 'int32')]
