"""Machine learning on arrays bigger than RAM: batches, partial_fit, results
written back in parts, and arrays shared with worker processes by reference.

Design note
===========

Batches are views
-----------------
``iter_batches`` takes ONE ndarray view of the whole array (``A[:]`` for a
ZBigArray/BigArray, the array itself for an ndarray) and yields slices of it
along axis 0.  A slice of a view is a view: no batch is ever copied by us, and
what a batch costs in RAM is decided by the pager, which loads its blocks when
the estimator touches them and evicts them under the RAM budget afterwards.

Batch size: unless ``batch_rows`` is given, a batch is about an eighth of the
RAM budget, rounded down to a whole number of "aligned units" - the fewest rows
whose bytes are a whole number of pager blocks - so that (for C-order arrays)
every batch starts and ends on a block boundary and no block is loaded for two
batches.  When that unit is bigger than the eighth of the budget (very odd row
sizes), a batch is the eighth of the budget in rows, not aligned.  An eighth
leaves room for what estimators allocate per batch (``partial_fit`` of most
estimators makes a few temporaries the size of its input batch).

Shuffling permutes the ORDER of the batches, not rows: a permutation of rows
would make every batch touch every block.  ``fit_incremental`` draws a new
permutation for every epoch from one generator seeded with ``seed``, so a run
is reproducible.

Writing results
---------------
``transform_into`` / ``predict_into`` compute batch by batch and assign into a
view of ``out``.  The first batch is computed before anything is written, so a
result of the wrong shape fails with ``ValueError`` and ``out`` untouched.  If
``out`` lives in a ZODB connection, the transaction manager of that connection
commits every ``commit_every`` batches and whenever the pager's dirty bytes
pass half the RAM budget, and once at the end: one transaction never holds more
changed data than the budget (the pager could spill it, but a commit is cheaper).
Note that these commits commit everything else changed in that transaction too.

Sharing by reference
--------------------
``share``, ``ArrayRef`` and the pickling of views by reference live in
``wendelin_cy.bigarray._viewref`` (its docstring is the design note); they are
part of this module's API.

"""

import gc
import math

import numpy as np

# sharing by reference has its own module (bigarray._viewref); its API is ml's
from wendelin_cy.bigarray._viewref import (  # noqa: F401  (re-exported)
    share, ArrayRef, DatabaseUnreachable, SnapshotWarning, close_shared,
    _vma_of, _owned_dbs)

__all__ = ['iter_batches', 'batch_rows_for', 'fit_incremental', 'transform_into',
           'predict_into', 'share', 'ArrayRef', 'DatabaseUnreachable',
           'SnapshotWarning', 'close_shared']

DEFAULT_BLKSIZE = 2 << 20


# ~~~ batches

def _as_view(X, name='X'):
    """-> (ndarray view of the whole of X, blksize or None)."""
    if isinstance(X, np.ndarray):
        return X, _blksize_of_view(X)
    if isinstance(X, ArrayRef):
        v = X.open()
        return v, X.blksize
    if isinstance(X, (list, tuple)):
        return np.asarray(X), None
    getitem = getattr(X, '__getitem__', None)
    if getitem is None or not hasattr(X, 'shape'):
        raise TypeError('%s must be a BigArray/ZBigArray, an ndarray or an ArrayRef, '
                        'not %s' % (name, type(X).__name__))
    v = X[...]
    if not isinstance(v, np.ndarray):
        raise TypeError('%s[...] did not give an ndarray (%s)'
                        % (name, type(v).__name__))
    fh = getattr(X, '_fileh', None)
    return v, getattr(fh, 'blksize', None)


def _blksize_of_view(v):
    vma = _vma_of(v)
    return vma.pagesize() if vma is not None else None


def batch_rows_for(shape, dtype, blksize=None, budget=None, fraction=8):
    """Default rows per batch: about budget/fraction bytes, rounded down to
    whole blocks' worth of rows when possible (at least one row)."""
    if budget is None:
        from wendelin_cy.ram import get_ram_budget
        budget = get_ram_budget()
    blksize = blksize or DEFAULT_BLKSIZE
    rowbytes = int(np.dtype(dtype).itemsize * math.prod(shape[1:]))
    if rowbytes <= 0:
        return max(1, int(shape[0]) if shape else 1)
    target = max(budget // fraction, 1)
    unit_rows = blksize // math.gcd(blksize, rowbytes)   # rows per lcm(row, blk)
    unit_bytes = unit_rows * rowbytes
    if unit_bytes <= target:
        return (target // unit_bytes) * unit_rows
    if unit_bytes <= 4 * target and unit_bytes <= (256 << 20):
        return unit_rows           # one aligned unit, a bit over the target
    return max(1, target // rowbytes)


def _check_rows(X, y):
    if X.ndim == 0:
        raise ValueError('X must have at least one dimension')
    if y is not None and y.shape[:1] != X.shape[:1]:
        raise ValueError('X and y have different numbers of rows: %d != %d'
                         % (X.shape[0], y.shape[0] if y.ndim else -1))


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _bounds(n, batch_rows):
    return [(i, min(i + batch_rows, n)) for i in range(0, n, batch_rows)]


def iter_batches(X, y=None, batch_rows=None, shuffle=False, seed=None):
    """Yield batches of rows of X (and y) as ndarray views, no copies.

    X, y: ZBigArray, BigArray, ndarray (or ArrayRef).  Batches are consecutive
    row ranges ``X[:][i:j]`` of one view of the whole array; with a y, pairs
    ``(Xb, yb)`` of the same rows.  ``batch_rows`` defaults to about an eighth
    of the RAM budget in whole blocks (see ``batch_rows_for``).  With
    ``shuffle=True`` the order of the batches (not of the rows) is a random
    permutation drawn from ``seed`` (an int, None or a numpy Generator; pass
    one Generator to get a new order on every call).
    """
    Xv, blksize = _as_view(X, 'X')
    yv = None
    if y is not None:
        yv, _ = _as_view(y, 'y')
    _check_rows(Xv, yv)
    n = Xv.shape[0]
    if batch_rows is None:
        batch_rows = batch_rows_for(Xv.shape, Xv.dtype, blksize)
    batch_rows = int(batch_rows)
    if batch_rows <= 0:
        raise ValueError('batch_rows must be positive, got %d' % batch_rows)
    bounds = _bounds(n, batch_rows)
    if shuffle:
        order = _rng(seed).permutation(len(bounds))
        bounds = [bounds[k] for k in order]
    return _gen(Xv, yv, bounds)


def _gen(Xv, yv, bounds):
    for i, j in bounds:
        if yv is None:
            yield Xv[i:j]
        else:
            yield Xv[i:j], yv[i:j]


def _tqdm(total, desc, enabled, unit='rows'):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                dynamic_ncols=True, leave=True)


def fit_incremental(estimator, X, y=None, *, epochs=1, batch_rows=None,
                    shuffle=False, seed=None, progress=True, **partial_fit_kwargs):
    """Train `estimator` with ``partial_fit`` on batches of X (and y).

    Any estimator with ``partial_fit`` works: SGDClassifier, SGDRegressor,
    MiniBatchKMeans, IncrementalPCA, StandardScaler, MultinomialNB, ...
    Extra keyword arguments (``classes=`` for classifiers) are passed to
    every ``partial_fit`` call.  With ``shuffle=True`` each epoch visits the
    batches in a new order drawn from ``seed``.  A tqdm bar counts rows
    (``progress=False`` turns it off).  Returns the estimator.
    """
    pf = getattr(estimator, 'partial_fit', None)
    if pf is None:
        raise TypeError('%s has no partial_fit: it cannot be trained in batches '
                        '(see docs/ml.md for which fit() is safe on a whole view)'
                        % type(estimator).__name__)
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError('epochs must be >= 1, got %d' % epochs)
    Xv, blksize = _as_view(X, 'X')
    yv = _as_view(y, 'y')[0] if y is not None else None
    _check_rows(Xv, yv)
    if batch_rows is None:
        batch_rows = batch_rows_for(Xv.shape, Xv.dtype, blksize)
    rng = _rng(seed)
    n = Xv.shape[0]
    bar = _tqdm(n * epochs, 'fit %s' % type(estimator).__name__, progress)
    try:
        for _ in range(epochs):
            for b in iter_batches(Xv, yv, batch_rows, shuffle, rng):
                if yv is None:
                    pf(b, **partial_fit_kwargs)
                    rows = b.shape[0]
                else:
                    pf(b[0], b[1], **partial_fit_kwargs)
                    rows = b[0].shape[0]
                if bar is not None:
                    bar.update(rows)
    finally:
        if bar is not None:
            bar.close()
    return estimator


# ~~~ writing results into another array

def _out_view(out):
    if isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ValueError('out is a read-only ndarray')
        return out, None
    if not hasattr(out, 'shape') or not hasattr(out, '__getitem__'):
        raise TypeError('out must be a ZBigArray, BigArray or ndarray, not %s'
                        % type(out).__name__)
    jar = getattr(out, '_p_jar', None)
    tm = getattr(jar, 'transaction_manager', None) if jar is not None else None
    if tm is None and jar is None and hasattr(out, '_p_oid'):
        tm = None               # a ZBigArray not yet in a database: no commits
    return out[...], tm


def _apply_into(method, what, X, out, batch_rows, commit_every, progress):
    Xv, blksize = _as_view(X, 'X')
    if Xv.ndim == 0:
        raise ValueError('X must have at least one dimension')
    n = Xv.shape[0]
    if not hasattr(out, 'shape'):
        raise TypeError('out must be a ZBigArray, BigArray or ndarray, not %s'
                        % type(out).__name__)
    if len(out.shape) == 0 or out.shape[0] != n:
        raise ValueError('%s_into: out has shape %r but X has %d rows: out needs '
                         '%d rows' % (what, tuple(out.shape), n, n))
    ov, tm = _out_view(out)
    if batch_rows is None:
        # the output batch is written (dirty) while the input is read
        batch_rows = batch_rows_for(Xv.shape, Xv.dtype, blksize, fraction=16)
        if ov.ndim and ov.itemsize:
            batch_rows = min(batch_rows, batch_rows_for(
                ov.shape, ov.dtype, _blksize_of_view(ov), fraction=16))
    from wendelin_cy.ram import get_ram_budget, pager_stats
    budget = get_ram_budget()
    bar = _tqdm(n, '%s %s' % (what, type(getattr(method, '__self__', method)).__name__),
                progress)
    since = 0
    try:
        for k, (i, j) in enumerate(_bounds(n, int(batch_rows))):
            r = np.asarray(method(Xv[i:j]))
            want = (j - i,) + tuple(ov.shape[1:])
            if r.shape != want:
                if r.ndim >= 1 and r.shape[0] == j - i:
                    raise ValueError(
                        '%s_into: the estimator gives rows of shape %r but out has '
                        'rows of shape %r (out.shape=%r); create out with shape %r'
                        % (what, r.shape[1:], tuple(ov.shape[1:]), tuple(ov.shape),
                           (n,) + r.shape[1:]))
                raise ValueError('%s_into: the estimator returned shape %r for %d rows'
                                 % (what, r.shape, j - i))
            if k == 0 and not np.can_cast(r.dtype, ov.dtype, 'same_kind'):
                raise TypeError('%s_into: cannot store %s results into out of dtype %s'
                                % (what, r.dtype, ov.dtype))
            ov[i:j] = r
            del r
            since += 1
            if tm is not None and ((commit_every and since >= commit_every)
                                   or pager_stats()['dirty'] >= budget // 2):
                _commit(tm)
                since = 0
            if bar is not None:
                bar.update(j - i)
        if tm is not None:
            _commit(tm)
    finally:
        if bar is not None:
            bar.close()
    return out


def _commit(tm):
    tm.commit()
    # ZODB's ObjectWriter (Connection.commit) sits in a reference cycle with
    # its pickler and keeps the BytesIO of the last record it pickled: after a
    # commit of N blocks, O(N * blksize) bytes wait for the cyclic GC, which
    # large-data workloads (few Python objects) rarely trigger.
    gc.collect()


def transform_into(estimator, X, out, *, batch_rows=None, commit_every=None,
                   progress=False):
    """out[i:j] = estimator.transform(X[i:j]) batch by batch; returns out.

    out: ZBigArray (committed in parts through its connection's transaction
    manager: every `commit_every` batches, when dirty data reaches half the
    RAM budget, and at the end), BigArray or ndarray, with as many rows as X
    and the row shape the estimator produces.
    """
    if not hasattr(estimator, 'transform'):
        raise TypeError('%s has no transform()' % type(estimator).__name__)
    return _apply_into(estimator.transform, 'transform', X, out, batch_rows,
                       commit_every, progress)


def predict_into(estimator, X, out, *, batch_rows=None, commit_every=None,
                 progress=False):
    """out[i:j] = estimator.predict(X[i:j]) batch by batch; see transform_into."""
    if not hasattr(estimator, 'predict'):
        raise TypeError('%s has no predict()' % type(estimator).__name__)
    return _apply_into(estimator.predict, 'predict', X, out, batch_rows,
                       commit_every, progress)
