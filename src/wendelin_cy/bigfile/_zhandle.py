"""ZBigFileH, the handle of a ZBigFile tied to ``transaction``: a data
manager and a synchronizer of the connection's transaction manager (see
"Committing" and "Invalidation" in the docstring of file_zodb), its
savepoints, and ``zodb_storing``."""

import gc
import os
import tempfile
import threading
import time

from wendelin_cy._pager import virtmem
from wendelin_cy.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE
from wendelin_cy.storage import forget_reads

from ._zforeign import close_readers
from ._txn import Status, default_tm, join_connection, synch_order
from ._zblk_io import _check_fmt, _env_fmt
from ._zio import _IOS, _Writeout

__all__ = ['ZBigFileH', 'zodb_storing']

_STORING = threading.local()


def zodb_storing():
    """True while a transaction of this thread that a ZBigFileH follows is
    committing (from the synchronizers' beforeCompletion to their
    afterCompletion) or has taken a savepoint: then ZODB is the one pickling
    objects here, and a view in an object's state must be stored as data,
    not as a reference to a snapshot (see wendelin_cy.ml).  Set by the
    handles, which the transaction calls; it does not look at who calls."""
    return getattr(_STORING, 'on', False)




FULL_GC_INTERVAL = 1.0      # seconds between full collections after commits
_last_full_gc = [0.0]


def _collect():
    """After a commit that stored blocks: generation 0 each time, everything
    at most once per FULL_GC_INTERVAL."""
    now = time.monotonic()
    if now - _last_full_gc[0] >= FULL_GC_INTERVAL:
        _last_full_gc[0] = now
        gc.collect()
    else:
        gc.collect(0)

class ZBigFileH:
    """A pager handle of a ZBigFile, tied to ``transaction``.

    It has the BigFileH API (mmap, dirty_writeout, dirty_discard,
    invalidate_page, isdirty, dirty_blocks, close, blksize) and is the
    transaction data manager and synchronizer described in the module
    docstring.
    """

    def __init__(self, zfile, io, zblk_fmt, reserve):
        self.zfile = zfile
        self._io = io
        self._fmt = zblk_fmt
        self._reserve = reserve
        self._fh = io.fileh_open(reserve) if reserve is not None else io.fileh_open()
        self._conn_closed_it = False    # closed by _conn_closed: mmap reopens
        self._txn = None        # transaction we joined
        self._wo = None         # _Writeout of the commit in progress
        self._registering = False
        self._tm = None
        self._watched = None    # connection whose close we are told of
        io._handles.add(self)
        self._watch_conn_close()
        # (io._owner: the thread that made io, moved by our synchronizer calls)
        self.join_current()
        self._fh.set_dirty_hook(self._on_dirty)

    def _owns(self):
        """Is this the thread of the connection (the one its transactions
        run in)?  Other threads may load and write pages (see _zforeign)."""
        return self._io.owns()

    def _on_dirty(self):
        """The pager: the handle just went clean -> dirty (called in the thread
        that wrote, possibly inside a page fault).  Join the transaction now, so
        that a savepoint taken before the next use of the array covers it
        (the owner's transaction, whichever thread wrote)."""
        self.join_current()

    # -- BigFileH API

    @property
    def blksize(self):
        return self._fh.blksize

    @property
    def bigfile(self):
        return self._io

    @property
    def closed(self):
        return self._fh.closed

    def mmap(self, pgoffset, pglen):
        if self._conn_closed_it and self._fh.closed:
            self._reopen()
        self.join_current()
        return self._fh.mmap(pgoffset, pglen)

    def _reopen(self):
        """The handle was closed only because its connection closed (kept by
        the user, e.g. in a volatile attribute of a LivePersistent): it works
        again once the connection is reopened, as wendelin.core's does."""
        io, reserve = self._io, self._reserve
        if self._conn() is None or getattr(self._conn(), 'opened', None) is None:
            raise ValueError('%r: its connection is closed' % self)
        self._fh = io.fileh_open(reserve) if reserve is not None else io.fileh_open()
        self._conn_closed_it = False
        self._txn = None
        io._handles.add(self)
        self._watch_conn_close()
        self._fh.set_dirty_hook(self._on_dirty)

    def isdirty(self):
        return self._fh.isdirty()

    def dirty_blocks(self):
        return self._fh.dirty_blocks()

    def dirty_discard(self):
        self._fh.dirty_discard()

    def invalidate_page(self, pgoffset):
        self._fh.invalidate_page(pgoffset)

    def dirty_writeout(self, flags=WRITEOUT_STORE | WRITEOUT_MARKSTORED):
        """Write dirty pages into ZBlk objects now (they are committed with the
        transaction, like any changed persistent object)."""
        if flags & WRITEOUT_STORE:
            wo = _Writeout(self._fh, self._format(), lazy=False, conn=self._conn())
            self._store(wo)
            wo.wait_blobs()
            if flags & WRITEOUT_MARKSTORED:
                self._fh.dirty_writeout(WRITEOUT_MARKSTORED)
            self._io._committed(wo)
        else:
            self._fh.dirty_writeout(flags)

    def __getattr__(self, name):            # prefault, drop_clean, ...
        if name.startswith('__') or name in ('_fh', '_io', '_tm', '_txn'):
            raise AttributeError(name)
        return getattr(self._fh, name)

    def close(self):
        """Close the handle (raises while views are alive); changes not
        committed are discarded."""
        self._conn_closed_it = False    # (closed by the user: stays closed)
        if self._fh.closed:
            return
        self._fh.close()
        self._io._handles.discard(self)
        self._unregister_synch()
        conn = self._conn()
        if conn is not None and not self._io._handles:
            forget_reads(conn)      # (reads ahead nobody waits for)

    def __repr__(self):
        return '<ZBigFileH of %r%s>' % (self.zfile, ' (closed)' if self._fh.closed else '')

    # -- helpers

    def _format(self):
        if self._fmt is not None:
            return self._fmt
        f = self.zfile.zblk_fmt
        if f is not None:
            return _check_fmt(f, 'ZBigFile.zblk_fmt')
        return _env_fmt()

    def _conn(self):
        return self.zfile._p_jar

    def _watch_conn_close(self):
        conn = self._conn()
        if conn is not None and conn is not self._watched:
            self._watched = conn
            conn.onCloseCallback(self._conn_closed)

    def _conn_closed(self):
        """The connection closes: close the pager handle too, unless views
        of it are alive (a handle is reopened on next use): its memory and
        address space come back at once, not when the gc finds the cycle."""
        self._watched = None
        try:
            self.close()
        except RuntimeError:        # views alive
            self._leave_txn()
        else:
            self._conn_closed_it = True

    def _leave_txn(self):
        """A clean handle whose connection closed leaves the transaction it
        joined (at fileh_open / mmap), so that transaction (which the closed
        connection does not end) does not keep it alive.  transaction has no
        public way to leave: its resource list is used, when it has one."""
        txn = self._txn
        if txn is None or self._fh.closed or self._fh.isdirty():
            return
        res = getattr(txn, '_resources', None)
        if isinstance(res, list) and txn.status == Status.ACTIVE \
                and not getattr(txn, '_savepoint2index', None):
            while self in res:
                res.remove(self)
            self._txn = None

    def _current_tm(self):
        conn = self._conn()
        if conn is None:
            return default_tm()
        tm = getattr(conn, 'transaction_manager', None)
        if tm is None:              # connection closed: keep what we had
            return self._tm if self._tm is not None else default_tm()
        return tm

    def _register_synch(self):
        tm = self._current_tm()
        if tm is self._tm:
            return
        self._unregister_synch()
        self._tm = tm
        self._txn = None        # a transaction of the old manager is not ours
        self._registering = True
        try:
            tm.registerSynch(self)
        finally:
            self._registering = False

    def _unregister_synch(self):
        if self._tm is not None:
            try:
                self._tm.unregisterSynch(self)
            except KeyError:
                pass
            self._tm = None

    def _join(self, txn):
        if txn is None or txn is self._txn or self._fh.closed:
            return
        if txn.status not in (Status.ACTIVE, Status.DOOMED):
            return
        txn.join(self)
        self._txn = txn

    def join_current(self):
        """Join the current transaction of our manager (if there is one).  A
        connection's manager is its owner's own (not thread-local): any thread
        may ask it for the owner's transaction.  A ZBigFile not in a database
        follows the default manager of its owner's thread, which only the
        owner can name."""
        if self._fh.closed:
            return
        conn = self._conn()
        if (conn is None or getattr(conn, 'transaction_manager', None) is None) \
                and not self._owns():
            return          # (our manager would be this thread's default one)
        self._register_synch()
        tm = self._tm
        if getattr(tm, 'explicit', False):
            try:
                txn = tm.get()
            except Exception:
                return
        else:
            txn = tm.get()
        self._join(txn)

    def _zfile_being_stored(self):
        """The Connection pickles our ZBigFile.  Follow its transaction manager
        from now on; if it is committing and we have not written out yet (the
        ZBigFile had no connection at tpc_begin), our pages go in now."""
        if self._fh.closed:
            return
        moved = self._current_tm() is not self._tm
        if moved:
            self._register_synch()
        self._watch_conn_close()
        try:
            txn = self._tm.get()
        except Exception:       # explicit manager without a transaction
            return
        if txn.status == Status.ACTIVE:         # a savepoint
            if moved:
                self._join(txn)
        elif (txn.status == Status.COMMITTING and self._wo is None
                and self._fh.isdirty()):
            wo = _Writeout(self._fh, self._format(), lazy=True, conn=self._conn())
            self._store(wo)
            if txn is self._txn:
                self._wo = wo           # our vote and afterCompletion finish it
            else:
                wo.wait_blobs()         # (no vote of ours in this commit)
                txn.addAfterCommitHook(self._late_commit_done, (wo, txn))

    def _late_commit_done(self, status, wo, txn):
        if self._fh.closed:
            return
        if status:
            self._fh.dirty_writeout(WRITEOUT_MARKSTORED)
            self._io._committed(wo)
        else:
            # we are not joined to txn, so its abort would not reach us:
            # discard now, the memory goes back to the database's state
            self._io._failed(wo)
            self._fh.dirty_discard()

    def _store(self, wo):
        io = self._io
        if io._wo is not None:
            raise RuntimeError('%r: nested writeout' % self)
        io._wo = wo
        try:
            self._fh.dirty_writeout(WRITEOUT_STORE)
        finally:
            io._wo = None
            io._written(wo, open_txn=not wo.lazy)
            wo.write_blobs()

    def _boundary(self, txn, sync):
        """New snapshot: once the Connection has processed its invalidations,
        drop the pages they concern."""
        conn = self._conn()
        if conn is not None and getattr(conn, 'opened', None):
            if not self._after(conn):
                # called before the Connection: make it take its new snapshot
                # now (its own call will find little or nothing new), and be
                # called after it from the next boundary on
                conn.newTransaction(txn, sync)
                self._move_after(conn)
        self._io._apply_invalidations()

    def _after(self, conn):
        """Is this synchronizer called after conn's?  (A WeakSet keeps the
        order of registration.)"""
        order = synch_order(self._tm)
        try:
            return order.index(id(self)) > order.index(id(conn))
        except (AttributeError, ValueError):
            return False

    def _move_after(self, conn):
        order = synch_order(self._tm)
        if order is None or id(conn) not in order:
            return
        self._registering = True
        try:
            self._tm.unregisterSynch(self)
            self._tm.registerSynch(self)
        finally:
            self._registering = False

    # -- ISynchronizer

    def newTransaction(self, txn):
        if self._registering or self._fh.closed:
            return
        self._io._owner = threading.get_ident()
        self._boundary(txn, True)
        self._join(txn)

    def beforeCompletion(self, txn):
        _STORING.on = True      # the Connection pickles objects from now on
        if self._fh.closed or not self._fh.isdirty():
            return
        if txn.status != Status.ACTIVE:     # e.g. abort after a failed commit
            return
        self._join(txn)
        conn = self._conn()
        if conn is not None:
            # the Connection must take part in this commit even if no other
            # object changed: storeblk registers objects with it in tpc_begin
            join_connection(conn, self.zfile)

    def afterCompletion(self, txn):
        _STORING.on = False
        self._io._owner = threading.get_ident()
        if txn.status == Status.COMMITTING:
            # the two-phase commit failed: the pages stay dirty, and we stay
            # joined, until the abort that must follow
            if txn is self._txn:
                wo, self._wo = self._wo, None
                if wo is not None:
                    self._io._failed(wo)
            return
        if txn is not self._txn:
            wo = None
        else:
            wo, self._wo = self._wo, None
            self._txn = None
        if self._fh.closed:
            return
        if wo is not None:
            if txn.status == Status.COMMITTED:
                wo.wait_blobs(quiet=True)       # (done at our vote already)
                self._fh.dirty_writeout(WRITEOUT_MARKSTORED)
                self._io._committed(wo)
            else:
                self._io._failed(wo)
            # ZODB's ObjectWriter, its Pickler and BytesIO form a cycle holding
            # the pickles of the records just written (a block each): a
            # big-data loop makes too few objects for the gc to run on its own,
            # so RSS would grow by the commit size each time.  They are young:
            # a generation-0 collection frees them, cheaply.  With other
            # threads running, a cycle still alive at one of their automatic
            # collections is promoted, and generation 2 may not be collected
            # for thousands of commits (the soak's appending process grew by
            # ~6 MiB a minute): a full collection at most once a second.
            _collect()
        self._register_synch()      # a new ZBigFile may just have got its jar
        if not getattr(self._tm, 'explicit', False):
            self._boundary(txn, False)

    # -- IDataManager

    @property
    def transaction_manager(self):
        return self._tm

    def sortKey(self):
        return 'wendelin_cy.ZBigFileH:%016x' % id(self)

    def abort(self, txn):
        if txn is not self._txn:
            return              # joined before moving to another manager
        wo, self._wo = self._wo, None
        if wo is not None:
            self._io._failed(wo)
        if not self._fh.closed:
            self._fh.dirty_discard()
        self._txn = None

    def tpc_begin(self, txn):
        if txn is not self._txn or self._fh.closed or not self._fh.isdirty():
            return
        if self.zfile._p_jar is None:
            # not in a database (yet): written out if and when the Connection
            # pickles the ZBigFile in this commit (ZBigFile.__getstate__)
            return
        wo = _Writeout(self._fh, self._format(), lazy=True, conn=self._conn())
        self._wo = wo
        self._store(wo)

    def commit(self, txn):
        pass

    def tpc_vote(self, txn):
        wo = self._wo
        if txn is not self._txn or wo is None:
            return
        wo.wait_blobs()
        if wo.blob_dir is not None:
            # the blob files of this commit (renamed into the blob directory
            # by the storage since) are durable before anyone finishes: one
            # syncfs for all of them and their directory entries
            fd = os.open(wo.blob_dir, os.O_RDONLY | os.O_CLOEXEC)
            try:
                virtmem.sync_filesystem(fd)     # (looked up here: tests replace it)
            finally:
                os.close(fd)

    def tpc_finish(self, txn):
        pass            # pages are marked stored in afterCompletion, once
                        # every participant has finished

    def tpc_abort(self, txn):
        if txn is not self._txn:
            return
        wo, self._wo = self._wo, None
        if wo is not None:
            self._io._failed(wo)
        # the pages stay dirty; the abort that must follow discards them

    def savepoint(self):
        # the Connection pickles changed objects for the savepoint, maybe
        # after us: views pickle as data until the transaction ends
        _STORING.on = True
        return _Savepoint(self)     # (a no-op one if the handle moved away)


class _Savepoint:
    """Dirty blocks of a handle copied to a temporary file."""

    def __init__(self, zfh):
        self.zfh = zfh
        fh = zfh._fh
        self.blocks = {}
        self.file = None
        self.txn = zfh._txn
        if fh.closed or self.txn is None:
            return
        blks = fh.dirty_blocks()
        if not blks:
            return
        f = self.file = tempfile.TemporaryFile(prefix='wendelin_cy-savepoint-')
        bs = fh.blksize
        for blk in blks:
            vma = fh.mmap(blk, 1)
            vma.prefault()          # write() on absent pages would get EFAULT
            mv = memoryview(vma)
            try:
                self.blocks[blk] = f.tell()
                f.write(mv)
            finally:
                mv.release()
                del vma
        assert f.tell() == bs * len(blks)

    def rollback(self):
        fh = self.zfh._fh
        if fh.closed or self.txn is not self.zfh._txn:
            return
        fh.dirty_discard()
        f = self.file
        for blk, pos in self.blocks.items():
            vma = fh.mmap(blk, 1)
            vma.prefault(write=True)    # readinto() must not fault (EFAULT)
            mv = memoryview(vma)
            try:
                f.seek(pos)
                if f.readinto(mv) != len(mv):
                    raise IOError('savepoint file truncated')
            finally:
                mv.release()
                del vma


def _close_handles_of(conn):
    """Close the handles of ZBigFiles of `conn` (used by dbclose), and the
    connections other threads load through (_zforeign).  A handle with live
    views stays open but stops following transactions."""
    close_readers(conn.db())
    for io in list(_IOS):
        if io._zfile._p_jar is conn:
            for h in list(io._handles):
                try:
                    h.close()
                except RuntimeError:
                    # views alive: it stays open, out of the connection's
                    # transactions; its changes go, as a closed handle's do
                    h._unregister_synch()
                    h._txn = None
                    h._fh.dirty_discard()
