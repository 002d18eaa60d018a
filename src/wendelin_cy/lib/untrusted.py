"""Opening a database that came from elsewhere: ``dbopen(uri, trusted=False)``.

A ZODB record is a pickle, and a pickle may name any importable callable and
call it (``os.system``, say) while it is read.  ZODB resolves every name a
record holds - the class of an object, the class in a reference, every
global inside the state - through one hook, ``DB.classFactory``.  Here that
hook only answers for an allow-list; anything else raises
``UntrustedClassError`` before it is imported or called.  The storage is
opened read-only.

The allow-list (``ALLOWED``): wendelin_cy's persistent classes (and
wendelin.core's names for them), the classes of BTrees, persistent mappings
and lists, ZODB blobs, numpy dtypes, and a few builtin types (set,
frozenset, bytearray, complex).  ``dbopen(uri, trusted=False,
allow=['mypkg.MyClass', 'otherpkg.*'])`` adds names ('module.name', or
'module.*' for every class of a module).

What it does not do: it does not make it safe to unpickle such records by
other means (``pickle.loads`` of a record's bytes, a Connection of your own
over the storage) - only the DB opened here has the hook.
"""

from ZODB import DB
from ZODB.POSException import POSError

__all__ = ['ALLOWED', 'UntrustedClassError', 'open_db', 'restrict']

_CY = 'wendelin_cy.bigfile.file_zodb'
_WC = 'wendelin.bigfile.file_zodb'

ALLOWED = frozenset([
    'wendelin_cy.bigarray.array_zodb.ZBigArray',
    _CY + '.ZBigFile', _CY + '.ZBlk0', _CY + '.ZBlk1', _CY + '.ZData', _CY + '.ZBlkSeg',
    'wendelin.bigarray.array_zodb.ZBigArray',
    _WC + '.ZBigFile', _WC + '.ZBlk0', _WC + '.ZBlk1', _WC + '.ZData',
    'persistent.mapping.PersistentMapping', 'persistent.list.PersistentList',
    'persistent.Persistent', 'persistent.persistence.Persistent',
    'ZODB.PersistentMapping.PersistentMapping', 'ZODB.PersistentList.PersistentList',
    'ZODB.blob.Blob',
    'numpy.dtype', 'numpy.dtypes.*',
    'BTrees.*',
    'builtins.set', 'builtins.frozenset', 'builtins.bytearray', 'builtins.complex',
])


class UntrustedClassError(POSError, TypeError):
    """A record of an untrusted database names a class or function that is
    not on the allow-list."""


def _allowed(allow, module, name):
    full = '%s.%s' % (module, name)
    if full in allow:
        return True, False
    parts = module.split('.')
    for i in range(len(parts), 0, -1):
        if '.'.join(parts[:i]) + '.*' in allow:
            return True, True           # a module pattern: classes only
    return False, False


def restricted_factory(allow):
    allow = ALLOWED | frozenset(allow)

    def classFactory(connection, modulename, globalname):
        if not isinstance(modulename, str) or not isinstance(globalname, str):
            raise UntrustedClassError('untrusted database: a record names %r.%r'
                                      % (modulename, globalname))
        ok, classes_only = _allowed(allow, modulename, globalname)
        if not ok or '.' in globalname:
            raise UntrustedClassError(
                'untrusted database (dbopen(..., trusted=False)): a record names '
                '%s.%s, which is not on the allow-list; refused before it is '
                'imported or called (add it with allow=[...] if you trust it)'
                % (modulename, globalname))
        from ZODB.broken import find_global
        obj = find_global(modulename, globalname)
        if classes_only and not isinstance(obj, type):
            raise UntrustedClassError(
                'untrusted database: a record names %s.%s, which is not a class'
                % (modulename, globalname))
        return obj
    return classFactory


def restrict(db, allow=()):
    """Put the allow-list hook on `db` (for connections opened from now on)."""
    db.classFactory = restricted_factory(allow)
    db.wendelin_cy_untrusted = True
    return db


def open_db(storage, allow=(), **kw):
    """ZODB.DB over `storage` with the hook in place before DB() reads the root."""
    factory = restricted_factory(allow)

    class _DB(DB):
        def classFactory(self, connection, modulename, globalname):
            return factory(connection, modulename, globalname)
    return _DB(storage, **kw)
