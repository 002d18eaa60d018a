"""python -m wendelin_cy.demo [ml] [--size 2G] [--budget 512M] [--uri URI]
                             [--plot PATH] [--keep] [--quiet]

Without a command: the signal demo (``wendelin_cy.demo.zbigarray``): a signal
of twice the RAM budget is ingested into a ZBigArray, then summed, averaged and
binned with plain numpy on one view of the whole array.

``ml``: the machine learning demo (``wendelin_cy.demo.ml_demo``): a labelled
data set of twice the budget is ingested, a classifier is trained on it with
``wendelin_cy.ml.fit_incremental``, predictions are written into another
ZBigArray with ``predict_into``, and per-batch sums are computed in joblib
worker processes that receive the batches ``X[i:j]`` (views, which pickle by
reference).

Defaults: budget 256 MiB, array 2x the budget (512 MiB), in a FileStorage in a
temporary directory that is removed at the end (``--keep`` keeps it,
``--uri`` uses another database); about a minute on a 2-core machine.
"""

import argparse
import sys

DEFAULT_BUDGET = '256M'


def _size(text):
    from wendelin_cy.ram import parse_size
    try:
        v = parse_size(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e))
    if v <= 0:
        raise argparse.ArgumentTypeError('size must be positive: %r' % text)
    return v


def parser():
    p = argparse.ArgumentParser(
        prog='python -m wendelin_cy.demo',
        description='wendelin_cy demos: out-of-core numpy (default) or machine '
                    'learning (ml) on a ZBigArray twice the RAM budget.',
        epilog='Defaults: budget %s, so the data is 512 MiB, in a FileStorage under a '
               'temporary directory; 10-30 s on 2 cores.  Prints the throughput of '
               'each phase and the peak RSS beside the budget.' % DEFAULT_BUDGET)
    p.add_argument('command', nargs='?', choices=['signal', 'ml'], default=None,
                   help='signal (default): ingest + numpy reductions; '
                        'ml: partial_fit training, predict_into, joblib map')
    p.add_argument('--ml', action='store_true', help='same as the ml command')
    p.add_argument('--size', type=_size, default=None,
                   help='array size, e.g. 512M, 2G (default: 2x the budget)')
    p.add_argument('--budget', type=_size, default=None,
                   help='RAM budget of the pager, e.g. 256M (default %s)'
                        % DEFAULT_BUDGET)
    p.add_argument('--uri', default=None,
                   help='database to use (path, zeo://host:port, ...); default: '
                        'a FileStorage in a temporary directory, removed afterwards')
    p.add_argument('--plot', metavar='PATH', default=None,
                   help='PNG of memory over time (default ./wendelin_cy_demo.png, '
                        'ml: ./wendelin_cy_demo_ml.png); "" for none')
    p.add_argument('--part', type=_size, default=32 << 20,
                   help='bytes ingested per commit (default 32M, at most budget/4)')
    p.add_argument('--keep', action='store_true',
                   help='keep the database (and the data in it)')
    p.add_argument('--quiet', '-q', action='store_true',
                   help='no progress bars; print the summary only')
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from wendelin_cy.ram import parse_size
    budget = args.budget if args.budget is not None else parse_size(DEFAULT_BUDGET)
    size = args.size if args.size is not None else 2 * budget
    ml = args.ml or args.command == 'ml'
    if ml:
        from wendelin_cy.demo import ml_demo
        plot = args.plot if args.plot is not None else 'wendelin_cy_demo_ml.png'
        return ml_demo.run(size, budget, uri=args.uri, plot_path=plot,
                           keep=args.keep, quiet=args.quiet, part=args.part)
    from wendelin_cy.demo import zbigarray
    plot = args.plot if args.plot is not None else 'wendelin_cy_demo.png'
    return zbigarray.run(size, budget, uri=args.uri, plot_path=plot, keep=args.keep,
                         quiet=args.quiet, part=args.part)


if __name__ == '__main__':
    sys.exit(main())
