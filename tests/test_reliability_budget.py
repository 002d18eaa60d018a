"""Reliability (issue 7): the RAM budget holds for every public operation,
including ones whose arguments are small but whose array is big.

Each case runs in a fresh child process, which reports the larger of the
growth of its peak RSS (ru_maxrss) and the peak of the memory Python and
numpy allocated meanwhile (tracemalloc: temporary arrays).
"""
import os
import subprocess
import sys
import textwrap

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')

_CODE = """
import resource, tracemalloc, numpy as np, transaction, wendelin_cy
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen
wendelin_cy.set_ram_budget(8 << 20)
root = dbopen('memory://')
n = 1 << 25                                  # 32 MiB of uint8
root['A'] = A = ZBigArray((n,), np.uint8)
A[n - 1] = 7
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
%s
peak = tracemalloc.get_traced_memory()[1] >> 20
rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) >> 10
print('grew', max(peak, rss))
"""


def _growth_mib(stmt):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    r = subprocess.run([sys.executable, '-c', _CODE % textwrap.dedent(stmt)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return int(r.stdout.split('grew')[-1])


def test_strided_read_of_a_big_array_stays_in_budget():
    assert _growth_mib("assert A[::1 << 20].sum() == 0") < 24


def test_sparse_fancy_read_of_a_big_array_stays_in_budget():
    assert _growth_mib("assert A[[0, n - 1]].tolist() == [0, 7]") < 24
