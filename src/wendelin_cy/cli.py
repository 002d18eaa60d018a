"""The command line: ``wendelin-cy`` / ``python -m wendelin_cy``.

    wendelin-cy info    URI [KEY] [--json] [--no-sizes]
    wendelin-cy import  SRC URI KEY [--commit-every MIB] [--resume | --restart] [--force]
    wendelin-cy export  URI KEY DEST [--force]
    wendelin-cy verify  URI [KEY] [--json]
    wendelin-cy demo    [demo options]     (python -m wendelin_cy.demo)
    wendelin-cy ml-demo [demo options]     (python -m wendelin_cy.demo ml)

URI is what ``wendelin_cy.lib.zodb.dbopen`` takes (a FileStorage path,
``zeo://host:port``, ``neo://...``, ``memory://``, RelStorage URIs); KEY a key
path below the root (``group/name``, see ``wendelin_cy.keypath``).  SRC and DEST
name a ``.npy`` file, an HDF5 dataset ``file.h5:/path`` or a zarr array
``store.zarr[/path]`` (see ``wendelin_cy.io``).  ``info``, ``export`` and
``verify`` open a FileStorage read-only and never create one.

Exit status: 0 success; 1 ``verify`` found problems; 2 an error (a usage
mistake, a missing key or file, an unknown URI scheme, a dtype a format cannot
hold, a missing optional package, a storage error), reported as one line on
stderr; 130 interrupted (Ctrl-C, SIGTERM).  ``WENDELIN_CY_DEBUG=1`` adds the
traceback to an error.
"""

import argparse
import json
import logging
import os
import signal
import sys
from typing import Sequence

__all__ = ['main', 'parser']

PROG = 'wendelin-cy'
EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake of the user, reported as one line."""


def _mib_arg(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number of MiB: %r' % text) from None
    if v <= 0:
        raise argparse.ArgumentTypeError('must be positive: %r' % text)
    return int(v * (1 << 20))


def _uri_key_json(s):
    """URI [KEY] [--json], of info and verify."""
    s.add_argument('uri', metavar='URI')
    s.add_argument('key', metavar='KEY', nargs='?')
    s.add_argument('--json', action='store_true', help='JSON on stdout')


def parser() -> argparse.ArgumentParser:
    from wendelin_cy.demo.__main__ import _size         # (sizes as the demos take them)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--budget', type=_size, metavar='SIZE',
                        help='RAM budget of the pager, e.g. 512M (default: '
                             '$WENDELIN_CY_RAM_BUDGET, else half the available memory)')
    common.add_argument('-q', '--quiet', action='store_true',
                        help='no progress bar (there is none either when stderr '
                             'is not a terminal)')

    p = argparse.ArgumentParser(
        prog=PROG, description='Look into, fill, export and check wendelin_cy '
        'databases of ZBigArrays.',
        epilog='URI: a FileStorage path, zeo://host:port, neo://..., memory://, '
               'a RelStorage URI.  SRC/DEST: x.npy, file.h5:/dataset, store.zarr'
               '[/path].  Exit status: 0 ok, 1 verify found problems, 2 error, '
               '130 interrupted.  See docs/cli.md.')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    s = sub.add_parser('info', parents=[common], help='list the arrays of a database',
                       description='Every ZBigArray reachable from the root: key '
                       'path, shape, dtype, order, size, size on disk, blocks by '
                       'format, last commit; with KEY, one array in detail.')
    _uri_key_json(s)
    s.add_argument('--no-sizes', action='store_true',
                   help='do not read record sizes (faster over a network storage)')

    s = sub.add_parser('import', parents=[common], help='copy a .npy/HDF5/zarr array '
                       'into a new ZBigArray',
                       description='Copy SRC into a new ZBigArray at KEY, chunk by '
                       'chunk within the RAM budget.  Interrupted, it leaves the '
                       'database as it was, plus an unfinished import that '
                       '--resume continues.')
    s.add_argument('src', metavar='SRC')
    s.add_argument('uri', metavar='URI')
    s.add_argument('key', metavar='KEY')
    s.add_argument('--commit-every', type=_mib_arg, metavar='MIB',
                   help='commit every MIB MiB (default: a quarter of the budget, '
                        'at most 256)')
    g = s.add_mutually_exclusive_group()
    g.add_argument('--resume', action='store_true',
                   help='continue an unfinished import of the same SRC to KEY')
    g.add_argument('--restart', action='store_true',
                   help='drop an unfinished import to KEY and start again')
    s.add_argument('-f', '--force', action='store_true',
                   help='replace KEY if it exists (in the final commit)')
    s.add_argument('--zblk-fmt', choices=['auto', 'ZBlk0', 'ZBlk1', 'blob'],
                   help='block format of the new array (default: auto)')
    s.add_argument('-v', '--verbose', action='store_true',
                   help='a line on stderr after each commit')

    s = sub.add_parser('export', parents=[common], help='copy a ZBigArray to '
                       '.npy/HDF5/zarr',
                       description='Copy the ZBigArray at KEY to DEST, chunk by '
                       'chunk within the RAM budget.  An HDF5 DEST without a '
                       'dataset gets one named after the last part of KEY.')
    s.add_argument('uri', metavar='URI')
    s.add_argument('key', metavar='KEY')
    s.add_argument('dest', metavar='DEST')
    s.add_argument('-f', '--force', action='store_true', help='replace DEST if it exists')

    s = sub.add_parser('verify', parents=[common], help='read and check every block',
                       description='Read every stored block of every array (or of '
                       'KEY) and report unreadable or inconsistent ones with their '
                       'oids.  Exit status 1 if any.')
    _uri_key_json(s)

    for name, what in (('demo', 'the out-of-core numpy demo'),
                       ('ml-demo', 'the machine learning demo')):
        s = sub.add_parser(name, help=what + ' (python -m wendelin_cy.demo --help)',
                           add_help=False)
        s.add_argument('args', nargs=argparse.REMAINDER)
    return p


# ~~~ helpers

def _progress(args):
    return not args.quiet and sys.stderr.isatty()


def _open(uri, create):
    """dbopen(uri); a FileStorage that must exist is opened read-only."""
    from wendelin_cy.lib.zodb import dbopen
    from wendelin_cy.lib.zodb import _split_scheme
    scheme, rest = _split_scheme(uri)
    if not create and scheme in (None, 'file'):
        path = rest if scheme is None else rest.split('?', 1)[0]
        if not os.path.isfile(os.path.expanduser(path)):
            raise UsageError('no database at %s (a FileStorage path must name an '
                             'existing file)' % (path,))
        if scheme is None:
            import urllib.parse
            uri = 'file://%s?read_only=1' % urllib.parse.quote(
                os.path.abspath(os.path.expanduser(path)))
    return dbopen(uri)


def _close(root):
    import transaction
    from wendelin_cy.lib.zodb import dbclose
    try:
        root._p_jar.transaction_manager.abort()
    except Exception:
        transaction.abort()
    dbclose(root)


def _fmt_bytes(n):
    for unit, k in (('GiB', 30), ('MiB', 20), ('KiB', 10)):
        if n >= 1 << k:
            return '%.1f %s' % (n / (1 << k), unit)
    return '%d B' % n


# ~~~ commands

def cmd_info(args):
    from wendelin_cy import dbinfo, keypath
    root = _open(args.uri, create=False)
    try:
        if args.key:
            info = dbinfo.array_info(keypath.join(keypath.split(args.key)),
                                     keypath.resolve_array(root, args.key),
                                     sizes=not args.no_sizes)
            out = json.dumps(info, indent=2) if args.json else _info_detail(info)
        else:
            info = dbinfo.database_info(root, sizes=not args.no_sizes)
            out = json.dumps(info, indent=2) if args.json else _info_table(info)
    finally:
        _close(root)
    print(out)
    return EXIT_OK


def _blocks(info):
    b = info['blocks']
    s = ', '.join('%d %s' % (b[f], f) for f in ('ZBlk0', 'ZBlk1', 'blob') if b[f])
    s = ', '.join(x for x in (s, '%d hole%s' % (b['hole'], 's' * (b['hole'] != 1))
                              if b['hole'] else '') if x)
    if b.get('other'):
        s += ', %d other' % b['other']
    return s or 'none'


def _info_table(info):
    rows = [('KEY', 'SHAPE', 'DTYPE', 'ORDER', 'SIZE', 'ON DISK', 'BLOCKS', 'LAST COMMIT')]
    for a in info['arrays']:
        disk = a.get('disk_bytes')
        rows.append((a['key'], 'x'.join(map(str, a['shape'])) or '()', a['dtype'],
                     a['order'], _fmt_bytes(a['nbytes']),
                     _fmt_bytes(disk['total']) if disk else '-', _blocks(a),
                     a.get('last_commit') or '-'))
    if len(rows) == 1:
        lines = ['no ZBigArray in this database']
    else:
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ['  '.join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    for p in info['partial']:
        lines.append('unfinished import to %s: %s of %s from %s (import --resume '
                     'continues it, --restart drops it)'
                     % (p['key'], _fmt_bytes(p['done']), _fmt_bytes(p['nbytes']),
                        p['source'].get('name')))
    return '\n'.join(lines)


def _info_detail(a):
    lines = [
        'key:          %s' % a['key'],
        'oid:          %s' % a['oid'],
        'shape:        %s' % (tuple(a['shape']),),
        'dtype:        %s' % a['dtype'],
        'order:        %s' % a['order'],
        'size:         %s (%d bytes)' % (_fmt_bytes(a['nbytes']), a['nbytes']),
        'block size:   %s, %d blocks' % (_fmt_bytes(a['blksize']), a['nblocks']),
        'block format: %s' % (a['zblk_fmt'] or 'default'),
        'blocks:       %s' % _blocks(a),
    ]
    disk = a.get('disk_bytes')
    if disk:
        per = ', '.join('%s %s' % (f, _fmt_bytes(disk[f])) for f in ('ZBlk0', 'ZBlk1', 'blob', 'other')
                        if disk.get(f))
        lines.append('on disk:      %s%s' % (_fmt_bytes(disk['total']),
                                             ' (%s)' % per if per else ''))
        lines.append('last commit:  %s (tid %s)' % (a['last_commit'] or '-', a['last_tid']))
    return '\n'.join(lines)


def cmd_import(args):
    from wendelin_cy import io
    kind, path, sub = io.parse_spec(args.src)
    src = io._open_source(kind, path, sub)         # source errors before the db opens
    root = None
    try:
        root = _open(args.uri, create=True)

        def on_commit(done, total):
            if args.verbose:
                print('committed %s of %s' % (_fmt_bytes(done), _fmt_bytes(total)),
                      file=sys.stderr, flush=True)
        try:
            A = io._import(src, root, args.key, overwrite=args.force,
                           resume=args.resume, restart=args.restart,
                           commit_every=args.commit_every, progress=_progress(args),
                           zblk_fmt=args.zblk_fmt, on_commit=on_commit)
        except KeyboardInterrupt:
            _interrupted_import(root, args.key)
            raise
        if not args.quiet:
            print('imported %s into %s: %s %s, %s' % (
                args.src, args.key, 'x'.join(map(str, A.shape)) or '()', A.dtype,
                _fmt_bytes(A.nbytes)), file=sys.stderr)
    finally:
        src.close()
        if root is not None:
            _close(root)
    return EXIT_OK


def _interrupted_import(root, key):
    from wendelin_cy import io, keypath
    try:
        rec = io.partial_imports(root).get(keypath.join(keypath.split(key)))
    except Exception:
        rec = None
    if rec is not None:
        print('%s: interrupted: the import to %s is kept unfinished (%s of %s '
              'committed); the same command with --resume continues it, '
              '--restart drops it' % (PROG, key, _fmt_bytes(rec['done']),
                                      _fmt_bytes(rec['nbytes'])), file=sys.stderr)


def cmd_export(args):
    from wendelin_cy import io, keypath
    kind, path, sub = io.parse_spec(args.dest)
    if kind == 'hdf5' and not sub:
        sub = keypath.split(args.key)[-1]
    root = _open(args.uri, create=False)
    try:
        A = keypath.resolve_array(root, args.key)
        kw = dict(overwrite=args.force, progress=_progress(args))
        if kind == 'npy':
            io.to_npy(A, path, **kw)
        elif kind == 'hdf5':
            io.to_hdf5(A, path, sub, **kw)
        else:
            io.to_zarr(A, path, sub, **kw)
        if not args.quiet:
            print('exported %s to %s: %s' % (args.key, args.dest, _fmt_bytes(A.nbytes)),
                  file=sys.stderr)
    finally:
        _close(root)
    return EXIT_OK


def cmd_verify(args):
    from wendelin_cy import verify
    root = _open(args.uri, create=False)
    try:
        r = verify.verify_database(root, args.key, progress=_progress(args))
    finally:
        _close(root)
    if args.json:
        print(json.dumps({'ok': r.ok, 'arrays': r.arrays, 'blocks': r.blocks,
                          'nbytes': r.nbytes, 'unchecked': r.unchecked,
                          'problems': [p._asdict() for p in r.problems]}, indent=2))
    else:
        for p in r.problems:
            print(p)
        if r.unchecked:
            print('%d block%s without checksums (written before wendelin_cy had them, '
                  'or in wendelin.core\'s format): sizes and structure checked only'
                  % (r.unchecked, 's' * (r.unchecked != 1)))
        print('%d array%s, %d blocks (%s) read: %s' % (
            r.arrays, 's' * (r.arrays != 1), r.blocks, _fmt_bytes(r.nbytes),
            'no problems' if r.ok else '%d problem%s' % (len(r.problems),
                                                         's' * (len(r.problems) != 1))),
            file=sys.stdout if r.ok else sys.stderr)
    return EXIT_OK if r.ok else EXIT_PROBLEMS


def cmd_demo(args, ml):
    from wendelin_cy.demo.__main__ import main as demo_main
    return demo_main((['ml'] if ml else []) + list(args.args)) or 0


# ~~~ entry point

def _expected_errors():
    """Exceptions that are reported as one line (not a bug of ours)."""
    from ZODB.POSException import POSError
    errs = [UsageError, ValueError, TypeError, OSError, ImportError, KeyError, POSError]
    try:
        from zc.lockfile import LockError
        errs.append(LockError)
    except ImportError:             # pragma: no cover
        pass
    from wendelin_cy.errors import WendelinError
    errs.append(WendelinError)
    return tuple(errs)


class _OneLine(logging.Formatter):
    """Log records as one line each, without tracebacks (unless
    $WENDELIN_CY_DEBUG is set)."""

    def format(self, record):
        text = '%s: %s' % (record.name, record.getMessage())
        if os.environ.get('WENDELIN_CY_DEBUG') and record.exc_info:
            text += '\n' + self.formatException(record.exc_info)
        return text


def _not_a_load_failure(record):
    # ZODB logs every record it cannot load, with its traceback; the command
    # reports that itself (verify: as a problem of the block; else as the error)
    return not record.getMessage().startswith("Couldn't load state for")


def _setup_logging():
    root = logging.getLogger()
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(_OneLine())
        h.addFilter(_not_a_load_failure)
        h.setLevel(logging.WARNING)
        root.addHandler(h)


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ('demo', 'ml-demo'):
        # (argparse's REMAINDER does not take options first: pass them on as is)
        return cmd_demo(argparse.Namespace(args=argv[1:]), argv[0] == 'ml-demo')
    args = parser().parse_args(argv)
    _setup_logging()
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.budget:
            import wendelin_cy
            wendelin_cy.set_ram_budget(args.budget)
        cmd = {'info': cmd_info, 'import': cmd_import, 'export': cmd_export,
               'verify': cmd_verify}[args.command]
        return cmd(args)
    except KeyboardInterrupt:
        print('%s: interrupted' % PROG, file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as e:
        if os.environ.get('WENDELIN_CY_DEBUG'):
            import traceback
            traceback.print_exc()
        print('%s: error: %s' % (PROG, _one_line(e)), file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, old)


def _one_line(e):
    text = str(e)
    if type(e) is KeyError:
        text = 'missing key ' + text
    text = ' '.join(text.split()) or type(e).__name__
    mod = type(e).__module__
    if mod != 'builtins' and not mod.startswith('wendelin_cy') \
            and not text.startswith(type(e).__name__):
        text = '%s: %s' % (type(e).__name__, text)      # e.g. POSKeyError, LockError
    return text


if __name__ == '__main__':          # pragma: no cover
    sys.exit(main())
