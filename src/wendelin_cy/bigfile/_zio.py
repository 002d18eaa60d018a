"""_ZBigFileIO, the BigFile the pager sees for a ZBigFile: loadblk,
storeblk (the choice of format per block), prefetch, invalidation of the
blocks in RAM; and _Writeout, what one writeout changed."""

import os
import threading
import weakref

import numpy as np

from wendelin_cy.bigfile import BigFile, HOLE, MapFile
from wendelin_cy.ram import get_ram_budget
from wendelin_cy.storage import backend_of, records_sent
from wendelin_cy.storage.record import preadinto as _preadinto

from wendelin_cy.errors import CorruptBlockError
from wendelin_cy.storage.checksum import checks_on, digest

from ._zblk import (ZBlk0, ZBlk1, ZBlkSeg, ZData, _EXTENT, _OWNER, _blob_chunks, _blob_data,
                    _blob_path, _checked_extent, _keep_extent, _loaddata, _same_as_patched,
                    _seg_fields, corrupt,
                    _storage_of as _storage)
from ._txn import follows_this_thread
from ._zforeign import check_foreign, load_foreign
from ._zblk_io import (OVERLAY_MAX, SEG_BLOCKS, _OSPAGE, _blob_pool, _chunksize, _fmt_assigned,
                       _iszero, _ne_chunks, _open_blob_file, _overlay_chunksize, _read_page,
                       _same, _unlink_quiet, _write_blob_file, _written_pages, _zero_flags)

# overlays over a segment block are loaded as a mapping of the segment with
# their chunks as patches (MapFile(patches=...)); False: read and copied
_MAP_OVERLAYS = True

# every _ZBigFileIO (for dbclose)
_IOS = weakref.WeakSet()


class _Writeout:
    """What one dirty_writeout(STORE) changed, until the commit ends."""

    def __init__(self, fh, fmt, lazy, conn=None):
        self.fh = fh            # the core BigFileH whose pages are written
        self.conn = conn        # its ZODB connection (None: not known)
        self.fmt = fmt
        self.lazy = lazy        # read pages at pickling time (in a commit)
        # full blocks become Blobs ('blob'; 'auto' where the storage keeps
        # blobs in local files the pager can map)
        self.blobs = fmt == 'blob' or (fmt == 'auto' and backend_of(conn).blobs_local(conn))
        self.blob_dir = None    # set once a blob file was written (synced at vote)
        self.blob_todo = []     # (blk, fd, offset): blocks to write from the pages
        self.blob_futs = []     # their writes in flight
        self.blob_fds = []      # segment files open for writing
        self.seg = None         # (Blob, fd, number of blocks) being filled
        self.written = {}       # blk -> object now in blktab (None: hole)
        self.bases = {}         # blk -> base of the ZBlk1 now in blktab
        self.touched = []       # objects to turn into ghosts afterwards
        self.undo = []          # (blk, old) of blktab changes
        self.bumped = False

    def write_blobs(self):
        """Start filling the files of the new block blobs from the pages (after
        the pager's writeout: the pages are read through views of the handle,
        as lazy sources are), on two threads; wait_blobs() waits for them.  In
        a commit that is at our vote, so the writes overlap the rest of the
        commit (the Connection storing the records)."""
        todo, self.blob_todo = self.blob_todo, []
        self.seg = None
        if not todo:
            return
        try:
            # each segment file gets its size first: direct writes that extend
            # a file are serialized by the filesystem, those inside it are not
            size = {}
            for blk, fd, off in todo:
                size[fd] = max(size.get(fd, 0), off + self.fh.blksize)
            for fd, n in size.items():
                try:
                    os.posix_fallocate(fd, 0, n)
                except OSError:
                    os.ftruncate(fd, n)
            pool = _blob_pool()
            for blk, fd, off in todo:
                self.blob_futs.append(pool.submit(_write_blob_file, fd,
                                                  self.fh.mmap(blk, 1), off))
        except BaseException:
            self.wait_blobs(quiet=True)
            raise

    def wait_blobs(self, quiet=False):
        """Wait until every blob file is written; raise the first error (unless
        quiet).  Must come before the pages are marked stored or discarded."""
        futs, self.blob_futs = self.blob_futs, []
        err = None
        for f in futs:
            try:
                f.result()
            except BaseException as e:
                err = err or e
        fds, self.blob_fds = self.blob_fds, []
        for fd in fds:
            os.close(fd)
        if err is not None and not quiet:
            raise err

    def src(self, blk, off, size, buf):
        if self.lazy:
            fh, conn = self.fh, self.conn

            def read():
                # records are made one by one as the commit stores them: let
                # the storage hold this one back until the server has taken
                # enough of those sent before (ZEO: see storage.zeo)
                records_sent(conn, size, get_ram_budget())
                return _read_page(fh, blk, off, size)
            return read
        return bytes(buf[off:off + size]).rstrip(b'\0')




class _ZBigFileIO(BigFile):
    """The BigFile the pager sees for one in-memory ZBigFile object."""

    PRUNE_MIN = 256     # watch at least this many blocks before pruning
    _loadblk_fills_buf = True   # loadblk writes all of buf: the pager need not zero it

    def __init__(self, zfile):
        super().__init__(zfile.blksize)
        self._zfile = zfile     # (a cycle through zfile._v_io, for the gc)
        # weak: the pager's handle holds this object with a reference the
        # gc cannot see, so a strong one back would never be collected
        self._handles = weakref.WeakSet()
        self._loaded = {}       # blk -> ZBlk ghost (None for a hole) last loaded
        # blk -> ZBlkSeg whose file the pager mapped for the block at its last
        # load (the pages not written since are that file's: see _diff)
        self._mapped = {}
        self._pending = set()   # blocks invalidated, to drop at the boundary
        self._recheck = False   # blktab changed: compare _loaded against it
        self._wo = None         # _Writeout in progress
        # loads in other threads (_zforeign): the thread whose connection it
        # is, blk -> (ZBlk oid, snapshot) they loaded, blk -> ZBlk written out
        # and not committed yet (or committed, the snapshot not moved yet)
        self._owner = _first_owner(zfile)
        self._flock = threading.Lock()
        self._foreign = {}
        self._unc = {}
        self._unc_open = False  # ... by an explicit dirty_writeout
        self._segpaths = {}     # Blob oid -> its file: segments seen in this transaction
        self._segsizes = {}     # segment file -> its size, stat'ed in this transaction

    def __repr__(self):
        return '<_ZBigFileIO of %r>' % (self._zfile,)

    # -- pager callbacks

    def owns(self):
        """Is the calling thread the one of the connection?  (Found out on
        first use when the file was opened in another thread.)"""
        me = threading.get_ident()
        if self._owner is None:
            conn = self._zfile._p_jar
            if conn is None or follows_this_thread(conn) is not False:
                self._owner = me
        return me == self._owner

    def loadblk(self, blk, buf):
        try:
            self._mapped.pop(blk, None)
            if not self.owns():
                return load_foreign(self, blk, buf, self._load_obj)
            zblk = self._zfile.blktab.get(blk)
            self._track(blk, zblk)
            self._v_mapbase = None
            r = self._load_obj(zblk, buf)
            if type(r) is MapFile:
                # (a ZBlk1 maps its base)
                self._mapped[blk] = self._v_mapbase if type(zblk) is ZBlk1 else zblk
            return r
        except Exception as e:
            c = _corrupt_cause(e)
            if c is None:
                raise
            raise c.locate(blk, self.array_name()) from None

    def array_name(self):
        """The array (if a ZBigArray said so) and its ZBigFile, for errors."""
        a = self.__dict__.get('array')
        return '%s of %s' % (a, self._zfile) if a else repr(self._zfile)

    def _load_obj(self, zblk, buf):
        if zblk is None:
            return HOLE         # the pager maps zero pages: no 2 MiB of zeros copied
        elif type(zblk) is ZBlkSeg:
            return MapFile(*self._seg_extent(zblk))     # mapped, not copied
        elif type(zblk) is ZBlk1 and _MAP_OVERLAYS:
            # an overlay over a segment block: the segment mapped, its
            # chunks written over it by the pager
            mb = ZBlk1.mapfile(zblk, self.blksize, self._seg_extent)
            if mb is not None:
                self._v_mapbase = mb[1]
                return mb[0]
            ZBlk1.loadblkdata(zblk, buf)
        else:
            # through the class: an attribute of a ghost would load its state
            load = getattr(type(zblk), 'loadblkdata', None)
            if load is None:
                raise corrupt(zblk, 'not a block record: a %s in the block table'
                              % type(zblk).__name__)
            load(zblk, buf)

    def _seg_extent(self, z):
        """(path, offset) of ZBlkSeg z's bytes, checked as _checked_extent
        checks them.  The file of each segment (a Blob holding up to
        SEG_BLOCKS blocks, never rewritten) is looked up once per transaction,
        not once per block (that loaded the Blob's record and stat'ed its file
        every time: with the block's own record, about half of the time of a
        warm scan), and checked with one stat.  Anything not as expected (a
        digest to check, no size recorded, the file changed or gone) goes
        through _checked_extent, which says what is wrong.  Once loaded, a
        ZBlkSeg's extent is kept (_EXTENT; ZBlkSegs are never modified, the
        record's serial is checked too): a block loaded again, after its
        eviction, reads no record."""
        bs = self.blksize
        e = _EXTENT.get(z)
        if (e is not None and e[:2] == (z._p_serial, bs) and e[4] is not None
                and not (e[5] and checks_on(_storage(z)))):
            path, off, fsize = e[2:5]
            if self._size_is(path, fsize):
                return path, off
        seg, index, h, fsize = _seg_fields(z)
        if (fsize is None or type(index) is not int or index < 0
                or (h is not None and checks_on(_storage(z)))):
            return _checked_extent(z, bs)
        key = getattr(seg, '_p_oid', None)
        paths = self._segpaths
        path = paths.get(key) if key is not None else None
        if path is None:
            path = _blob_path(seg)
            if key is not None and not getattr(seg, '_p_blob_uncommitted', None):
                paths[key] = path
        off = index * bs
        if fsize < off + bs or not self._size_is(path, fsize):
            paths.pop(key, None)
            return _checked_extent(z, bs)
        _keep_extent(z, bs, path, off, fsize, h)
        return path, off

    def _size_is(self, path, fsize):
        """Is segment file `path` fsize bytes long?  Stat'ed once per
        transaction."""
        sizes = self._segsizes
        if sizes.get(path) == fsize:
            return True
        try:
            size = os.stat(path).st_size
        except OSError:
            return False
        if size != fsize:
            return False
        sizes[path] = size
        return True

    @property
    def readahead_max(self):
        """Read by the pager at fileh_open: with ZEO, not more blocks ahead than
        its client cache holds (blocks asked for beyond it would be pushed out
        before use, and loaded twice)."""
        conn = self._zfile._p_jar
        return backend_of(conn).max_ahead(conn.db().storage, self.blksize) if (
            conn is not None and getattr(conn, 'opened', None)) else None

    def prefetch(self, blk, n):
        """The pager: blocks [blk, blk+n) come next (sequential faults).

        The storage's backend decides (wendelin_cy.storage): FileStorage
        answers with where their payloads lie in the data file, and the
        pager's own thread reads them into RAM; ZEO: Connection.prefetch
        (asynchronous, into the client cache); RelStorage and in-memory
        storages: futures of the payloads, read by reader threads, which the
        pager copies into place in that thread, off the scan's own."""
        if not self.owns():
            return None         # (not read ahead from other threads' faults)
        zfile = self._zfile
        conn = zfile._p_jar
        if conn is None or not getattr(conn, 'opened', None):
            return None
        todo = []
        segs = []
        for b in range(blk, blk + n):
            z = zfile.blktab.get(b)
            if type(z) is ZBlkSeg:
                segs.append((b, z))
            elif isinstance(z, ZBlk0) and z._p_changed is None:  # a ghost: not read yet
                todo.append((b, z))
        ahead = self._seg_ahead(conn, segs) if segs else []
        if not todo:
            return ahead or None
        be = backend_of(conn)
        if be.reads_extents:
            extents = []
            check = checks_on(conn.db().storage)
            for b, z in todo:
                e = be.extent(z)
                if e is not None:
                    # watched as if loaded: if another transaction changes the
                    # block, our boundary invalidates it, which drops the
                    # request, or the page it became
                    self._track(b, z)
                    if check and e[3] is not None:
                        # content checks: read and checked in a thread of
                        # ours (the pager's readahead does not hash)
                        extents.append((b, _blob_pool().submit(_read_checked, *e)))
                    else:
                        extents.append((b,) + e[:3])
            return ahead + extents
        futs = be.prefetch(conn, [z._p_oid for _, z in todo])
        out = ahead
        for (b, z), fut in zip(todo, futs):
            self._track(b, z)           # (as for extents, above)
            out.append((b, fut))
        return out or None

    def _seg_ahead(self, conn, segs):
        """What prefetch answers for the segment blocks `segs` [(blk,
        ZBlkSeg)]: (blk, MapFile, self._placed), exactly what loadblk would
        answer, so that the pager may map those already in the page cache at
        once (readahead.pxi, "Mapping ahead"); with content checks on, where
        they lie only (_seg_ahead: brought into the page cache; each block's
        own load checks it).  A block whose record or file is not right is
        left out (its own load reports it)."""
        if checks_on(conn.db().storage):
            return _seg_ahead(segs, self.blksize, self._segpaths)
        out = []
        placed = self._placed
        for b, z in segs:
            try:
                out.append((b, MapFile(*self._seg_extent(z)), placed))
            except Exception:
                continue
        return out

    def _placed(self, blk):
        """The pager mapped block blk ahead from what prefetch answered: kept
        track of as loadblk keeps track of the blocks it maps."""
        z = self._zfile.blktab.get(blk)
        self._track(blk, z)
        self._mapped[blk] = z

    def _track(self, blk, zblk, base=None):
        m = self._mapped.get(blk)
        # (`base`: of the ZBlk1 zblk that we just wrote over the block mapped,
        # whose pages stay those of the file)
        if m is not None and m is not zblk and base is not m:
            del self._mapped[blk]
        old = self._loaded.get(blk)
        if old is not None and old is not zblk:
            if _OWNER.get(old, (None, None))[1] == blk:
                del _OWNER[old]
        self._loaded[blk] = zblk
        if zblk is not None:
            _OWNER[zblk] = (weakref.ref(self), blk)

    def storeblk(self, blk, buf):
        wo = self._wo
        if wo is None:
            raise RuntimeError('%r: storeblk outside of a ZBigFileH writeout' % self)
        zfile = self._zfile
        blktab = zfile.blktab
        old = blktab.get(blk)
        bs = len(buf)
        fmt = wo.fmt
        # a zero block is a hole, except with wendelin.core's knob
        # file_zodb.ZBlk_fmt_write = 'ZBlk0'/'ZBlk1'/'blob' assigned: then it is
        # stored as an (empty) block of that format, as wendelin.core does
        if _iszero(buf) and not (fmt != 'auto' and _fmt_assigned()):
            if old is not None:
                self._set(wo, blk, None, old)
            return
        cs = _chunksize(bs)
        if fmt == 'blob':
            if type(old) is ZBlkSeg and _same(buf, _blob_data(old, bs)):
                return                  # same bytes: nothing to write
            self._newB(wo, blk, old, buf)
            return
        if fmt == 'ZBlk0':
            self._store0(wo, blk, old, buf, ZBlk0)
            return

        # ZBlk1 and auto need to know which chunks changed
        if type(old) is ZBlk1:
            cs = old.chunksize      # its own (overlays of older versions: 32 KiB chunks)
            if type(cs) is not int or cs <= 0 or bs % cs:
                raise corrupt(old, 'ZBlk1 chunk size %r does not divide the block size %d'
                              % (cs, bs))
        elif fmt == 'auto' and old is not None:
            cs = _overlay_chunksize(bs)     # (a ZBlk1 over old, if it changed little)
        nch = -(-bs // cs)
        if fmt == 'ZBlk1' and not (type(old) is ZBlk1 and old.base is None):
            # stored in another format (or not at all): rewritten as a ZBlk1
            # even when its bytes did not change
            cs = _chunksize(bs)
            nch = -(-bs // cs)
            self._new1(wo, blk, old, buf, cs, nch, _zero_flags(buf, cs))
            return
        changed, zero, same_base = _diff(buf, old, cs, nch, self._written_hint(blk, old, buf))
        if not changed:
            return
        if fmt == 'ZBlk1':
            self._update1(wo, blk, old, changed, zero, same_base, buf, cs)
            return

        # auto: a block without base is written whole when more than half of
        # its chunks changed; an overlay (ZBlk1 over a base) only while it
        # stays within 1/OVERLAY_MAX of the block (its reads cost one small
        # record per chunk, on top of the base)
        half = nch / 2
        limit = bs // OVERLAY_MAX
        if old is None:
            if nch - sum(zero) > half:          # mostly filled
                self._full(wo, blk, old, buf)
            else:                               # sparse
                self._new1(wo, blk, old, buf, cs, nch, zero)
        elif type(old) in (ZBlk0, ZBlkSeg):
            if len(changed) * cs > limit:
                self._full(wo, blk, old, buf)
            else:
                # the new ZBlk1 keeps old's bytes as its base: a commit that
                # changed old meanwhile must conflict with ours
                jar = old._p_jar
                if jar is not None:
                    if old._p_serial == b'\0' * 8:     # a ghost never loaded: the
                        old._p_activate()               # serial it was read at
                        old._p_deactivate()
                    jar.readCurrent(old)
                z1 = ZBlk1(cs, base=old)
                wo.bases[blk] = old
                for i in changed:
                    zd = ZData()
                    zd._set_src(wo.src(blk, i * cs, cs, buf))
                    z1.chunktab[i * cs] = zd
                self._set(wo, blk, z1, old)
        else:   # ZBlk1
            if old.base is None:
                if len(changed) > half:
                    self._full(wo, blk, old, buf)
                else:
                    self._update1(wo, blk, old, changed, zero, same_base, buf, cs)
            else:
                overlay = set(k // cs for k in old.chunktab.keys())
                for i in changed:
                    if same_base[i]:
                        overlay.discard(i)
                    else:
                        overlay.add(i)
                if len(overlay) * cs > limit or len(changed) > half:
                    self._full(wo, blk, old, buf)
                else:
                    self._update1(wo, blk, old, changed, zero, same_base, buf, cs)

    # -- storeblk helpers

    def _written_hint(self, blk, old, buf):
        """Which pages of block blk may differ from the stored segment block
        under it (`old`, or the base of the ZBlk1 `old`), from the kernel:
        the pager mapped that file privately at the block's last load, and a
        page not written since is still the file's (_written_pages); None if
        not known.  (With one handle only: another handle of the file may have
        loaded the block from another object meanwhile.)"""
        m = self._mapped.get(blk)
        if m is None or len(self._handles) > 1:
            return None
        if old is not m and not (type(old) is ZBlk1 and old.base is m):
            return None
        return _written_pages(buf)

    def _set(self, wo, blk, new, old):
        """blktab[blk] = new (None: delete); bump ZBigFile.rev once."""
        zfile = self._zfile
        if new is None:
            del zfile.blktab[blk]
        else:
            zfile.blktab[blk] = new
            wo.touched.append(new)
            if isinstance(new, ZBlk1):
                wo.touched.extend(new.chunktab.values())
        wo.written[blk] = new
        wo.undo.append((blk, old))
        if not wo.bumped:
            zfile.rev = zfile.__dict__.get('rev', 0) + 1
            wo.bumped = True

    def _new0(self, wo, blk, old, buf):
        new = ZBlk0()
        new._set_src(wo.src(blk, 0, len(buf), buf))
        self._set(wo, blk, new, old)

    def _full(self, wo, blk, old, buf):
        """auto: the block is written whole -> a ZBlkSeg where the storage maps
        blobs, else a ZBlk0 (rewritten in place if it is one)."""
        if wo.blobs:
            self._newB(wo, blk, old, buf)
        elif type(old) is ZBlk0:
            self._rewrite0(wo, blk, old, buf)
        else:
            self._new0(wo, blk, old, buf)

    def _newB(self, wo, blk, old, buf):
        """blktab[blk] = a new ZBlkSeg in this commit's segment, with the
        bytes of the page (written by write_blobs: no copy stays in RAM)."""
        jar = self._zfile._p_jar
        be = backend_of(jar)
        d = be.blob_dir(jar) if jar is not None else None
        if d is None:
            raise ValueError(
                "%r: ZBlk format 'blob' needs a storage with blobs (e.g. "
                "dbopen(path), or FileStorage(path, blob_dir=...)); this one, "
                "%r, has none" % (self._zfile, jar.db().storage if jar is not None else None))
        if not wo.blobs:                # (no new blobs here: see below)
            self._full(wo, blk, old, buf)
            return
        # The file is made in the storage's own tmp directory, so that the
        # commit renames it into place (Blob.open('w') would make it in the
        # system's tmp dir while the Blob has no connection, and the
        # Connection cannot be given new objects in the middle of a commit).
        # The blocks written whole in one commit go, up to SEG_BLOCKS at a
        # time, into one blob file (a segment), each block in a ZBlkSeg that
        # names its place: one file and one blob directory per segment instead
        # of per block (file and directory creation cost about as much as
        # writing the 2 MiB here, and a big array would make millions of
        # files).  The bytes are written once the pager's writeout is over, by
        # _Writeout.write_blobs, on two threads.
        seg = wo.seg
        if seg is None or seg[2] >= SEG_BLOCKS:
            fd, path = _open_blob_file(d)
            sblob = be.new_blob(path)
            if sblob is None:
                # no new blobs from our files here (the storage fast paths are
                # off, or Blob changed): the block is written whole, as a ZBlk0
                os.close(fd)
                _unlink_quiet(path)
                wo.blobs = False
                self._full(wo, blk, old, buf)
                return
            wo.blob_fds.append(fd)
            weakref.finalize(sblob, _unlink_quiet, path)    # if never committed
            seg = wo.seg = [sblob, fd, 0]
        bs = len(buf)
        new = ZBlkSeg(seg[0], seg[2], digest(buf), lambda seg=seg: seg[2] * bs)
        wo.blob_todo.append((blk, seg[1], seg[2] * len(buf)))
        seg[2] += 1
        wo.blob_dir = d
        self._set(wo, blk, new, old)

    def _store0(self, wo, blk, old, buf, cls):
        """Store block blk as one record of class `cls` (a ZBlk0): the old
        record is rewritten in place, or kept when its bytes are the same."""
        if type(old) is cls:
            old._p_activate()
            data = old.__dict__.get('_data')
            if data is not None and _same(buf, data):
                if not old._p_changed:
                    old._p_deactivate()
                return                  # same bytes: nothing to write
            self._rewrite0(wo, blk, old, buf)
        else:
            new = cls()
            new._set_src(wo.src(blk, 0, len(buf), buf))
            self._set(wo, blk, new, old)

    def _rewrite0(self, wo, blk, old, buf):
        self._in_place()
        old._set_src(wo.src(blk, 0, len(buf), buf))
        wo.touched.append(old)
        wo.written[blk] = old

    def _in_place(self):
        """A block object is changed in place (blktab not touched): a commit
        that meanwhile replaced that block's object in blktab (a ZBlk1 over
        it, say) would hide our change without any conflict.  Such commits
        always change the ZBigFile (rev): ask for a conflict if it did."""
        zfile = self._zfile
        jar = zfile._p_jar
        if jar is not None and zfile._p_oid is not None:
            jar.readCurrent(zfile)

    def _new1(self, wo, blk, old, buf, cs, nch, zero):
        z1 = ZBlk1(cs)
        for i in range(nch):
            if not zero[i]:
                zd = ZData()
                zd._set_src(wo.src(blk, i * cs, cs, buf))
                z1.chunktab[i * cs] = zd
        self._set(wo, blk, z1, old)

    def _update1(self, wo, blk, z1, changed, zero, same_base, buf, cs):
        self._in_place()
        tab = z1.chunktab
        base = z1.base
        for i in changed:
            off = i * cs
            zd = tab.get(off)
            if (base is None and zero[i]) or (base is not None and same_base[i]):
                if zd is not None:
                    del tab[off]
                continue
            if zd is None:
                zd = tab[off] = ZData()
            zd._set_src(wo.src(blk, off, cs, buf))
            wo.touched.append(zd)
        z1.rev = z1.rev + 1         # readers watch the ZBlk1 object only
        wo.touched.append(z1)
        wo.written[blk] = z1
        if base is not None:
            wo.bases[blk] = base

    # -- after a writeout

    def _committed(self, wo):
        """The transaction that stored wo is durable: forget the page refs."""
        self._segpaths.clear()
        self._segsizes.clear()
        for blk, z in wo.written.items():
            self._track(blk, z, wo.bases.get(blk))
        for obj in wo.touched:
            d = obj.__dict__
            d.pop('_v_src', None)
            d.pop('_v_old', None)
            if obj._p_jar is not None and not obj._p_changed:
                obj._p_deactivate()

    def _written(self, wo, open_txn):
        """The pager's writeout of wo is over: other threads load its blocks
        from these objects (or at the commit) until the next boundary."""
        self._unc.update(wo.written)
        self._unc_open = self._unc_open or open_txn

    def _failed(self, wo):
        wo.wait_blobs(quiet=True)       # (no thread reads the pages any more)
        self._failed1(wo)

    def _failed1(self, wo):
        """The commit of wo failed.  ZODB invalidates the objects it had, and
        disowns those it was adding; undo our changes to the latter."""
        self._segpaths.clear()
        self._segsizes.clear()
        self._unc.clear()
        self._unc_open = False
        for obj in wo.touched:
            d = obj.__dict__
            d.pop('_v_src', None)
            if '_v_old' in d:
                d['_data'] = d.pop('_v_old')
        if self._zfile._p_jar is None:      # the ZBigFile itself was new
            tab = self._zfile.blktab
            for blk, old in reversed(wo.undo):
                if old is None:
                    tab.pop(blk, None)
                else:
                    tab[blk] = old
        self._recheck = True

    # -- transaction boundary

    def _prune(self):
        """Stop watching blocks no handle holds any more (reclaimed by the
        pager): they are loaded afresh next time.  Keeps _loaded about as big
        as what is in RAM, not as big as all that was ever read."""
        if len(self._loaded) < self.PRUNE_MIN:
            return
        held = set()
        for h in list(self._handles):
            fh = h._fh
            if fh.closed:
                continue
            r = _resident(fh)
            if r is None:
                return
            held.update(r)
            held.update(fh.dirty_blocks())
        if len(self._loaded) < 2 * len(held) + self.PRUNE_MIN:
            return
        for blk in [b for b in self._loaded if b not in held]:
            self._mapped.pop(blk, None)
            z = self._loaded.pop(blk)
            if z is not None and _OWNER.get(z, (None, None))[1] == blk:
                del _OWNER[z]

    def _invalidated(self, blk):
        """blktab[blk] changed (ZBlk._p_invalidate, during the Connection's
        invalidation pass): drop the block's clean pages now - that reads
        nothing - and remember it if a handle has it dirty."""
        self._untrack(blk)
        for h in list(self._handles):
            fh = h._fh
            if fh is None or fh.closed:
                continue
            try:
                fh.invalidate_page(blk)
            except RuntimeError:        # dirty: decided at the boundary
                self._pending.add(blk)

    def _untrack(self, blk):
        """Stop watching block blk for invalidations."""
        self._mapped.pop(blk, None)
        z = self._loaded.pop(blk, None)
        if z is not None and _OWNER.get(z, (None, None))[1] == blk:
            del _OWNER[z]

    def _apply_invalidations(self):
        self._segpaths.clear()
        self._segsizes.clear()
        self._prune()
        conn = self._zfile._p_jar
        self._unc.clear()                   # (the snapshot moved past them)
        self._unc_open = False
        pending, self._pending = self._pending, set()
        pending |= check_foreign(self, conn if getattr(conn, 'opened', None) else None)
        if self._recheck:
            self._recheck = False
            blktab = self._zfile.blktab
            for blk, zblk in list(self._loaded.items()):
                if blktab.get(blk) is not zblk:
                    pending.add(blk)
        if not pending:
            return
        for blk in pending:
            self._untrack(blk)
        for h in list(self._handles):
            fh = h._fh
            if fh is None or fh.closed:
                continue
            dirty = set(fh.dirty_blocks())
            for blk in pending:
                if blk not in dirty:
                    fh.invalidate_page(blk)


def _seg_ahead(segs, bs, paths):
    """[(blk, MapFile)]: where the segment blocks `segs` [(blk, ZBlkSeg)],
    coming next in a scan, lie, for the pager to bring into the page cache
    ahead of the scan (readahead.pxi, "Readahead into the page cache").  Each
    ZBlkSeg is left loaded (its record is small; the block's own loadblk then
    finds it so and reads nothing); each segment's file is looked up once
    (paths: Blob oid -> file, of _ZBigFileIO._seg_extent).  Advice only: a
    block whose record or file is not right is skipped (its own load reports
    it)."""
    out = []
    for b, z in segs:
        try:
            z._p_activate()
            d = z.__dict__
            seg, index = d['seg'], d['index']
            if type(index) is not int or index < 0:
                continue
            key = getattr(seg, '_p_oid', None)
            path = paths.get(key) if key is not None else None
            if path is None:
                path = _blob_path(seg)
                if key is not None and not getattr(seg, '_p_blob_uncommitted', None):
                    paths[key] = path
            out.append((b, MapFile(path, index * bs)))
        except Exception:
            continue
    return out


def _corrupt_cause(e):
    """The CorruptBlockError that `e` is or comes from (ZODB wraps errors of
    __setstate__ in StateLoadError), or None."""
    for _ in range(8):
        if e is None or isinstance(e, CorruptBlockError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _read_checked(fd, off, n, h):
    """(A reader thread.)  The n bytes at off in fd if their digest is h,
    else None (the fault's own load then reports the block)."""
    buf = bytearray(n)
    try:
        if not _preadinto(fd, buf, off, n) or digest(buf) != h:
            return None
    except OSError:
        return None
    return buf


def _first_owner(zfile):
    """The thread of zfile's connection if it is this one or cannot be told,
    None if the connection follows another thread's transactions (the file
    was first opened by a worker: the owner is found on its first use)."""
    conn = zfile._p_jar
    if conn is not None and follows_this_thread(conn) is False:
        return None
    return threading.get_ident()


def _resident(fh):
    """Blocks in RAM in the core handle fh (None if it cannot tell)."""
    f = getattr(fh, 'resident_blocks', None)
    return None if f is None else f()


def _diff(buf, old, cs, nch, written=None):
    """Compare buf with the stored block `old` chunk by chunk.

    -> (changed chunk indices, zero[i]: new chunk i is all zeros,
        same_base[i]: new chunk i equals the base chunk of a ZBlk1 with base).
    The whole block is compared with a whole stored one (ZBlk0, ZBlkSeg, the
    base of a ZBlk1) in one vectorized pass; chunk records one by one.  If
    `written` (bool per 4 KiB page, see _ZBigFileIO._written_hint) says that
    few pages may differ from the segment block that is `old` or its base,
    only those are compared (read from the file).
    Objects activated to compare are turned back into ghosts.
    """
    n = len(buf)
    same_base = [False] * nch
    if old is None:             # a new block: only which chunks are zero
        zero = _zero_flags(buf, cs)
        return [i for i in range(nch) if not zero[i]], zero, same_base
    if type(old) is ZBlk0:
        changed = np.flatnonzero(_ne_chunks(buf, _loaddata(old), cs)).tolist()
        return changed, _zero_of(buf, cs, nch, changed), same_base
    if type(old) is ZBlkSeg:
        changed = np.flatnonzero(_ne_seg(buf, old, cs, nch, written)).tolist()
        return changed, _zero_of(buf, cs, nch, changed), same_base
    # ZBlk1: chunks in its table against their records, the others against
    # the base (zeros without base)
    base = old.base
    if base is not None:
        if type(base) is ZBlkSeg:
            ne_base = _ne_seg(buf, base, cs, nch, written)
        else:
            ne_base = _ne_chunks(buf, _loaddata(base), cs)
        same_base = (~ne_base).tolist()
        zero = None
    else:
        zero = _zero_flags(buf, cs)
        ne_base = ~np.array(zero, dtype=bool)
    overlay = {}
    for off, zd in old.chunktab.items():
        if type(off) is int and 0 <= off < n and off % cs == 0:
            overlay[off // cs] = zd
    changed = set(np.flatnonzero(ne_base).tolist())
    changed.difference_update(overlay)
    with memoryview(buf) as mv:
        for i, zd in overlay.items():
            chunk = mv[i * cs:min((i + 1) * cs, n)]
            same = _same_as_patched(zd, chunk) if len(chunk) == cs else None
            if same is None:
                same = _same(chunk, _loaddata(zd))
            if not same:
                changed.add(i)
            del chunk
    changed = sorted(changed)
    return changed, zero if zero is not None else _zero_of(buf, cs, nch, changed), same_base


def _zero_of(buf, cs, nch, idx):
    """zero[i] of _diff, for the chunks idx only (False for the others)."""
    zero = [False] * nch
    n = len(buf)
    with memoryview(buf) as mv:
        for i in idx:
            zero[i] = _iszero(mv[i * cs:min((i + 1) * cs, n)])
    return zero


def _ne_seg(buf, z, cs, nch, written):
    """_ne_chunks of buf against the segment block ZBlkSeg `z`: only the
    chunks that `written` (None: all) says may differ are compared, read from
    the file, if they are few; the whole block otherwise."""
    n = len(buf)
    if written is not None and cs % _OSPAGE == 0 and nch * cs == n:
        cand = np.flatnonzero(written.reshape(nch, cs // _OSPAGE).any(axis=1)).tolist()
        if len(cand) * OVERLAY_MAX <= nch:
            ne = np.zeros(nch, dtype=bool)
            with memoryview(buf) as mv:
                for i, data in zip(cand, _blob_chunks(z, n, cand, cs)):
                    ne[i] = not _same(mv[i * cs:(i + 1) * cs], data)
            return ne
    return _ne_chunks(buf, _blob_data(z, n), cs)
