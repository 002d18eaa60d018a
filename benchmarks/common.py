"""Helpers shared by the asv suites: importing wendelin_cy, temp files."""
import os
import shutil
import sys
import tempfile

import numpy as np

MiB = 1 << 20
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')

try:
    import wendelin_cy  # noqa: F401
except ImportError:     # source checkout, asv --python=same: use src/ (built in place)
    sys.path.insert(0, _SRC)
    import wendelin_cy  # noqa: F401

# asv runs every benchmark in its own process: one budget per process is fine
from wendelin_cy import set_ram_budget, pager_stats  # noqa: E402,F401
from wendelin_cy.ram import parse_size  # noqa: E402,F401

TMPDIR = os.environ.get('WENDELIN_CY_BENCH_DIR', '/tmp')


def mkdtemp(tag):
    return tempfile.mkdtemp(prefix='wcy-asv-%s-' % tag, dir=TMPDIR)


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)


def write_raw(path, nbytes, seed=0):
    """A raw float64 file of nbytes (deterministic data), in 32 MiB pieces."""
    rng = np.random.default_rng(seed)
    step = 32 * MiB
    with open(path, 'wb') as f:
        for off in range(0, nbytes, step):
            f.write(rng.random(min(step, nbytes - off) // 8).tobytes())


def warm(path):
    """Read the file once: its pages are in the page cache afterwards."""
    with open(path, 'rb', buffering=0) as f:
        buf = bytearray(32 * MiB)
        while f.readinto(buf):
            pass
