"""wendelin_cy.lib.malloc: glibc thresholds for ZEO clients, set once, only
where the user did not choose otherwise."""

import os
import subprocess
import sys
import textwrap

import pytest

from wendelin_cy.lib import malloc

CHILD = textwrap.dedent("""
    import ctypes
    from wendelin_cy.lib import malloc

    def in_heap(b):
        a = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
        for line in open('/proc/self/maps'):
            if line.rstrip().endswith('[heap]'):
                lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                return lo <= a < hi
        return False
    tuned = malloc.tune()
    b = bytearray(3 << 20)      # between glibc's first threshold (128 KiB) and ours
    print(tuned, malloc.tune(), in_heap(b))
""")


def _run(env=None, before=''):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k not in ('GLIBC_TUNABLES', malloc.ENV)}
    e.update(env or {})
    r = subprocess.run([sys.executable, '-c', before + CHILD], env=e, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


glibc = pytest.mark.skipif(malloc._why_not() == 'the C library is not glibc',
                           reason='glibc only')


@glibc
def test_tune_serves_block_sized_allocations_from_the_heap():
    # a fresh process maps a 3 MiB allocation by itself (glibc's threshold
    # starts at 128 KiB); tuned, it comes from the heap
    assert _run({malloc.ENV: 'default'}) == ['False', 'False', 'False']
    assert _run() == ['True', 'True', 'True']


@pytest.mark.parametrize('env', [{'MALLOC_TRIM_THRESHOLD_': '1000000'},
                                 {'MALLOC_MMAP_THRESHOLD_': '200000'},
                                 {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1000000'},
                                 {malloc.ENV: 'default'}])
def test_the_users_own_settings_are_kept(env):
    assert _run(env)[:2] == ['False', 'False']
    why = _run_why(env)
    assert why != 'None'


def _run_why(env):
    e = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k not in ('GLIBC_TUNABLES', malloc.ENV)}
    e.update(env)
    r = subprocess.run([sys.executable, '-c',
                        'from wendelin_cy.lib import malloc; print(malloc._why_not())'],
                       env=e, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@glibc
def test_dbopen_zeo_tunes_malloc(tmp_path):
    from storages import ZEOServer
    srv = ZEOServer(str(tmp_path / 'z.fs')).start()
    try:
        out = _run(before=textwrap.dedent("""
            from wendelin_cy.lib.zodb import dbopen, dbclose
            dbclose(dbopen(%r))
        """ % srv.uri))
    finally:
        srv.stop()
    assert out == ['True', 'True', 'True']


TRIM_CHILD = textwrap.dedent("""
    import sys, threading, transaction
    from wendelin_cy.lib import malloc
    from wendelin_cy.lib.zodb import dbopen, dbclose
    root = dbopen(sys.argv[1])
    malloc.TRIM_INTERVAL = 0        # (the test's boundaries come quicker than 1 s)

    def rss():
        for line in open('/proc/self/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) << 10

    held = threading.Barrier(4)
    pins = []

    def churn():    # what ZEO's records do: block-sized buffers, freed again ...
        bufs = [b'x' * (1 << 20) for _ in range(12)]     # (touched)
        held.wait()
        pins.append(b'p' * 200000)  # ... under what lives on (no trim from the top)
        held.wait()
        del bufs
    base = rss()
    ts = [threading.Thread(target=churn) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    kept = rss()
    transaction.begin()             # a transaction boundary on the ZEO storage
    after = rss()
    print(base, kept, after)
    dbclose(root)
""")


@glibc
def test_zeo_client_gives_free_heap_back_at_transaction_boundaries(tmp_path):
    # tuned thresholds keep up to 16 MiB of free heap per malloc arena, and
    # glibc gives every thread that allocates an arena of its own: 4 threads
    # that churned 12 MiB each kept ~48 MiB resident (the soak's growth).
    # Tuned, they share one arena, and a transaction boundary over ZEO gives
    # its free memory back, also below memory still in use.  RSS from /proc/self/status (VmRSS), in a
    # subprocess.
    from storages import ZEOServer
    srv = ZEOServer(str(tmp_path / 'z.fs')).start()
    try:
        e = {k: v for k, v in os.environ.items()
             if not k.startswith('MALLOC_') and k not in ('GLIBC_TUNABLES', malloc.ENV)}
        r = subprocess.run([sys.executable, '-c', TRIM_CHILD, srv.uri], env=e,
                           capture_output=True, text=True, timeout=120)
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    base, kept, after = (int(x) for x in r.stdout.split())
    MiB = 1 << 20
    assert kept - base > 24 * MiB, ("the churn left nothing resident: glibc did not "
                                    "behave as this test expects", base, kept)
    assert after - base < 8 * MiB, (base, kept, after)
