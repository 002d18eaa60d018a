"""The signal demo: ingest a signal twice the RAM budget into a ZBigArray,
then compute over it with plain numpy on one view of the whole array.

Phases (each timed, with its throughput printed):

ingest  the signal ``M*sin(f*t)`` (float64, ``t = k*dt``) is generated in
        parts of ``--part`` bytes (32 MiB by default), appended to the array
        and committed part by part: one transaction never changes more than a
        part;
scan    ``a = A[:]`` - ONE ndarray view of the whole array - is walked in
        block-aligned chunks (so that the progress bar moves): ``np.sum`` and
        ``np.histogram`` (fixed bins) of each chunk;
mean    ``np.mean(a)`` in one call over the whole view: numpy does not know the
        array is bigger than the budget; the pager loads and evicts under it.

Checks (the demo exits with status 1 if one fails): the histogram of the data
read back equals, count for count, the histogram of the data as generated; the
sum and the mean equal the closed form of the sum of a sampled sine,
``M * sin(N*d/2) * sin((N-1)*d/2) / sin(d/2)`` with ``d = f*dt``, within
floating point tolerance.
"""

import gc
import math
import os
import sys
import tempfile

import numpy as np

import wendelin_cy
from wendelin_cy.demo._monitor import Monitor, close, fmt_bytes, finish, peak_rss, MiB, current_rss

# the signal
M = 2.0                         # amplitude
F = 2 * math.pi * 0.37          # angular frequency [rad/s]
DT = 1e-3                       # sampling step [s]
NBINS = 64
KEY = 'wendelin_cy_demo'


def generate(k0, n, out=None):
    """Samples k0 .. k0+n-1 of the signal, float64 (computed in `out`)."""
    if out is None:
        buf = np.arange(k0, k0 + n, dtype=np.float64)
    else:
        buf = out[:n]
        buf[:] = np.arange(n, dtype=np.float64)
        buf += k0                   # exact: integers below 2**53
    np.multiply(buf, DT, out=buf)
    np.multiply(buf, F, out=buf)
    np.sin(buf, out=buf)
    np.multiply(buf, M, out=buf)
    return buf


def analytic_sum(n):
    """Sum of M*sin(F*k*DT) for k in [0, n): closed form."""
    d = F * DT
    return M * math.sin(n * d / 2) * math.sin((n - 1) * d / 2) / math.sin(d / 2)


def _bar(enabled, total, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit='B', unit_scale=True, unit_divisor=1024,
                dynamic_ncols=True, disable=not enabled, leave=True)


def _rate(nbytes, seconds):
    return '%s/s' % fmt_bytes(nbytes / seconds if seconds > 0 else float('inf'))


def run(size, budget, uri=None, plot_path='wendelin_cy_demo.png', keep=False,
        quiet=False, part=32 * MiB, out=sys.stdout):
    """Run the signal demo; returns 0 if all checks passed, else 1."""
    import transaction
    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbopen, dbclose

    def say(*a):
        print(*a, file=out, flush=True)

    wendelin_cy.set_ram_budget(budget)
    budget = wendelin_cy.get_ram_budget()
    n = size // 8
    nbytes = n * 8
    tmpdir = None
    if uri is None:
        tmpdir = tempfile.mkdtemp(prefix='wendelin_cy_demo-')
        uri = os.path.join(tmpdir, 'demo.fs')
        where = 'FileStorage %s (temporary%s)' % (uri, ', kept' if keep else '')
    else:
        where = uri
    blk = 2 * MiB
    part = max(blk, min(part, budget // 4) // blk * blk)
    part_n = part // 8

    say('wendelin_cy demo: signal M*sin(f*t) of %s (%d float64) into a ZBigArray'
        % (fmt_bytes(nbytes), n))
    say('  RAM budget %s (array = %.1fx budget), database %s, commit every %s'
        % (fmt_bytes(budget), nbytes / budget, where, fmt_bytes(part)))

    rss0 = current_rss()
    mon = Monitor().start()
    ok = True
    root = None
    try:
        root = dbopen(uri)
        root[KEY] = A = ZBigArray((0,), np.float64)
        transaction.commit()

        # ~~~ ingest
        hist_gen = np.zeros(NBINS, np.int64)
        # generated in small pieces appended one by one (append is O(piece)):
        # the data goes to the pager's pages, not to a buffer of a whole part
        piece = min(part_n, (4 * MiB) // 8)
        buf = np.empty(piece, np.float64)
        with mon.phase('ingest') as ph_in, _bar(not quiet, nbytes, 'ingest') as bar:
            k = 0
            while k < n:
                kend = min(k + part_n, n)
                while k < kend:
                    m = min(piece, kend - k)
                    chunk = generate(k, m, buf)
                    hist_gen += np.histogram(chunk, bins=NBINS, range=(-M, M))[0]
                    A.append(chunk)
                    k += m
                    bar.update(m * 8)
                transaction.commit()
                gc.collect()    # see wendelin_cy.ml._commit: ZODB leaves cyclic garbage
        del buf, chunk
        ph_in.note = _rate(nbytes, ph_in.seconds)
        say('ingest: %s in %.1f s = %s (generate + append + commit per %s)'
            % (fmt_bytes(nbytes), ph_in.seconds, _rate(nbytes, ph_in.seconds),
               fmt_bytes(part)))

        # ~~~ scan: one view, walked in block-aligned chunks
        a = A[:]
        assert a.shape == (n,), a.shape
        step = part_n
        sums = []
        hist = np.zeros(NBINS, np.int64)
        with mon.phase('scan') as ph_sc, _bar(not quiet, nbytes, 'scan') as bar:
            for i in range(0, n, step):
                c = a[i:i + step]
                sums.append(float(np.sum(c)))
                hist += np.histogram(c, bins=NBINS, range=(-M, M))[0]
                bar.update(c.nbytes)
            del c
        total = math.fsum(sums)
        ph_sc.note = _rate(nbytes, ph_sc.seconds)
        say('scan (np.sum + np.histogram per %s chunk of a = A[:]): %s in %.1f s = %s'
            % (fmt_bytes(step * 8), fmt_bytes(nbytes), ph_sc.seconds,
               _rate(nbytes, ph_sc.seconds)))

        # ~~~ one numpy call over the whole view
        with mon.phase('np.mean(a)') as ph_m:
            mean = float(np.mean(a))
        ph_m.note = _rate(nbytes, ph_m.seconds)
        say('np.mean(a) over the whole view: %s in %.1f s = %s'
            % (fmt_bytes(nbytes), ph_m.seconds, _rate(nbytes, ph_m.seconds)))
        del a

        # ~~~ checks
        want = analytic_sum(n)
        tol = 1e-9 * n * M
        say('sum  = %.9g   (closed form %.9g, |diff| %.2g, tolerance %.2g)'
            % (total, want, abs(total - want), tol))
        say('mean = %.9g   (closed form %.9g)' % (mean, want / n))
        if not abs(total - want) <= tol:
            say('FAILED: the sum differs from the closed form of the signal')
            ok = False
        if not abs(mean - want / n) <= tol / n:
            say('FAILED: the mean differs from the closed form of the signal')
            ok = False
        if not np.array_equal(hist, hist_gen) or hist.sum() != n:
            bad = np.flatnonzero(hist != hist_gen)
            say('FAILED: histogram of the data read back differs from the generated '
                'one in %d bins (read %d values, generated %d)'
                % (len(bad), hist.sum(), hist_gen.sum()))
            ok = False
        else:
            say('histogram (%d fixed bins over [-%g, %g]) equals the generated one: '
                '%d values' % (NBINS, M, M, n))

        st = wendelin_cy.pager_stats()
        if not keep:
            del root[KEY]
            transaction.commit()
    finally:
        A = None
        close(root, dbclose, mon, tmpdir, keep)

    peak = peak_rss()
    say('throughput: ingest %s, scan %s, np.mean %s'
        % (ph_in.note, ph_sc.note, ph_m.note))
    return finish(say, mon, st, budget, rss0, peak, plot_path,
                  'wendelin_cy demo: %s signal in a ZBigArray, RAM budget %s'
                  % (fmt_bytes(nbytes), fmt_bytes(budget)),
                  '%s (root[%r])' % (uri, KEY) if keep and tmpdir is not None else None,
                  ok)
