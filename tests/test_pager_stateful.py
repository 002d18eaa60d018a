"""Random sequences of pager operations against a numpy model (hypothesis).

The budget holds only a few blocks, so every step reclaims, demotes, spills or
reloads something.
"""
import os

import numpy as np
import pytest
from hypothesis import settings, HealthCheck, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, invariant, precondition, initialize

import wendelin_cy
from wendelin_cy.bigfile.file_ram import BigFile_RAM
from wendelin_cy.bigfile.file_file import BigFile_File

BS = 256 * 1024
NBLK = 24
SIZE = BS * NBLK


class PagerMachine(RuleBasedStateMachine):
    backend = "ram"

    def __init__(self):
        super().__init__()
        self.old_budget = wendelin_cy.get_ram_budget()
        wendelin_cy.set_ram_budget(4 * BS)
        if self.backend == "ram":
            self.f = BigFile_RAM(BS)
        else:
            import tempfile
            self.tmp = tempfile.NamedTemporaryFile()
            self.f = BigFile_File(self.tmp.name, BS)
        self.fh = self.f.fileh_open()
        self.stored = np.zeros(SIZE, np.uint8)   # what the BigFile holds
        self.mem = np.zeros(SIZE, np.uint8)      # what views must show
        self.dirty = set()
        self.views = []                          # (pgoffset, ndarray)

    def teardown(self):
        self.views = []
        self.fh.dirty_discard()
        wendelin_cy.set_ram_budget(self.old_budget)

    @initialize()
    def first_view(self):
        self._map(0, NBLK)

    def _map(self, pgoffset, pglen):
        v = self.fh.mmap(pgoffset, pglen)
        self.views.append((pgoffset, np.ndarray((pglen * BS,), np.uint8, buffer=v)))

    @rule(pgoffset=st.integers(0, NBLK - 1), data=st.data())
    def map(self, pgoffset, data):
        pglen = data.draw(st.integers(1, NBLK - pgoffset))
        self._map(pgoffset, pglen)
        if len(self.views) > 6:
            self.views.pop(1)

    def _pick(self, data):
        pgoffset, a = data.draw(st.sampled_from(self.views))
        lo = data.draw(st.integers(0, len(a) - 1))
        hi = data.draw(st.integers(lo + 1, min(len(a), lo + 3 * BS)))
        return pgoffset * BS, a, lo, hi

    @rule(data=st.data())
    def read(self, data):
        base, a, lo, hi = self._pick(data)
        assert np.array_equal(a[lo:hi], self.mem[base + lo:base + hi])

    @rule(data=st.data(), value=st.integers(0, 255))
    def write(self, data, value):
        base, a, lo, hi = self._pick(data)
        a[lo:hi] = value
        self.mem[base + lo:base + hi] = value
        self.dirty |= set(range((base + lo) // BS, (base + hi - 1) // BS + 1))

    @rule(data=st.data())
    def sparse_write(self, data):     # one byte in each of several blocks
        blks = data.draw(st.sets(st.integers(0, NBLK - 1), min_size=1, max_size=NBLK))
        a = self.views[0][1]
        for b in blks:
            a[b * BS + 17] ^= 0xFF
            self.mem[b * BS + 17] ^= 0xFF
        self.dirty |= blks

    @rule()
    def writeout(self):
        self.fh.dirty_writeout()
        self.stored[:] = self.mem
        self.dirty.clear()

    @rule()
    def discard(self):
        self.fh.dirty_discard()
        for b in self.dirty:
            self.mem[b * BS:(b + 1) * BS] = self.stored[b * BS:(b + 1) * BS]
        self.dirty.clear()

    @rule(blk=st.integers(0, NBLK - 1), value=st.integers(0, 255))
    def external_change_and_invalidate(self, blk, value):
        if blk in self.dirty:
            with pytest.raises(RuntimeError):
                self.fh.invalidate_page(blk)
            return
        self.f.storeblk(blk, memoryview(bytes([value]) * BS))
        self.fh.invalidate_page(blk)
        self.stored[blk * BS:(blk + 1) * BS] = value
        self.mem[blk * BS:(blk + 1) * BS] = value

    @rule(nblocks=st.integers(4, 12))
    def change_budget(self, nblocks):
        wendelin_cy.set_ram_budget(nblocks * BS)

    @rule(data=st.data())
    def prefault(self, data):
        pgoffset, a = data.draw(st.sampled_from(self.views))
        v = a.base
        lo = data.draw(st.integers(0, len(a) - 1))
        v.prefault(lo, min(BS, len(a) - lo))

    @invariant()
    def dirty_matches(self):
        assert set(self.fh.dirty_blocks()) == self.dirty

    @invariant()
    def within_budget(self):
        s = wendelin_cy.pager_stats()
        assert s["resident"] + s["pool"] <= s["budget"]


PagerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("WCY_HYPOTHESIS_EXAMPLES", 40)), stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestPagerRAM = PagerMachine.TestCase


class PagerFileMachine(PagerMachine):
    backend = "file"


PagerFileMachine.TestCase.settings = PagerMachine.TestCase.settings
TestPagerFile = PagerFileMachine.TestCase
