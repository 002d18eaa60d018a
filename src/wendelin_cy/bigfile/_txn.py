"""What the handles need of ``transaction`` and of ZODB's Connection beyond
their public API: the only user of ``Connection._needs_to_join`` /
``Connection._register()``, of a transaction manager's ``_synchs``, of the
Connection's pickle cache ``_cache``, and of ``transaction._transaction``.

Each is behind a check of its shape, with a fallback:

* ``join_connection``: without ``_needs_to_join`` / ``_register`` (checked
  once per Connection class; one warning on the ``wendelin_cy.storage``
  logger) the Connection is
  made to join by marking the ZBigFile changed (public API; costs one small
  record per commit that writes blocks).
* ``synch_order``: without ``_synchs.as_weakref_list()`` the order is not
  known (None): the handle then has the Connection take its snapshot at
  every boundary itself (correct, a little more work).
* ``check_cache``: without ``_cache`` nothing is checked (no warning).
* ``Status``: the transaction states, as strings if the class moved.
* ``thread_manager``: the per-thread manager under a
  ``ThreadTransactionManager`` (its ``manager``: public attribute, not in the
  interface); without it, writes of other threads join at the owner's next
  mmap or at its commit or abort, not at a savepoint taken before either.
"""

import logging
import threading
import weakref

import transaction as _transaction

from wendelin_cy.storage.switch import fell_back, shape_mismatch

_log = logging.getLogger(__name__)

try:
    from transaction._transaction import Status
except ImportError:         # pragma: no cover
    class Status:           # type: ignore[no-redef]
        ACTIVE = 'Active'
        COMMITTING = 'Committing'
        COMMITTED = 'Committed'
        DOOMED = 'Doomed'
        COMMITFAILED = 'Commit failed'

__all__ = ['Status', 'default_tm', 'join_connection', 'synch_order', 'check_cache',
           'thread_manager', 'follows_this_thread']

_KIND = 'Connection join'
_join_shape = {}            # Connection class -> ok


def default_tm():
    """The transaction manager of this thread (``transaction.manager``'s)."""
    return _transaction.manager.manager


def join_connection(conn, obj):
    """Make `conn` take part in the commit of its current transaction even if
    no object of it changed (our storeblk registers objects with it in
    tpc_begin, when joining is too late).  `obj`: a Persistent of conn that
    may be marked changed if that is the only way."""
    cls = type(conn)
    ok = _join_shape.get(cls)
    if ok is None:
        ok = _join_shape[cls] = (hasattr(conn, '_needs_to_join')
                                 and callable(getattr(cls, '_register', None)))
        if not ok:
            shape_mismatch(_KIND, '%s has no _needs_to_join / _register()' % cls.__name__)
    if ok and not fell_back(_KIND):
        if conn._needs_to_join:
            conn._register()
    else:
        obj._p_activate()
        obj._p_changed = True


def synch_order(tm):
    """ids of the synchronizers of transaction manager `tm`, in the order
    they are called (a WeakSet keeps the order of registration); None if not
    known."""
    synchs = getattr(tm, '_synchs', None)
    if synchs is None or not hasattr(synchs, 'as_weakref_list'):
        return None
    return [id(r()) for r in synchs.as_weakref_list()]


_warned_pure_cache = []


def check_cache(conn):
    """Log a warning once if the pickle cache is persistent's pure-Python one, which
    does not call _p_invalidate of ghosts: changes made by other connections
    to blocks held in memory would then go unnoticed."""
    cache = getattr(conn, '_cache', None)
    if (not _warned_pure_cache and cache is not None
            and type(cache).__module__ == 'persistent.picklecache'):
        _warned_pure_cache.append(True)
        _log.warning('the pure-Python persistent pickle cache is in use '
                     '(PURE_PYTHON?); it does not deliver invalidations of ghost '
                     'objects, so blocks changed by other connections may be seen '
                     'stale.  Use the C implementation of persistent.')


def thread_manager(tm):
    """The manager of this thread's transactions under `tm`: `tm` itself,
    or for a ThreadTransactionManager the one of the calling thread (which
    another thread can then ask for this thread's current transaction)."""
    if isinstance(tm, _transaction.ThreadTransactionManager):
        return getattr(tm, 'manager', None)
    return tm


# the default (thread-local) transaction manager of each thread we have seen:
# a connection opened without a manager of its own follows its opener's
_DEFAULTS = weakref.WeakKeyDictionary()     # TransactionManager -> thread id


def _note_thread():
    m = thread_manager(_transaction.manager)
    if m is not None and m not in _DEFAULTS:
        _DEFAULTS[m] = threading.get_ident()
    return m


def follows_this_thread(conn):
    """Does connection `conn` follow the transactions of the calling thread?
    True: it uses this thread's default manager; False: another thread's
    default manager; None: a manager of its own (any thread may run it)."""
    tm = getattr(conn, 'transaction_manager', None)
    if tm is None:
        return None
    if tm is _note_thread():
        return True
    if tm in _DEFAULTS:
        return False
    return None


_note_thread()          # (the importing thread, usually the main one)
