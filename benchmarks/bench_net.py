"""Ingest and scan of a ZBigArray over network storages, beside the storage's
own object-load throughput for the same 2 MiB objects (same run).

    python benchmarks/bench_net.py [--mib 256] [--storages zeo,zeo-rtt,sqlite,postgres,neo]

For each storage (servers started here, on 127.0.0.1):

* ingest: append the array in 32 MiB pieces, one commit each (MiB/s);
* raw-ingest: the same bytes committed as 2 MiB objects straight through
          a connection, 32 MiB per commit (MiB/s);
* raw:    a fresh connection loads every block object straight from its
          storage (``conn._storage.load(oid)``, at the connection's
          snapshot), in order - once without and, for ZEO, once with
          ``conn.prefetch()`` of the next blocks (MiB/s);
* conn:   a fresh connection loads the same block objects as a ZODB user
          would (``_p_activate``: unpickled, kept in the connection's cache
          like the scan's blocks are kept within its budget), for ZEO with
          ``Connection.prefetch`` of the next 4 (MiB/s);
* scan:   a fresh connection sums the array through ndarray views, 8 MiB
          at a time, blocks loaded by page faults (MiB/s).  ``scan``: RAM
          budget 1 GiB, so the pager reads ahead up to 16 blocks (for ZEO:
          ``Connection.prefetch``); ``scan-w4``: budget 32 MiB, readahead
          window 4 blocks (what fits in ZEO's 20 MB client cache);
          ``scan-nora``: readahead off;
* ratio:  scan / the faster of raw and raw+pf of the same repeat (ratio-w4:
          scan-w4 / the same; ratio-conn: scan / conn of the same repeat),
          the median over --repeat repeats; the MiB/s
          columns are each the best of the repeats ("warm": the server's
          files are in the OS page cache after the ingest; the client's
          caches are new for every run).

``neo`` is a NEO cluster (1 master, 2 SQLite storage nodes, replicas 1,
1 admin; NEO's compression on).  ``zeo-rtt`` runs ZEO behind ``DelayProxy`` (--rtt ms per round trip) to show
what latency costs and what prefetch wins back.

Opening ZEO sets glibc's malloc thresholds for the whole process
(``wendelin_cy.lib.malloc``), so every storage after it runs with them, the
storage's own loads as well as the scans; ``WENDELIN_CY_MALLOC=default``
keeps glibc's defaults throughout.
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

import wendelin_cy  # noqa: E402
from wendelin_cy.bigarray.array_zodb import ZBigArray  # noqa: E402
from wendelin_cy._pager import virtmem  # noqa: E402
from wendelin_cy.bigfile import file_zodb  # noqa: E402
from wendelin_cy.lib.zodb import dbstoropen_kw  # noqa: E402
from wendelin_cy.testing.servers import (ZEOServer, PGCluster, DelayProxy,  # noqa: E402
                                         NEOCluster, neo_missing, pg_missing)

MiB = 1 << 20
PIECE = 32 * MiB
PF_WINDOW = 4         # blocks asked ahead by raw+pf (ZEO's cache is 20 MB)


def _db(uri):
    st, kw = dbstoropen_kw(uri)
    return ZODB.DB(st, **kw)


def ingest(uri, nbytes):
    db = _db(uri)
    try:
        c = db.open()
        root = c.root()
        root['A'] = A = ZBigArray((0,), np.uint8)
        transaction.commit()
        piece = np.random.default_rng(0).integers(0, 256, PIECE, dtype=np.uint8)
        t = time.perf_counter()
        for _ in range(nbytes // PIECE):
            A.append(piece)
            transaction.commit()
        dt = time.perf_counter() - t
        file_zodb._close_handles_of(c)
        c.close()
        return nbytes / MiB / dt
    finally:
        db.close()


def raw_ingest(uri, nbytes):
    """The same bytes as 2 MiB ZBlk0 objects committed 32 MiB at a time,
    straight through a connection (no pager)."""
    from wendelin_cy.bigfile.file_zodb import ZBlk0
    from BTrees.LOBTree import LOBTree
    db = _db(uri)
    try:
        c = db.open()
        root = c.root()
        root['raw'] = tab = LOBTree()
        transaction.commit()
        piece = np.random.default_rng(0).integers(0, 256, PIECE, dtype=np.uint8)
        blk = 2 * MiB
        n = 0
        t = time.perf_counter()
        for _ in range(nbytes // PIECE):
            for off in range(0, PIECE, blk):
                tab[n] = ZBlk0(piece[off:off + blk].tobytes())
                n += 1
            transaction.commit()
        dt = time.perf_counter() - t
        c.close()
        return nbytes / MiB / dt
    finally:
        db.close()


def _timed_loads(c, oids, window, load):
    """Call load(i) for each block i in order, with ``Connection.prefetch`` of
    the next `window` blocks (topped up when half of them are left; 0: none);
    returns (bytes load returned in all, seconds)."""
    nbytes = 0
    t = time.perf_counter()
    ahead = -1
    for i in range(len(oids)):
        if window and ahead - i < (window + 1) // 2:
            lo, hi = max(ahead + 1, i + 1), min(len(oids) - 1, i + window)
            if lo <= hi:
                c.prefetch(oids[lo:hi + 1])
            ahead = hi
        nbytes += load(i)
    return nbytes, time.perf_counter() - t


def raw_load(uri, window):
    db = _db(uri)
    try:
        c = db.open()
        A = c.root()['A']
        oids = [z._p_oid for z in A.zfile.blktab.values()]
        st = c._storage
        nbytes, dt = _timed_loads(c, oids, window, lambda i: len(st.load(oids[i])[0]))
        c.close()
        return nbytes / MiB / dt
    finally:
        db.close()


def conn_load(uri, window):
    """The block objects loaded through a connection, as a ZODB user would
    (``_p_activate``: the record unpickled into the object, which stays in
    the connection's cache), with ``Connection.prefetch`` of the next
    `window` blocks where it helps (ZEO)."""
    db = _db(uri)
    try:
        c = db.open()
        A = c.root()['A']
        zs = list(A.zfile.blktab.values())

        def load(i):
            zs[i]._p_activate()
            return len(zs[i]._data)
        nbytes, dt = _timed_loads(c, [z._p_oid for z in zs], window, load)
        del zs
        c.close()
        return nbytes / MiB / dt
    finally:
        db.close()


def scan(uri, readahead, budget):
    wendelin_cy.set_ram_budget(budget)
    virtmem.set_readahead(readahead)
    db = _db(uri)
    try:
        c = db.open()
        A = c.root()['A']
        a = A[:]
        n = len(a)
        total = 0
        t = time.perf_counter()
        for lo in range(0, n, 8 * MiB):
            total += int(a[lo:lo + 8 * MiB].view(np.uint64).sum(dtype=np.uint64))
        dt = time.perf_counter() - t
        del a
        file_zodb._close_handles_of(c)
        c.close()
        return n / MiB / dt
    finally:
        virtmem.set_readahead(True)
        db.close()


def run(kind, mib, repeat, rtt, tmp):
    nbytes = mib * MiB
    cleanup = []
    try:
        if kind in ('zeo', 'zeo-rtt'):
            srv = ZEOServer(os.path.join(tmp, kind + '.fs')).start()
            cleanup.append(srv.stop)
            uri = srv.uri
            if kind == 'zeo-rtt':
                px = DelayProxy(srv.port, rtt / 2000.0).start()
                cleanup.append(px.stop)
                uri = 'zeo://127.0.0.1:%d' % px.port
        elif kind == 'sqlite':
            d = os.path.join(tmp, 'sqlite')
            os.mkdir(d)
            uri = 'sqlite://?data_dir=' + d
        elif kind == 'postgres':
            why = pg_missing()
            if why:
                print('%-9s skipped: %s' % (kind, why))
                return None
            pg = PGCluster().start()
            cleanup.append(pg.stop)
            uri = pg.new_database()
        elif kind == 'neo':
            why = neo_missing()
            if why:
                print('%-9s skipped: %s' % (kind, why))
                return None
            # 2 SQLite storage nodes, replicas 1, NEO's compression on (its
            # default; benchmarks/bench_neo.py compares with it off)
            cl = NEOCluster(os.path.join(tmp, 'neo'), storages=2, replicas=1,
                            partitions=12, compress=True).start()
            cleanup.append(cl.stop)
            uri = cl.uri
        else:
            raise SystemExit('unknown storage %r' % kind)
        zeo = kind.startswith('zeo')
        r = {'ingest': ingest(uri, nbytes), 'raw-ingest': raw_ingest(uri, nbytes)}
        variants = [('raw', lambda: raw_load(uri, 0)),
                    ('scan', lambda: scan(uri, True, 1 << 30)),
                    ('scan-w4', lambda: scan(uri, True, 16 * 2 * MiB)),
                    ('scan-nora', lambda: scan(uri, False, 1 << 30))]
        variants += [('conn', lambda: conn_load(uri, PF_WINDOW if zeo else 0))]
        if zeo:
            variants += [('raw+pf', lambda: raw_load(uri, PF_WINDOW))]
        runs = []
        for _ in range(repeat):
            one = {name: f() for name, f in variants}
            runs.append(one)
            for name, v in one.items():
                r[name] = max(r.get(name, 0), v)
        # each repeat's scans against the same repeat's best raw load; median
        own = [max(x['raw'], x.get('raw+pf', 0)) for x in runs]
        r['ratio'] = statistics.median(x['scan'] / o for x, o in zip(runs, own))
        r['ratio-w4'] = statistics.median(x['scan-w4'] / o for x, o in zip(runs, own))
        r['ratio-conn'] = statistics.median(x['scan'] / x['conn'] for x in runs)
        print('%-9s ' % kind + '  '.join(
            '%s %s' % (k, ('%.2f' % v) if k.startswith('ratio') else '%.0f MiB/s' % v)
            for k, v in r.items()), flush=True)
        return r
    finally:
        for f in reversed(cleanup):
            f()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mib', type=int, default=256)
    ap.add_argument('--repeat', type=int, default=2)
    ap.add_argument('--rtt', type=float, default=2.0, help='ms, for zeo-rtt')
    ap.add_argument('--storages', default='zeo,zeo-rtt,sqlite,postgres,neo')
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix='wcy-bench-net-')
    try:
        from wendelin_cy.lib import malloc
        print('array %d MiB in 2 MiB blocks; best of %d; zeo-rtt: %.1f ms round trip; '
              'malloc: %s' % (args.mib, args.repeat, args.rtt,
                              malloc._why_not() or 'tuned when ZEO opens'))
        for kind in args.storages.split(','):
            run(kind, args.mib, args.repeat, args.rtt, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
