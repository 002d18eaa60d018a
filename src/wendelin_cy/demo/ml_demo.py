"""The machine learning demo: train on a data set twice the RAM budget.

Phases (each timed, with its throughput printed):

ingest   a labelled data set - ``K`` Gaussian classes in ``D`` dimensions
         (float64 features in ZBigArray X, int32 labels in ZBigArray y) - is
         generated and appended part by part, one commit per part;
fit      ``SGDClassifier`` is trained with ``wendelin_cy.ml.fit_incremental``
         on the first 90 % of the rows (batches are views, visited in a
         shuffled order with a fixed seed);
predict  ``predict_into`` writes the predicted class of every row into a third
         ZBigArray, committing in parts; accuracy is computed batch by batch
         on the held-out 10 % and compared with the Bayes-optimal classifier
         for this data (nearest class centre: the classes share one isotropic
         covariance), which the demo knows;
joblib   ``joblib.Parallel`` (2 processes) maps ``np.sum`` over the batches of
         X, plain ndarray views ``X[i:j]`` that joblib sends by reference
         (a few hundred bytes: URI, oid, snapshot, geometry): each worker reopens the
         database at the same snapshot and maps the rows it sums; the sums
         must equal the ones computed in this process.

The demo exits with status 1 if the accuracy is more than 0.03 below the
Bayes-optimal one or if a worker's sum differs.
"""

import gc
import os
import pickle
import sys
import tempfile

import numpy as np

import wendelin_cy
from wendelin_cy.demo._monitor import Monitor, close, fmt_bytes, finish, peak_rss, MiB, current_rss

K = 4           # classes
D = 32          # features
SPREAD = 1.0    # std of class centres
NOISE = 1.6     # std of the noise around a centre
SEED = 20240611
KEYS = ('wendelin_cy_demo_X', 'wendelin_cy_demo_y', 'wendelin_cy_demo_pred')


def centres():
    return np.random.default_rng(SEED).normal(0, SPREAD, (K, D))


def generate(part, n, C):
    """Rows of part number `part`: (X[n, D] float64, y[n] int32)."""
    rng = np.random.default_rng([SEED, part])
    y = rng.integers(0, K, n).astype(np.int32)
    X = rng.normal(0, NOISE, (n, D))
    X += C[y]
    return X, y


def _bar(enabled, total, desc, unit='B'):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                unit_divisor=1024 if unit == 'B' else 1000,
                dynamic_ncols=True, disable=not enabled, leave=True)


def _rate(nbytes, seconds):
    return '%s/s' % fmt_bytes(nbytes / seconds if seconds > 0 else float('inf'))


def _worker_sum(b):
    """Runs in a joblib worker: `b` is the batch, unpickled from a reference
    (a read-only view mapped from the database); sum it."""
    from wendelin_cy.demo._monitor import peak_rss as _peak
    from wendelin_cy.ml import _vma_of
    return float(np.sum(b)), _peak(), os.getpid(), _vma_of(b) is not None


def run(size, budget, uri=None, plot_path='wendelin_cy_demo_ml.png', keep=False,
        quiet=False, part=32 * MiB, out=sys.stdout, n_jobs=2):
    import transaction
    from sklearn.linear_model import SGDClassifier
    from wendelin_cy import ml
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbopen, dbclose

    def say(*a):
        print(*a, file=out, flush=True)

    wendelin_cy.set_ram_budget(budget)
    budget = wendelin_cy.get_ram_budget()
    rowbytes = D * 8
    n = max(size // (rowbytes + 4), 1000)
    nbytes = n * (rowbytes + 4)
    ntrain = n * 9 // 10
    tmpdir = None
    if uri is None:
        tmpdir = tempfile.mkdtemp(prefix='wendelin_cy_demo_ml-')
        uri = os.path.join(tmpdir, 'demo.fs')
        where = 'FileStorage %s (temporary%s)' % (uri, ', kept' if keep else '')
    else:
        where = uri
    part = max(2 * MiB, min(part, budget // 4))
    part_rows = max(part // rowbytes, 1)

    say('wendelin_cy ml demo: %d rows x %d float64 features + int32 labels (%s), '
        '%d classes' % (n, D, fmt_bytes(nbytes), K))
    say('  RAM budget %s (data = %.1fx budget), database %s'
        % (fmt_bytes(budget), nbytes / budget, where))

    rss0 = current_rss()
    mon = Monitor().start()
    ok = True
    root = None
    C = centres()
    try:
        root = dbopen(uri)
        root[KEYS[0]] = X = ZBigArray((0, D), np.float64)
        root[KEYS[1]] = y = ZBigArray((0,), np.int32)
        root[KEYS[2]] = P = ZBigArray((n,), np.int32)
        transaction.commit()

        # ~~~ ingest
        # generated in pieces of ~4 MiB appended one by one, committed per part
        piece_rows = max(min(part_rows, (4 * MiB) // rowbytes), 1)
        with mon.phase('ingest') as ph, _bar(not quiet, nbytes, 'ingest') as bar:
            k = p = 0
            while k < n:
                kend = min(k + part_rows, n)
                while k < kend:
                    m = min(piece_rows, kend - k)
                    xb, yb = generate(p, m, C)
                    X.append(xb)
                    y.append(yb)
                    del xb, yb
                    k += m
                    p += 1
                    bar.update(m * (rowbytes + 4))
                transaction.commit()
                gc.collect()    # see wendelin_cy.ml._commit: ZODB leaves cyclic garbage
        ph.note = _rate(nbytes, ph.seconds)
        say('ingest: %s in %.1f s = %s (generate + append + commit per %s)'
            % (fmt_bytes(nbytes), ph.seconds, _rate(nbytes, ph.seconds),
               fmt_bytes(part_rows * (rowbytes + 4))))

        # ~~~ fit on the first 90 %
        Xv, yv = X[:], y[:]
        clf = SGDClassifier(loss='hinge', alpha=1e-4, random_state=0)
        with mon.phase('fit') as ph:
            ml.fit_incremental(clf, Xv[:ntrain], yv[:ntrain], classes=np.arange(K),
                               shuffle=True, seed=0, progress=not quiet)
        fb = ntrain * rowbytes
        ph.note = '%.0f rows/s' % (ntrain / max(ph.seconds, 1e-9))
        say('fit SGDClassifier.partial_fit over %d rows (%s) in %.1f s = %s, '
            '%.0f rows/s' % (ntrain, fmt_bytes(fb), ph.seconds,
                             _rate(fb, ph.seconds), ntrain / max(ph.seconds, 1e-9)))

        # ~~~ predict every row into P, then accuracy on the held-out rows
        with mon.phase('predict_into') as ph:
            ml.predict_into(clf, Xv, P, progress=not quiet)
        ph.note = '%.0f rows/s' % (n / max(ph.seconds, 1e-9))
        say('predict_into: %d rows (%s read) in %.1f s = %s'
            % (n, fmt_bytes(n * rowbytes), ph.seconds, _rate(n * rowbytes, ph.seconds)))
        with mon.phase('accuracy') as ph:
            right = bayes = 0
            cn = (C ** 2).sum(1)
            br = ml.batch_rows_for(Xv.shape, Xv.dtype)
            Pv = P[:]
            for i in range(ntrain, n, br):
                j = min(i + br, n)
                yb = yv[i:j]
                right += int(np.count_nonzero(Pv[i:j] == yb))
                d = Xv[i:j] @ C.T            # nearest centre: argmax x.c - |c|^2/2
                d -= cn / 2
                bayes += int(np.count_nonzero(d.argmax(1) == yb))
                del d
            del Pv
        ntest = n - ntrain
        acc, acc_bayes = right / ntest, bayes / ntest
        say('accuracy on %d held-out rows: %.4f (Bayes-optimal for this data: %.4f)'
            % (ntest, acc, acc_bayes))
        if acc < acc_bayes - 0.03:
            say('FAILED: accuracy is more than 0.03 below the Bayes-optimal one')
            ok = False

        # ~~~ joblib map over batches, by reference
        import joblib
        with mon.phase('in-process sums') as ph:
            batches = list(ml.iter_batches(Xv))     # views: plain ndarrays
            local = [float(np.sum(b)) for b in batches]
        # what joblib sends for each: the reference wendelin_cy.share makes
        size_ref = max(len(pickle.dumps(ml.share(b))) for b in batches)
        wb = max(budget // n_jobs, 16 * MiB)
        old = os.environ.get('WENDELIN_CY_RAM_BUDGET')
        os.environ['WENDELIN_CY_RAM_BUDGET'] = str(wb)     # inherited by workers
        try:
            with mon.phase('joblib map') as ph:
                res = joblib.Parallel(n_jobs=n_jobs, backend='loky')(
                    joblib.delayed(_worker_sum)(b) for b in batches)
        finally:
            if old is None:
                os.environ.pop('WENDELIN_CY_RAM_BUDGET', None)
            else:
                os.environ['WENDELIN_CY_RAM_BUDGET'] = old
        ph.note = _rate(n * rowbytes, ph.seconds)
        sums = [r[0] for r in res]
        wpeak = max(r[1] for r in res)
        nworkers = len({r[2] for r in res})
        mapped = all(r[3] for r in res)
        same = sums == local
        say('joblib.Parallel(n_jobs=%d) np.sum over %d batches X[i:j] sent by '
            'reference (<= %d bytes each, %s): %s in %.1f s = %s; %d workers, '
            'budget %s each, worker peak RSS %s; sums %s the in-process ones'
            % (n_jobs, len(batches), size_ref,
               'mapped in the workers' if mapped else 'COPIED to the workers',
               fmt_bytes(n * rowbytes), ph.seconds,
               _rate(n * rowbytes, ph.seconds), nworkers, fmt_bytes(wb),
               fmt_bytes(wpeak), 'equal' if same else 'DIFFER FROM'))
        if not same:
            ok = False
        st = wendelin_cy.pager_stats()
        del Xv, yv, batches
        if not keep:
            for k in KEYS:
                del root[k]
            transaction.commit()
    finally:
        X = y = P = None
        if root is not None:
            ml.close_shared()
        close(root, dbclose, mon, tmpdir, keep)

    peak = peak_rss()
    say('throughput: ' + ', '.join('%s %s' % (p.name, p.note) for p, _, _ in mon.phases
                                   if p.note))
    return finish(say, mon, st, budget, rss0, peak, plot_path,
                  'wendelin_cy ml demo: %s data set in ZBigArrays, RAM budget %s'
                  % (fmt_bytes(nbytes), fmt_bytes(budget)),
                  '%s (root[%r], ...)' % (uri, KEYS[0]) if keep and tmpdir is not None
                  else None, ok)
