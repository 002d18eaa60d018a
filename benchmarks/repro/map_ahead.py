# Warm scan of segment blocks (dbopen's default): the cost of each block's
# fault against numpy.memmap's, with mapping ahead on and off.
# usage: [WCY_SRC=.../src] python map_ahead.py [GiB]
#   touches one element per 2 MiB block (the fault/load cost alone, no sum),
#   page cache warm, budget 2G, in a fresh process per setting, 3 rounds;
#   prints us per block and the pager's faults / mapped_ahead counters.
# Reuses the database of seg_scan.py ($TMPDIR/wcy-repro-seg; built if absent).
import json, os, subprocess, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get('WCY_SRC', os.path.join(HERE, '..', '..', 'src'))
D = os.path.join(os.environ.get('TMPDIR', '/tmp'), 'wcy-repro-seg')


def child(setting):
    sys.path.insert(0, SRC)
    import numpy as np
    import wendelin_cy
    from wendelin_cy._pager.virtmem import set_map_ahead
    from wendelin_cy.lib.zodb import dbopen
    wendelin_cy.set_ram_budget('2G')
    if setting == 'memmap':
        a = np.memmap(os.path.join(D, 'raw.f8'), dtype=np.float64, mode='r')
    else:
        set_map_ahead(setting == 'on')
        a = dbopen(os.path.join(D, 'data.fs'))['A'][:]
    per = (2 << 20) // 8
    nb = a.shape[0] // per
    t0 = time.perf_counter()
    for b in range(nb):
        a[b * per]
    dt = time.perf_counter() - t0
    st = wendelin_cy.pager_stats()
    print(json.dumps({'us': dt / nb * 1e6, 'faults': st['faults'],
                      'mapped_ahead': st.get('mapped_ahead')}))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == '--child':
        return child(sys.argv[2])
    if not os.path.exists(os.path.join(D, 'data.fs')):
        subprocess.run([sys.executable, os.path.join(HERE, 'seg_scan.py'), 'warm'] + sys.argv[1:2],
                       check=True, env=dict(os.environ, WCY_SRC=SRC))
    for fn in ('raw.f8',):                   # the page cache warm
        with open(os.path.join(D, fn), 'rb') as f:
            while f.read(64 << 20):
                pass
    for rnd in range(3):
        for s in ('off', 'on', 'memmap'):
            r = subprocess.run([sys.executable, __file__, '--child', s], check=True,
                               capture_output=True, text=True)
            d = json.loads(r.stdout.strip().splitlines()[-1])
            print('round %d  map ahead %-6s %6.1f us/block  faults %d  mapped_ahead %s'
                  % (rnd, s, d['us'], d['faults'], d['mapped_ahead']))


if __name__ == '__main__':
    main()
