"""Many processes, one consistent view.

One writer process appends to and modifies a ZBigArray in a loop of
transactions.  With each change it stores, in the same transaction, a record
(seq, shape, sha1 of the data) of the state it commits, and after the commit
it appends that record to a side file.  Reader processes, at each of their
transaction boundaries, check that

* their snapshot (A[:] data and shape) is exactly the state the record of
  that same snapshot describes - a state the writer committed;
* inside one transaction the snapshot does not change, however many commits
  the writer makes meanwhile;
* at the boundary only the blocks that changed are loaded again (pager
  'loads' delta == number of blocks whose content differs from the previous
  snapshot; the RAM budget holds the whole array, so nothing is evicted).

At the end every record a reader saw must be in the writer's side file.
Run over each storage several processes can open at once (ZEO over a
FileStorage, RelStorage on SQLite and on PostgreSQL).
"""

import json
import os
import subprocess
import sys

from storages import net_storage, pg_cluster, env_with_src  # noqa: F401

NREADERS = 3
NTXN = 30
BS = 64 * 1024

WRITER = r'''
import hashlib, json, sys, time
import numpy as np, transaction
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose

uri, side, ntxn, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
root = dbopen(uri)
A = root['A']
rng = np.random.RandomState(0)
ITEMS = bs // 8

def record(seq):
    a = A[:]
    r = (seq, list(A.shape), hashlib.sha1(a.tobytes()).hexdigest())
    del a
    return r

with open(side, 'a') as f:
    for seq in range(1, ntxn + 1):
        n = len(A)
        if seq % 3 == 0 or n == 0:
            A.append(np.full(int(rng.randint(1, 2 * ITEMS)), seq, np.int64))
        else:
            lo = int(rng.randint(0, n))
            hi = min(n, lo + int(rng.randint(1, ITEMS)))
            A[lo:hi] = seq * 1000 + np.arange(hi - lo)
        rec = record(seq)
        root['state'] = rec
        transaction.commit()
        f.write(json.dumps(rec) + '\n')
        f.flush()
        time.sleep(0.02)
root['done'] = True
transaction.commit()
dbclose(root)
'''

READER = r'''
import hashlib, json, sys, time
import numpy as np, transaction
import wendelin_cy
from wendelin_cy.lib.zodb import dbopen, dbclose

uri, bs = sys.argv[1], int(sys.argv[2])
root = dbopen(uri)
A = root['A']
prev = {}           # blk -> sha1 of the block in the previous snapshot
seen = []
boundaries = 0
partial = 0
deadline = time.time() + 120
while time.time() < deadline:
    transaction.begin()
    boundaries += 1
    state = root.get('state')
    done = root.get('done', False)
    loads0 = wendelin_cy.pager_stats()['loads']
    a = A[:]
    raw = a.view(np.uint8)
    shape = list(A.shape)
    sha = hashlib.sha1(raw.tobytes()).hexdigest()
    loads = wendelin_cy.pager_stats()['loads'] - loads0
    nblk = -(-len(raw) // bs)
    cur = {b: hashlib.sha1(raw[b * bs:(b + 1) * bs].tobytes()).hexdigest()
           for b in range(nblk)}
    changed = sum(1 for b in cur if prev.get(b) != cur[b])
    if state is not None:
        if [state[1], state[2]] != [shape, sha]:
            print(json.dumps({'error': 'snapshot %r is not the state recorded '
                              'with it %r' % ((shape, sha), state)}))
            sys.exit(1)
        seen.append(state)
    if prev and loads != changed:
        print(json.dumps({'error': 'boundary reloaded %d blocks, %d changed'
                          % (loads, changed)}))
        sys.exit(1)
    if prev and 0 < loads < nblk:
        partial += 1            # some blocks reloaded, not all
    prev = cur
    # inside the transaction: no commit of the writer shows up
    time.sleep(0.03)
    again = hashlib.sha1(A[:].view(np.uint8).tobytes()).hexdigest()
    if again != sha or list(A.shape) != shape or root.get('state') != state:
        print(json.dumps({'error': 'snapshot changed inside a transaction'}))
        sys.exit(1)
    del a, raw
    transaction.abort()
    if done:
        break
print(json.dumps({'seen': seen, 'boundaries': boundaries, 'partial': partial}))
dbclose(root)
'''


def _py(code, *args):
    return subprocess.Popen([sys.executable, '-c', code] + [str(a) for a in args],
                            env=env_with_src(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_one_writer_many_readers(net_storage, tmp_path):
    uri = net_storage.uri
    p = _py('''
import numpy as np, transaction, sys
from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.zodb import dbopen, dbclose
root = dbopen(sys.argv[1])
root['A'] = ZBigArray((0,), np.int64, blksize=int(sys.argv[2]))
transaction.commit()
dbclose(root)
''', uri, BS)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err

    side = str(tmp_path / 'committed.jsonl')
    readers = [_py(READER, uri, BS) for _ in range(NREADERS)]
    writer = _py(WRITER, uri, side, NTXN, BS)
    try:
        wout, werr = writer.communicate(timeout=180)
        assert writer.returncode == 0, werr
        results = []
        for r in readers:
            out, err = r.communicate(timeout=180)
            last = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            assert r.returncode == 0 and 'error' not in last, (out, err)
            results.append(last)
    finally:
        for q in readers + [writer]:
            if q.poll() is None:
                q.kill()
                q.wait()
    with open(side) as f:
        committed = {json.dumps(json.loads(line)) for line in f}
    assert len(committed) == NTXN
    states = set()
    for res in results:
        for s in res['seen']:
            assert json.dumps(s) in committed, s
            states.add(s[0])
    assert sum(r['partial'] for r in results) > 0
    # the readers did follow the writer (not just the first and last state)
    assert len(states) >= 3, states
    assert NTXN in states           # everyone reached the final state
