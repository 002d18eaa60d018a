"""NEO: a clear error when its client is missing; ZBigArrays over NEO
clusters started by the tests (wendelin_cy.testing.servers.NEOCluster: 1
master, storage nodes on SQLite, 1 admin, on 127.0.0.1): storage nodes
killed (SIGKILL) or stopped (SIGSTOP) during a scan and during a commit, a
restarted node catching up, the master killed and restarted, and how the
blocks of an array spread over the storage nodes (docs/scale-out.md).

The slow ones are marked ``neo_slow`` (run by .ci/run, skipped with the
reason by a plain run: see tests/conftest.py)."""

import threading
import time

import numpy as np
import pytest
import transaction

from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.testing.servers import NEOCluster, neo_missing

BS = 2 << 20                    # a ZBigArray block: 2 MiB


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


@pytest.mark.skipif(not _neo_client(), reason='NEO client not installed')
def test_client_imported_first_from_a_worker_thread():
    # a dask worker's thread may be the first to open a neo:// database: NEO's
    # logger installs signal handlers at import, which only the main thread may
    code = '''if 1:
        import signal, sys, threading
        from wendelin_cy.storage.neo import import_client
        errors = []
        def work():
            try:
                import_client()
            except BaseException as e:
                errors.append(repr(e))
        t = threading.Thread(target=work); t.start(); t.join()
        assert not errors, errors
        assert 'neo.client.zodburi' in sys.modules
        assert signal.signal is not None and signal.signal.__module__ == 'signal'
        print('ok')
    '''
    import subprocess
    import sys
    import os
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


@pytest.fixture
def neo_cluster(tmp_path, request):
    """A cluster of its own for a test that breaks it: 2 storage nodes,
    replicas 1, 4 partitions (indirect parameter: NEOCluster keywords)."""
    why = neo_missing()
    if why:
        pytest.skip(why)
    kw = getattr(request, 'param', {})
    c = NEOCluster(str(tmp_path), **kw).start()
    yield c
    c.stop()


@pytest.fixture
def timeout(monkeypatch):
    """The storage timeout of the NEO databases the test opens: 3 s."""
    monkeypatch.setenv('WENDELIN_CY_STORAGE_TIMEOUT', '3')
    return 3.0


def _fill(uri, nblk, seed=0):
    """root['A'] = nblk blocks of random uint8 -> the values."""
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    want = np.random.default_rng(seed).integers(0, 256, nblk * BS, dtype=np.uint8)
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.uint8)
        transaction.commit()
        for lo in range(0, len(want), 16 * BS):     # 32 MiB a commit
            A.append(want[lo:lo + 16 * BS])
            transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    return want


def _check(uri, want, during=None):
    """Scan root['A'] block by block in a fresh database, against `want`;
    `during(k)` is called before block k."""
    root = dbopen(uri)
    try:
        a = root['A'][:]
        assert a.shape == want.shape
        for k, lo in enumerate(range(0, len(want), BS)):
            if during is not None:
                during(k)
            assert np.array_equal(a[lo:lo + BS], want[lo:lo + BS]), 'block %d' % k
        del a
    finally:
        transaction.abort()
        dbclose(root)


def test_zbigarray_over_neo(neo_cluster):
    """The plain URI form (compression on), and a replica serving all."""
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    uri = 'neo://%s@%s' % (neo_cluster.name, neo_cluster.master_addr)
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.int64)
        transaction.commit()
        A.append(np.arange(3 << 18))            # 3 blocks of 2 MiB
        transaction.commit()
    finally:
        dbclose(root)
    neo_cluster.kill_storage(1)
    root = dbopen(uri)
    try:
        a = root['A'][:]
        assert (a == np.arange(3 << 18)).all()
        del a
    finally:
        dbclose(root)


@pytest.mark.neo_slow
def test_storage_killed_during_scan_then_restarted_catches_up(neo_cluster, budget):
    """SIGKILL of a storage node in the middle of a 64 MiB scan: the scan
    completes with the right values (the other replica serves); the node
    restarted is UP_TO_DATE again and serves alone."""
    budget(8 * BS)
    want = _fill(neo_cluster.uri, 32)

    def during(k):
        if k == 8:
            neo_cluster.kill_storage(1)
    _check(neo_cluster.uri, want, during)
    assert 'O' in neo_cluster.pt()['S1'] + neo_cluster.pt()['S2']    # cells out of date
    # more commits while it is down: it must catch them up
    root = dbopen(neo_cluster.uri)
    try:
        root['A'][:BS] = 7
        transaction.commit()
    finally:
        dbclose(root)
    want[:BS] = 7
    neo_cluster.start_storage(1)
    neo_cluster.wait_ready(60)
    assert set(''.join(neo_cluster.pt().values())) == {'U'}
    neo_cluster.kill_storage(0)                     # only the restarted one left
    _check(neo_cluster.uri, want)


@pytest.mark.neo_slow
def test_storage_killed_during_commit(neo_cluster, budget):
    """SIGKILL of a storage node while a 32 MiB commit is on its way: the
    commit completes (the other replica takes it) or raises, and then the
    previous state is intact; either way the database is consistent."""
    budget(8 * BS)
    want = _fill(neo_cluster.uri, 16)
    root = dbopen(neo_cluster.uri)
    err = None
    try:
        A = root['A']
        A[:] = 5
        killed = []

        def kill():
            neo_cluster.kill_storage(1)
            killed.append(time.monotonic())
        t = threading.Timer(0.2, kill)
        t.start()
        try:
            transaction.commit()
        except Exception as e:
            err = e
            transaction.abort()
        done = time.monotonic()
        t.join()
        assert killed and killed[0] < done          # during the commit
    finally:
        transaction.abort()
        dbclose(root)
    assert neo_cluster.storage_procs[1].poll() is not None      # it was killed
    if err is None:
        want[:] = 5
    else:
        assert str(err) or type(err).__name__              # says something
    _check(neo_cluster.uri, want)
    neo_cluster.start_storage(1)
    neo_cluster.wait_ready(60)
    neo_cluster.kill_storage(0)
    _check(neo_cluster.uri, want)


@pytest.mark.neo_slow
def test_master_killed_load_fails_in_bounded_time_then_restarted(neo_cluster, timeout):
    """The master SIGKILLed: a load that needs it (a record not in NEO's
    client cache) raises NEOTimeout within the storage timeout, not a hang;
    the master restarted, the same database works on."""
    from wendelin_cy.storage.neo import NEOTimeout
    want = _fill(neo_cluster.uri, 2)
    root = dbopen(neo_cluster.uri)
    try:
        neo_cluster.kill_master()
        t0 = time.monotonic()
        with pytest.raises(NEOTimeout) as e:
            root['A'].shape                 # loads the ZBigArray's record
        took = time.monotonic() - t0
        assert timeout <= took < timeout + 3, took
        assert 'no answer within 3s' in str(e.value)
        transaction.abort()
        neo_cluster.start_master()
        neo_cluster.wait_ready(60)
        a = root['A'][:]
        assert np.array_equal(a, want)
        del a
        root['A'][:BS] = 1
        transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    want[:BS] = 1
    _check(neo_cluster.uri, want)


@pytest.mark.neo_slow
def test_storage_stopped_behaves_as_dead_within_the_timeout(neo_cluster, timeout, budget):
    """SIGSTOP of a storage node during a scan: the loads waiting on it are
    given up after the storage timeout and the other replica serves them;
    the scan completes with the right values."""
    budget(8 * BS)
    want = _fill(neo_cluster.uri, 16)
    t0 = [None]

    def during(k):
        if k == 4:
            neo_cluster.pause_storage(1)
            t0[0] = time.monotonic()
    try:
        _check(neo_cluster.uri, want, during)
    finally:
        neo_cluster.resume_storage(1)
    took = time.monotonic() - t0[0]
    assert took < 4 * (timeout + 1), took


@pytest.mark.parametrize('neo_cluster', [dict(storages=n, replicas=r, partitions=12)
                                         for n in (2, 3) for r in (0, 1)],
                         indirect=True, ids=lambda kw: '%dnodes-replicas%d'
                         % (kw['storages'], kw['replicas']))
def test_blocks_spread_over_the_storage_nodes(neo_cluster):
    """An array's 16 blocks (and their metadata) are spread over the nodes:
    every record is on exactly replicas + 1 nodes, every node holds some,
    and with replicas 0 no node holds them all."""
    n, r = neo_cluster.nstorages, neo_cluster.replicas
    _fill(neo_cluster.uri, 16)
    # a storage node commits its SQLite transaction from time to time: wait
    # until the 16 block records (and 4 more: root, array, file, table) show
    deadline = time.monotonic() + 30
    while True:
        recs = [neo_cluster.records(i) for i in range(n)]
        every = set().union(*recs)
        if len(every) >= 20 and sum(map(len, recs)) == (r + 1) * len(every) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(every) >= 20
    copies = {rec: sum(rec in s for s in recs) for rec in every}
    assert set(copies.values()) == {r + 1}
    assert all(len(s) > 0 for s in recs)
    if r + 1 < n:
        assert all(len(s) < len(every) for s in recs)
    print('NEO %d nodes, replicas %d: %d records, per node %s'
          % (n, r, len(every), [len(s) for s in recs]))


# -- big incompressible records skip NEO's compression (storage.neo)

@pytest.mark.skipif(not _neo_client(), reason='NEO client not installed')
def test_sampled_compression_of_big_records():
    from neo.lib.compress import decompress_list, getCompress
    from wendelin_cy.storage import neo as wneo

    class App:
        def __init__(self, on):
            self.compress = getCompress(on)     # as NEO's Application does
    app = App(True)
    wneo.skip_incompressible(app)
    wrapped = app.compress
    wneo.skip_incompressible(app)           # once only
    assert app.compress is wrapped
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, BS, dtype=np.uint8).tobytes()
    # numbers that compress: small integers as float64, and zeros
    floats = rng.integers(0, 4, BS // 8).astype(np.float64).tobytes()
    zeros = bytes(BS)
    small = noise[:4096]                    # under SAMPLE_MIN: NEO's own path
    n0 = wneo.skipped
    for data, skip in ((noise, True), (floats, False), (zeros, False),
                       (small, False)):
        size, compression, out = app.compress(data)
        assert size == len(data)
        assert wneo.skipped - n0 == (1 if skip else 0), len(data)
        n0 = wneo.skipped
        if skip:
            assert compression == 0 and out is data
        elif data is not small:
            assert compression != 0 and len(out) < len(data) // 2
        # as NEO reads it back
        assert decompress_list[compression](out) == data

    off = App(False)
    before = off.compress
    wneo.skip_incompressible(off)           # compression off: left as is
    assert off.compress is before


@pytest.mark.skipif(not _neo_client(), reason='NEO client not installed')
def test_sampled_records_read_by_a_plain_neo_client(request):
    # an array stored through dbopen with NEO's compression on, noise and
    # compressible blocks, reads back right through NEO's own client (no
    # wendelin_cy set-up of it), so the records are NEO's format
    import zodburi
    import ZODB
    from storages import neo_session_cluster, _empty_root
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.storage import neo as wneo
    c = neo_session_cluster(request.config)
    uri = 'neo://%s@%s' % (c.name, c.master_addr)       # compression on
    _empty_root(uri)
    rng = np.random.default_rng(2)
    want = np.concatenate([rng.integers(0, 256, 4 * BS, dtype=np.uint8),
                           np.zeros(4 * BS, np.uint8),
                           np.tile(np.arange(256, dtype=np.uint8), 4 * BS // 256)])
    n0 = wneo.skipped
    root = dbopen(uri)
    try:
        root['A'] = A = ZBigArray((0,), np.uint8)
        transaction.commit()
        A.append(want)
        transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    assert wneo.skipped - n0 == 4           # the 4 noise blocks only
    factory, dbkw = zodburi.resolve_uri(uri)
    db = ZODB.DB(wneo.quiet_close(factory()), **dbkw)
    try:
        conn = db.open()
        A = conn.root()['A']
        assert np.array_equal(A[:], want)
        conn.close()
    finally:
        db.close()
        _empty_root(uri)
