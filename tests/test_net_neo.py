"""NEO: a clear error when its client is missing; a ZBigArray over a small
NEO cluster (1 master, 2 storage nodes with 1 replica, 1 admin) when NEO is
installed (its Python 3 client is not on PyPI: see docs/scale-out.md)."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import transaction

from wendelin_cy.lib.zodb import dbopen, dbclose

from storages import free_port


def _neo_client():
    try:
        import neo.client  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(_neo_client(), reason='NEO is installed: the error for a '
                    'missing client cannot be shown')
@pytest.mark.parametrize('uri', ['neo://db@127.0.0.1:1',
                                 'neo://db@127.0.0.1:1,127.0.0.1:2?compress=false',
                                 'NEO://db@localhost:1'])
def test_missing_client_error_names_what_to_install(uri):
    with pytest.raises(ValueError) as e:
        dbopen(uri)
    msg = str(e.value)
    assert 'NEO client' in msg and 'not installed' in msg
    assert 'neoppod' in msg                 # what to install


NEO_TOOLS = ('neomaster', 'neostorage', 'neoadmin', 'neoctl')


def _neo_missing():
    if not _neo_client():
        return 'NEO client (neo.client) is not installed; see docs/scale-out.md'
    missing = [t for t in NEO_TOOLS if shutil.which(t) is None]
    if missing:
        return 'NEO node commands not on PATH: %s' % ', '.join(missing)
    return None


@pytest.fixture
def neo_cluster(tmp_path):
    why = _neo_missing()
    if why:
        pytest.skip(why)
    name = 'wcy%d' % os.getpid()
    master = '127.0.0.1:%d' % free_port()
    admin = '127.0.0.1:%d' % free_port()
    common = ['--cluster', name, '--masters', master]
    procs = []

    def spawn(*argv):
        log = open(str(tmp_path / ('%s-%d.log' % (argv[0], len(procs)))), 'wb')
        procs.append(subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL))

    try:
        spawn('neomaster', *common, '--bind', master, '--replicas', '1',
              '--partitions', '4')
        for i in range(2):
            spawn('neostorage', *common, '--bind', '127.0.0.1:%d' % free_port(),
                  '--adapter', 'SQLite', '--database', str(tmp_path / ('s%d.sqlite' % i)))
        spawn('neoadmin', *common, '--bind', admin)
        deadline = time.monotonic() + 60
        state = ''
        while time.monotonic() < deadline:
            subprocess.run(['neoctl', '-a', admin, 'start'], capture_output=True,
                           timeout=30)
            state = subprocess.run(['neoctl', '-a', admin, 'print', 'cluster'],
                                   capture_output=True, text=True, timeout=30).stdout
            if 'RUNNING' in state:
                break
            time.sleep(0.5)
        else:
            pytest.fail('NEO cluster did not reach RUNNING: %r' % state)
        yield 'neo://%s@%s?compress=false' % (name, master), procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def test_zbigarray_over_neo(neo_cluster):
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    uri, procs = neo_cluster
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.int64)
        transaction.commit()
        A.append(np.arange(3 << 18))            # 3 blocks of 2 MiB
        transaction.commit()
    finally:
        dbclose(root)
    # one storage node dies: its replica on the other serves everything
    storage = procs[1]
    os.kill(storage.pid, signal.SIGKILL)
    storage.wait()
    root = dbopen(uri)
    try:
        a = root['A'][:]
        assert (a == np.arange(3 << 18)).all()
        del a
    finally:
        dbclose(root)
