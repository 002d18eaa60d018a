"""What sending views by reference costs unrelated ndarrays: pickling a plain
1 MiB array and 10,000 tiny arrays, before and after wendelin_cy is imported,
with ``pickle.dumps`` and with joblib's own pickler and array reducers (what
its loky workers receive), same run.

    python -m benchmarks.bench_pickle [--repeat 7] [--number 20]

"before": a process with numpy and joblib only; "after": a process that also
imported ``wendelin_cy.bigarray.array_zodb`` (which hooks joblib's array
reducer, ``bigarray._joblib``).  The two alternate, each in its own fresh
subprocess; per case the median over --repeat processes of the best of
--number calls, in microseconds, and the ratio after / before (1.00: no cost).
Plain ``pickle`` is not touched by wendelin_cy at all: its ratios show the
noise of this machine.

asv: ``PickleUnrelated`` times the "after" cases in the benchmark process.
"""

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')

CASES = ('pickle 1 MiB', 'pickle 10000 tiny', 'joblib 1 MiB', 'joblib 10000 tiny')

_CHILD = r'''
import sys, timeit, json
import numpy as np
if sys.argv[1] == 'after':
    import wendelin_cy.bigarray.array_zodb  # noqa: F401
import pickle
from joblib._memmapping_reducer import get_memmapping_reducers
from joblib.externals.loky.backend.reduction import dumps
import tempfile
tmp = tempfile.mkdtemp()
fwd, _ = get_memmapping_reducers(temp_folder_resolver=lambda: tmp, max_nbytes=None)
if sys.argv[1] == 'after':
    from wendelin_cy.bigarray import _joblib
    assert _joblib.installed()
big = np.random.default_rng(0).random(1 << 17)            # 1 MiB
tiny = [np.arange(3, dtype=np.float64) + i for i in range(10000)]
n = int(sys.argv[2])
f = {
    'pickle 1 MiB': lambda: pickle.dumps(big, protocol=5),
    'pickle 10000 tiny': lambda: pickle.dumps(tiny, protocol=5),
    'joblib 1 MiB': lambda: dumps(big, reducers=fwd),
    'joblib 10000 tiny': lambda: dumps(tiny, reducers=fwd),
}
print(json.dumps({k: min(timeit.repeat(g, number=1, repeat=n)) * 1e6
                  for k, g in f.items()}))
'''


def _child(mode, number):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + os.pathsep + env.get('PYTHONPATH', '')
    out = subprocess.run([sys.executable, '-c', _CHILD, mode, str(number)],
                         env=env, capture_output=True, text=True, check=True)
    import json
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=7)
    ap.add_argument('--number', type=int, default=20)
    args = ap.parse_args()
    runs = {'before': [], 'after': []}
    for i in range(args.repeat):
        for mode in (('before', 'after') if i % 2 == 0 else ('after', 'before')):
            runs[mode].append(_child(mode, args.number))
    print('%-18s %12s %12s %7s' % ('case', 'before us', 'after us', 'ratio'))
    for c in CASES:
        b = statistics.median(r[c] for r in runs['before'])
        a = statistics.median(r[c] for r in runs['after'])
        print('%-18s %12.1f %12.1f %7.2f' % (c, b, a, a / b))


class PickleUnrelated:
    """asv: plain ndarrays through pickle and joblib's reducers, hook on."""

    def setup(self):
        import numpy as np
        import tempfile
        import wendelin_cy.bigarray.array_zodb  # noqa: F401
        from joblib._memmapping_reducer import get_memmapping_reducers
        self.tmp = tempfile.mkdtemp()
        self.fwd, _ = get_memmapping_reducers(
            temp_folder_resolver=lambda: self.tmp, max_nbytes=None)
        self.big = np.random.default_rng(0).random(1 << 17)
        self.tiny = [np.arange(3, dtype=np.float64) + i for i in range(10000)]

    def time_pickle_tiny(self):
        import pickle
        pickle.dumps(self.tiny, protocol=5)

    def time_joblib_tiny(self):
        from joblib.externals.loky.backend.reduction import dumps
        dumps(self.tiny, reducers=self.fwd)

    def time_joblib_1mib(self):
        from joblib.externals.loky.backend.reduction import dumps
        dumps(self.big, reducers=self.fwd)


if __name__ == '__main__':
    sys.exit(main())

