"""Reliability (issue 7, item 1): a writer killed with SIGKILL at a random
moment, in the middle of a commit or not, leaves the database holding exactly
its last committed state, or the state that was being committed.

A writer process changes two ZBigArrays (64 KiB blocks, 1 MiB RAM budget, so
commits spill and reload blocks) of a FileStorage in a loop of transactions
and records the digest of each state before and after commit() (see
wendelin_cy.testing.crash).  The test kills it, opens the database and
compares.  The next trial goes on with the same database, so recovery from a
torn transaction is followed by more commits.

50 trials by default; WCY_SLOW=1 runs 1000.
"""
import os
import random
import time

import pytest
import transaction

from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.testing.crash import Zygote, acceptable, digest, read_records

SLOW = os.environ.get('WCY_SLOW') == '1'
TRIALS = 1000 if SLOW else 50
FRESH_DB_EVERY = 10         # keeps the FileStorage small


def _wait_started(recpath, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(k == 'S' for k, _, _ in read_records(recpath)):
            return
        time.sleep(0.002)
    raise AssertionError('writer did not start in %d s' % timeout)


def _wait_in_commit(recpath, k, timeout=30):
    """Wait until the writer has announced its k-th commit (P line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for kind, _, _ in read_records(recpath) if kind == 'P') >= k:
            return
        time.sleep(0.001)


def test_sigkill_during_commits_loses_nothing(tmp_path):
    z = Zygote()
    rnd = random.Random(int.from_bytes(os.urandom(4), 'little'))
    stats = {'last_committed': 0, 'in_flight_landed': 0, 'commits': 0,
             'torn_tail_dropped': 0}
    try:
        previous = None
        for trial in range(TRIALS):
            if trial % FRESH_DB_EVERY == 0:
                dbdir = tmp_path / ('db%d' % trial)
                dbdir.mkdir()
                dbpath = str(dbdir / 'data.fs')
                previous = None
            recpath = str(tmp_path / ('rec%d' % trial))
            pid = z.run_writer(dbpath, recpath, rnd.getrandbits(32))
            u = rnd.random()
            if u < 0.5:             # aim at a commit: just after its P line
                _wait_started(recpath)
                _wait_in_commit(recpath, rnd.randint(1, 4))
                time.sleep(rnd.uniform(0, 0.01))
            elif u < 0.9:           # anywhere
                _wait_started(recpath)
                time.sleep(rnd.uniform(0, 0.15))
            # else: kill while the writer is still opening the database
            status = z.kill_and_wait(pid)
            recs = read_records(recpath)
            assert status == -9, (status, recs[-3:])
            ok = acceptable(recs, previous)

            size = os.path.getsize(dbpath) if os.path.exists(dbpath) else 0
            root = dbopen(dbpath)
            if os.path.getsize(dbpath) < size:
                stats['torn_tail_dropped'] += 1     # killed while writing it
            try:
                got = digest(root) if 'A' in root else None
                n = root.get('n')
                transaction.abort()
            finally:
                dbclose(root)
            assert got in ok, (
                'trial %d: the database holds state n=%s (%s), not the last '
                'committed one nor the one in flight; records: %s'
                % (trial, n, got, recs[-4:]))
            last = [d for k, _, d in recs if k in 'SC']
            if last and got != last[-1]:
                stats['in_flight_landed'] += 1
            else:
                stats['last_committed'] += 1
            stats['commits'] += sum(1 for k, _, _ in recs if k == 'C')
            previous = got
    finally:
        z.close()
    print('crash trials:', TRIALS, stats)
    assert stats['commits'] > TRIALS          # the writers did get to commit
