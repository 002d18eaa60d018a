"""A commit over ZEO does not pile its block records up in the client: the
peak RSS of a process committing 4x its RAM budget in one transaction stays
within budget + 128 MiB (issue 18; storage/zeo.py "Backpressure on stores")."""

import json
import logging
import subprocess
import sys

import pytest

from wendelin_cy.storage import zeo
from wendelin_cy.storage.switch import _fallen
from wendelin_cy.testing.servers import env_with_src

from storages import zeo_server  # noqa: F401  (fixture)

MiB = 1 << 20

CHILD = r'''
import json, sys
import numpy as np, transaction, wendelin_cy
from wendelin_cy.lib.zodb import dbopen, dbclose
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.storage import zeo
budget, total, piece = %(budget)d, %(total)d, 16 << 20
wendelin_cy.set_ram_budget(budget)
root = dbopen(%(uri)r)
root['A'] = A = ZBigArray((0,), np.float64)
transaction.commit()
n = piece // 8
for i in range(total // piece):
    A.append(np.arange(i * n, (i + 1) * n, dtype=np.float64))
transaction.commit()                    # all of it in one transaction
hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
m = total // 8
ok = float(np.sum(A[:])) == float(m) * (m - 1) / 2 and A.shape == (m,)
dbclose(root)
print(json.dumps({'vmhwm': hwm * 1024, 'pings': zeo.round_trips, 'ok': ok}))
'''


def test_commit_4x_budget_over_zeo_stays_in_budget(zeo_server):  # noqa: F811
    budget = 64 * MiB
    total = 4 * budget
    code = CHILD % {'budget': budget, 'total': total, 'uri': zeo_server.uri}
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       env=env_with_src(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['ok']
    # one round trip per window of records, at least
    assert res['pings'] >= total // zeo.store_window(budget) - 1
    assert res['vmhwm'] <= budget + 128 * MiB, (res['vmhwm'] / MiB, budget / MiB)


def test_store_window_follows_budget():
    assert zeo.store_window(16 * MiB) == 8 * MiB
    assert zeo.store_window(256 * MiB) == 16 * MiB
    assert zeo.store_window(64 << 30) == 32 * MiB
    assert all(zeo.store_window(b) <= zeo.store_window(b + MiB) for b in range(0, 1 << 30, 7 * MiB))


class _Local:
    """Not ZEO: never pinged."""
    def ping(self):
        raise AssertionError('pinged a storage that is not ZEO')


def test_backpressure_only_for_zeo():
    st = _Local()
    for _ in range(100):
        zeo.backpressure(st, 32 * MiB, 16 * MiB)


def test_backpressure_pings_every_window_and_warns_once_without_ping(caplog):
    pings = []
    Fake = type('ClientStorage', (), {'__module__': 'ZEO.ClientStorage',
                                       'prefetch': lambda self, *a: None})
    st = Fake()
    st.ping = lambda: pings.append(1)
    w = zeo.store_window(0)
    for _ in range(10 * w // MiB):
        zeo.backpressure(st, MiB, 0)
    assert 8 <= len(pings) <= 10
    st2 = Fake()
    _fallen.pop('ZEO store backpressure', None)
    try:
        with caplog.at_level(logging.WARNING, logger='wendelin_cy.storage'):
            for _ in range(4 * w // MiB):
                zeo.backpressure(st2, MiB, 0)
        fell = [r for r in caplog.records if 'ZEO store backpressure' in r.getMessage()]
        assert len(fell) == 1, [r.getMessage() for r in caplog.records]
    finally:
        _fallen.pop('ZEO store backpressure', None)


@pytest.mark.parametrize('nbytes', [-1, 'x'])
def test_backpressure_bad_size_is_a_clear_error(nbytes):
    Fake = type('ClientStorage', (), {'__module__': 'ZEO.ClientStorage',
                                       'prefetch': lambda self, *a: None, 'ping': lambda self: 0})
    with pytest.raises((TypeError, ValueError)):
        zeo.backpressure(Fake(), nbytes, 0)
