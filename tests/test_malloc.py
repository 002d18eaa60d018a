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
