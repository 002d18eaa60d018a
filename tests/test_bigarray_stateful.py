"""BigArray vs a numpy model: random operation sequences under a tiny budget.

The machine (wendelin_cy.testing.bigarray_stateful) runs getitem/setitem
(basic and advanced), writes through views taken earlier, append, resize,
view(dtype), tofile, writeout and discard against a model of the file bytes.

The smallest budget the pager accepts is 1 MiB: that is 4 blocks of 256 KiB,
and the machine's arrays reach 9 blocks, so blocks are loaded, reclaimed and
spilled all the time.  Each run happens in a child process: a pager bug shows
as a hang (livelock) or a SIGBUS, and the child's timeout or exit status turns
either into a test failure instead of a stuck or killed test session.
"""
import os

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import wendelin_cy
from wendelin_cy.bigarray import BigArray
from wendelin_cy.bigfile.file_file import BigFile_File
from wendelin_cy.testing.bigarray_stateful import BigArrayMachine
from wendelin_cy.testing.isolate import isolated
from wendelin_cy.testing.strategies import ram_budget

BLKSIZE = 256 * 1024
BUDGET = 1 << 20

# WCY_HYPOTHESIS_EXAMPLES=1000 for a long run (children inherit it)
NEXAMPLES = int(os.environ.get('WCY_HYPOTHESIS_EXAMPLES', '100'))
# a guard against hangs only: generous, so that a loaded machine is no failure
CHILD_TIMEOUT = 600 + 6 * NEXAMPLES
SETTINGS = settings(max_examples=NEXAMPLES, stateful_step_count=30, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class RAMMachine(BigArrayMachine):
    blksize = BLKSIZE


class FileMachine(BigArrayMachine):
    blksize = BLKSIZE
    tmpdir = None
    n = 0

    def make_array(self, shape, dtype, order):
        FileMachine.n += 1
        self.bigfile = BigFile_File(os.path.join(self.tmpdir, 'a%d' % FileMachine.n),
                                    self.blksize)
        fileh = self.bigfile.fileh_open()
        return BigArray(shape, dtype, fileh, order), fileh

    def close(self):
        self.A = self.fileh = None
        self.bigfile.close()


class RAMMachine64K(BigArrayMachine):
    # 16 blocks in the budget, arrays up to 48: a longer CLOCK ring
    blksize = 64 * 1024
    max_nbytes = 3 << 20


@isolated(timeout=CHILD_TIMEOUT)
def test_bigarray_vs_numpy_ram():
    before = wendelin_cy.pager_stats()
    with ram_budget(BUDGET):
        run_state_machine_as_test(RAMMachine, settings=SETTINGS)
        run_state_machine_as_test(RAMMachine64K, settings=SETTINGS)
    after = wendelin_cy.pager_stats()
    # the budget really was exceeded: the run exercised reclaim and spill
    assert after['evictions'] > before['evictions']
    assert after['spills'] > before['spills']


@isolated(timeout=CHILD_TIMEOUT)
def test_bigarray_vs_numpy_file(tmp_path):
    FileMachine.tmpdir = str(tmp_path)
    with ram_budget(BUDGET):
        run_state_machine_as_test(FileMachine,
                                  settings=settings(SETTINGS, max_examples=NEXAMPLES // 4 + 10))


def test_bigarray_vs_numpy_roomy_budget():
    # the same operations with a budget that holds everything: separates
    # BigArray's own bugs from reclaim/spill bugs of the pager
    with ram_budget(256 << 20):
        run_state_machine_as_test(RAMMachine, settings=SETTINGS)
