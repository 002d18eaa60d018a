"""NEO: the raw NEO client beside wendelin_cy's ingest and cold scan, over
the same cluster, in the same run.

    python -m benchmarks.bench_neo [--mib 128] [--repeat 4] [--txn-mib 32]
                                   [--layouts 2x1,1x0] [--budget-mib 64]

For each layout (``SxR``: S SQLite storage nodes, R replicas; one master and
one admin, all on 127.0.0.1, started here by testing.servers.NEOCluster) and
each repeat, alternately with NEO's compression on (``neo://NAME@HOST:PORT``,
zlib) and off (``?compress=false``), raw client and wendelin_cy taking turns
to go first (the storage nodes' SQLite files grow as the run goes on):

* raw-ingest: --mib of random bytes stored as 2 MiB records (a
  ``PersistentMapping`` holding a 2 MiB bytes each) through a plain ZODB
  connection over NEO's own ``neo.client.Storage``, committed --txn-mib at a
  time (MiB/s);
* raw-load:   a fresh NEO client (a new ``Storage``: empty client cache)
  loads every one of those records with ``storage.load(oid)``, in order
  (MiB/s; the storage nodes' SQLite files are in the OS page cache: "cold"
  is the client's side);
* ingest:     wendelin_cy's ``ZBigArray.append`` of the same bytes, --txn-mib
  at a time, one commit each, through ``dbopen`` (MiB/s);
* scan:       a fresh ``dbopen`` (empty client cache) sums the array through
  ndarray views, 8 MiB at a time, blocks loaded by page faults (MiB/s).

RAM budget --budget-mib (64 MiB).  Printed: every measurement as it is
made, then per layout and compression the median of each column over the
repeats and the medians of the per-repeat ratios ingest / raw-ingest and
scan / raw-load (the same repeat's raw figures).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'src'))

import transaction  # noqa: E402
import ZODB  # noqa: E402
from BTrees.LOBTree import LOBTree  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402

import wendelin_cy  # noqa: E402
from wendelin_cy.bigarray.array_zodb import ZBigArray  # noqa: E402
from wendelin_cy.lib.zodb import dbopen, dbclose  # noqa: E402
from wendelin_cy.testing.servers import NEOCluster, neo_missing  # noqa: E402

MiB = 1 << 20
REC = 2 * MiB


def _raw_db(uri):
    """A ZODB.DB over a plain neo.client.Storage for `uri` (only its close
    made quiet and unthrottled, so that the next client connects at once)."""
    import zodburi
    from wendelin_cy.storage.neo import quiet_close
    factory, dbkw = zodburi.resolve_uri(uri)
    return ZODB.DB(quiet_close(factory()), **dbkw)


def raw_ingest(uri, key, data, txn):
    db = _raw_db(uri)
    try:
        c = db.open()
        root = c.root()
        root[key] = tab = LOBTree()
        transaction.commit()
        mv = memoryview(data)
        n = 0
        t = time.perf_counter()
        for lo in range(0, len(data), txn):
            for off in range(lo, min(lo + txn, len(data)), REC):
                tab[n] = PersistentMapping({'d': mv[off:off + REC].tobytes()})
                n += 1
            transaction.commit()
        dt = time.perf_counter() - t
        c.close()
        return len(data) / MiB / dt
    finally:
        db.close()


def raw_load(uri, key):
    db = _raw_db(uri)
    try:
        c = db.open()
        oids = [r._p_oid for r in c.root()[key].values()]
        st = db.storage
        nbytes = 0
        t = time.perf_counter()
        for oid in oids:
            nbytes += len(st.load(oid)[0])
        dt = time.perf_counter() - t
        c.close()
        return len(oids) * REC / MiB / dt, nbytes
    finally:
        db.close()


def ingest(uri, key, data, txn):
    root = dbopen(uri)
    try:
        root[key] = A = ZBigArray((0,), np.uint8)
        transaction.commit()
        t = time.perf_counter()
        for lo in range(0, len(data), txn):
            A.append(data[lo:lo + txn])
            transaction.commit()
        dt = time.perf_counter() - t
        return len(data) / MiB / dt
    finally:
        transaction.abort()
        dbclose(root)


def scan(uri, key, expect):
    root = dbopen(uri)
    try:
        a = root[key][:]
        n = len(a)
        total = 0
        t = time.perf_counter()
        for lo in range(0, n, 8 * MiB):
            total += int(a[lo:lo + 8 * MiB].sum(dtype=np.uint64))
        dt = time.perf_counter() - t
        del a
        if total != expect:
            raise AssertionError('scan sum %d, expected %d' % (total, expect))
        return n / MiB / dt
    finally:
        transaction.abort()
        dbclose(root)


COLS = ('raw-ingest', 'raw-load', 'ingest', 'scan')


def run_layout(layout, args, data, expect, tmp):
    s, r = (int(x) for x in layout.split('x'))
    d = os.path.join(tmp, layout)
    cl = NEOCluster(d, storages=s, replicas=r, partitions=12, compress=True).start()
    txn = args.txn_mib * MiB
    uris = {'on': cl.uri, 'off': cl.uri + '?compress=false'}
    runs = {c: [] for c in uris}
    try:
        for i in range(args.repeat):
            order = ('on', 'off') if i % 2 == 0 else ('off', 'on')
            for comp in order:
                uri = uris[comp]
                key = 'r%d%s' % (i, comp)
                one = {}

                def raw():
                    one['raw-ingest'] = raw_ingest(uri, 'raw-' + key, data, txn)
                    one['raw-load'], nb = raw_load(uri, 'raw-' + key)
                    assert nb >= len(data), nb

                def ours():
                    one['ingest'] = ingest(uri, 'A-' + key, data, txn)
                    one['scan'] = scan(uri, 'A-' + key, expect)

                # (who goes first alternates: the storage nodes' files grow)
                for step in ((raw, ours) if (i // 2) % 2 == 0 else (ours, raw)):
                    step()
                runs[comp].append(one)
                print('  %s repeat %d compress %-3s ' % (layout, i, comp)
                      + '  '.join('%s %.0f' % (k, one[k]) for k in COLS), flush=True)
        out = {}
        for comp, rs in runs.items():
            med = {k: statistics.median(x[k] for x in rs) for k in COLS}
            med['ingest/raw'] = statistics.median(x['ingest'] / x['raw-ingest'] for x in rs)
            med['scan/raw'] = statistics.median(x['scan'] / x['raw-load'] for x in rs)
            out[comp] = med
            print('%s compress %-3s medians of %d, MiB/s: ' % (layout, comp, len(rs))
                  + '  '.join('%s %.0f' % (k, med[k]) for k in COLS)
                  + '   ratios: ingest/raw-ingest %.2f  scan/raw-load %.2f'
                  % (med['ingest/raw'], med['scan/raw']), flush=True)
        return out
    finally:
        cl.stop()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mib', type=int, default=128)
    ap.add_argument('--repeat', type=int, default=4)
    ap.add_argument('--txn-mib', type=int, default=32)
    ap.add_argument('--budget-mib', type=int, default=64)
    ap.add_argument('--layouts', default='2x1,1x0')
    args = ap.parse_args()
    why = neo_missing()
    if why:
        raise SystemExit('NEO: ' + why)
    wendelin_cy.set_ram_budget(args.budget_mib * MiB)
    data = np.random.default_rng(0).integers(0, 256, args.mib * MiB, dtype=np.uint8)
    expect = int(data.sum(dtype=np.uint64))
    print('%d MiB of random bytes in 2 MiB records, %d MiB per commit, RAM budget '
          '%d MiB, %d repeats' % (args.mib, args.txn_mib, args.budget_mib, args.repeat),
          flush=True)
    tmp = tempfile.mkdtemp(prefix='wcy-bench-neo-')
    try:
        for layout in args.layouts.split(','):
            run_layout(layout, args, data, expect, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
