# api.pxi: the Python classes BigFile, BigFileH (a file handle: one Region)
# and VMA (a window of a handle, exporting a buffer), and the translation of
# pager error codes into Python exceptions.  These are the entry points: they
# hold the GIL and take g_lock only around C-level work.

cdef int64_t DEFAULT_RESERVE_BYTES = 64 << 30   # address space of a handle (no memory)
cdef int64_t RESERVE_MIN_BLOCKS = 64            # ... but room for this many blocks
cdef int64_t USER_ADDRESS_SPACE = 1 << 47       # x86-64 / arm64 user space: 128 TiB
cdef int64_t BLKSIZE_MAX = 1 << 30              # 1 GiB
cdef int64_t BLOCKS_MAX = 1 << 40               # block numbers of a mapping, prefault
cdef int64_t RA_MAX_LIMIT = 1 << 20             # BigFile.readahead_max is clamped to it

_LOADERR_CLASSES = {}

def _load_error(e, blk, bigfile):
    """The exception loadblk raised -> a wendelin_cy.LoadError naming the block
    and the file, that is also an instance of e's class where Python allows
    (so ``except OSError`` / ``except KeyError`` / ``except LoadError`` all
    work).  Not exceptions that are not errors (KeyboardInterrupt, ...)."""
    from wendelin_cy.errors import LoadError
    if isinstance(e, LoadError) or not isinstance(e, Exception):
        return e
    msg = "cannot load block %d of %r: %s: %s" % (blk, bigfile, type(e).__name__, e)
    cls = type(e)
    sub = _LOADERR_CLASSES.get(cls)
    if sub is None:
        try:
            sub = type("LoadError", (LoadError, cls), {"__module__": "wendelin_cy.errors"})
        except TypeError:           # incompatible layouts: a plain LoadError
            sub = LoadError
        _LOADERR_CLASSES[cls] = sub
    try:
        err = sub(msg)
    except Exception:
        err = LoadError(msg)
    err.blk = blk
    err.bigfile = bigfile
    return err


def _raise_rc(int rc, blk, fileh):
    if rc == E_CLOSED:
        raise ValueError("file handle is closed")
    if rc == E_FORKED:
        raise RuntimeError("block %d of %r is not in RAM in this forked child; reopen the "
                           "file (or database) in the child" % (blk, fileh))
    if rc == E_RECURSE:
        raise RuntimeError("loadblk of block %d touched the block it is loading" % blk)
    if rc == E_BUFKEPT:
        raise BufferError("views of loadblk's buffer outlived it and no memory was "
                          "left to give block %d a copy" % blk)
    if rc == ENOMEM:
        raise MemoryError("cannot map block %d of %r: out of memory or of kernel "
                          "mappings (vm.max_map_count)" % (blk, fileh))
    raise OSError(rc, "cannot load block %d of %r: %s" % (blk, fileh, _os.strerror(rc)))


cdef class BigFile:
    """A file of fixed-size blocks, served to the pager.

    Subclass it and define ``loadblk(blk, buf)`` (fill the writable memoryview
    ``buf`` of ``blksize`` bytes; bytes it leaves unwritten read as zeros) and
    ``storeblk(blk, buf)`` (persist the read-only memoryview ``buf``).
    Optionally ``readahead_max``: read when a handle is opened, at most that
    many blocks are asked for ahead (e.g. what a storage's cache holds).
    Optionally ``prefetch(blk, n)``: the pager saw sequential access and will
    soon load blocks [blk, blk+n); start fetching them in the background, or
    return their extents ``[(blk, fd, offset, nbytes), ...]`` (where each
    block's bytes lie in a file; the rest of the block reads as zeros) for the
    pager's readahead thread to read into RAM, or ``[(blk, future), ...]``:
    a ``concurrent.futures.Future`` (loading in a thread of the BigFile's
    own) whose result is the block's bytes (or None), which the pager copies
    into the block, in the thread that completes the future, as long as the
    block was not touched, written or invalidated meanwhile; or ``[(blk,
    MapFile), ...]``: where blocks lie in files (consecutive blocks of one file
    are brought into the page cache by the pager's readahead thread), and
    ``(blk, MapFile, placed)`` when loadblk would answer exactly that MapFile:
    blocks whose bytes are in the page cache are then mapped at once, without
    a fault each, and ``placed(blk)`` is called for each of them (the
    bookkeeping loadblk would do).  It is advice: errors are
    reported once and ignored.  Instead of filling ``buf``, loadblk may return
    ``HOLE`` (all zeros) or ``MapFile(path, offset)`` (the block is that part
    of an immutable file: mapped without a copy).  loadblk may
    run inside a page fault, in any thread, with the GIL taken for it: it must not
    touch the block it is loading, and must not keep ``buf``.
    """
    cdef readonly size_t blksize
    cdef int _direct_fd
    cdef int64_t _direct_off
    cdef object __weakref__

    def __cinit__(self, *args, **kw):
        self._direct_fd = -1
        # wendelin.core's BigFile takes blksize in __new__: subclasses there
        # write ``obj = BigFile.__new__(cls, blksize)`` in their own __new__
        if len(args) == 1 and not kw and type(args[0]) is int:
            try:
                self._set_blksize(args[0])
            except ValueError:
                pass            # __init__ reports it

    def __init__(self, *args, **kw):
        # BigFile(blksize) / BigFile.__init__(self, blksize) sets it; other
        # arguments are a subclass's own, passed on by type.__call__ after the
        # subclass's __new__ gave blksize to BigFile.__new__ (wendelin.core's
        # way), and are ignored as object.__init__ would
        if not args and list(kw) == ["blksize"]:
            self._set_blksize(kw["blksize"])
        elif len(args) == 1 and not kw and not (self.blksize and type(args[0]) is not int):
            self._set_blksize(args[0])
        elif not self.blksize:
            if kw or len(args) != 1:
                raise TypeError("BigFile.__init__(blksize): give exactly blksize, got %d "
                                "positional and %d keyword arguments" % (len(args), len(kw)))

    def _set_blksize(self, blksize):
        if isinstance(blksize, bool) or not isinstance(blksize, int):
            raise TypeError("blksize must be an int, not %s" % type(blksize).__name__)
        if blksize <= 0 or blksize % OSPAGE:
            raise ValueError("blksize must be a positive multiple of the page size (%d), "
                             "got %d" % (OSPAGE, blksize))
        if blksize > BLKSIZE_MAX:
            raise ValueError("blksize must be at most 1 GiB, got %d" % blksize)
        self.blksize = blksize

    def _set_direct_fd(self, int fd, int64_t offset=0):
        """Let the pager pread() blocks from fd itself, without the GIL (the lean
        load path of local files).  fd must stay open while handles are open."""
        self._direct_fd = fd
        self._direct_off = offset

    def loadblk(self, blk, buf):
        raise NotImplementedError("%s.loadblk" % type(self).__name__)

    def storeblk(self, blk, buf):
        raise NotImplementedError("%s.storeblk" % type(self).__name__)

    def fileh_open(self, reserve=None):
        """Open a file handle: an address reservation the blocks are paged into."""
        return BigFileH(self, reserve)


def _default_reserve():
    v = _os.environ.get("WENDELIN_CY_VMA_RESERVE")
    if not v:
        return DEFAULT_RESERVE_BYTES
    from wendelin_cy._units import parse_size
    return parse_size(v)

DEFAULT_RESERVE = _default_reserve()


# no_gc_clear: the region borrows self.bigfile, so it must stay set until
# __dealloc__ has closed the region (a fault may be using it); cycles through
# a BigFile subclass are still collected, by clearing the other objects.
@cython.no_gc_clear
cdef class BigFileH:
    """An open handle of a BigFile: blocks are paged into one address reservation.

    The reservation is ``reserve`` bytes (default 64 GiB, or
    ``$WENDELIN_CY_VMA_RESERVE``), address space only: it costs no memory.  A file
    mapped beyond it grows the reservation in place when the addresses after it
    are free, else mmap() raises MemoryError: open with a larger ``reserve``."""
    cdef Region* r
    cdef readonly object bigfile
    cdef readonly size_t blksize
    cdef int nvma
    cdef object _dirty_hook
    cdef object __weakref__

    def __cinit__(self, BigFile bigfile, reserve=None):
        cdef size_t bs, size
        cdef Region* r
        cdef char* base
        if bigfile.blksize == 0:
            raise ValueError("%r: BigFile.__init__(blksize) was not called" % (bigfile,))
        bs = bigfile.blksize
        if reserve is None:
            reserve = max(DEFAULT_RESERVE, bs * RESERVE_MIN_BLOCKS)
        reserve = _index(reserve, "reserve")
        if reserve <= 0:
            raise ValueError("reserve must be positive")
        if reserve > USER_ADDRESS_SPACE:
            raise MemoryError("cannot reserve %d bytes of address space (the user address "
                              "space is 128 TiB)" % reserve)
        size = ((<size_t>reserve + bs - 1) // bs) * bs
        size = ((size + HUGE - 1) // HUGE) * HUGE
        size = (size // bs) * bs
        if size == 0:
            size = bs
        install_handler()
        base = reserve_region(size)
        if base == NULL:
            raise MemoryError("cannot reserve %d bytes of address space" % size)
        r = <Region*>calloc(1, sizeof(Region))
        if r == NULL:
            munmap(base, size)
            raise MemoryError()
        r.base = base
        r.size = size
        r.blksize = bs
        r.nblk = size // bs
        r.pages = <Page**>calloc(r.nblk, sizeof(Page*))
        if r.pages == NULL:
            munmap(base, size)
            free(r)
            raise MemoryError()
        r.bigfile = <PyObject*>bigfile      # borrowed: self.bigfile keeps it alive
        r.fileh = <PyObject*>self
        r.direct_fd = bigfile._direct_fd
        r.direct_off = bigfile._direct_off
        r.last_load = -2
        r.has_prefetch = 1 if callable(getattr(bigfile, "prefetch", None)) else 0
        r.fills_buf = 1 if getattr(bigfile, "_loadblk_fills_buf", False) else 0
        ra_max = getattr(bigfile, "readahead_max", None)
        r.ra_max = max(0, min(int(ra_max), RA_MAX_LIMIT)) if ra_max else 0
        lock()
        rc = region_insert(r)
        unlock()
        if rc != 0:
            munmap(base, size)
            free(r.pages)
            free(r)
            raise MemoryError()
        self.r = r
        self.bigfile = bigfile
        self.blksize = bs

    cdef Region* _region(self) except NULL:
        if self.r == NULL:
            raise ValueError("file handle is closed")
        return self.r

    cdef _ra_place(self, int64_t blk, uint64_t gen, data):
        """Make `data` (the bytes of block blk, read ahead at generation gen;
        shorter: zeros follow) the block's page, unless it is stale."""
        cdef Region* r = self.r
        cdef Page* p
        cdef char* slot = NULL
        cdef const unsigned char[::1] src = memoryview(data).cast("B")
        cdef size_t n = src.shape[0]
        cdef const unsigned char* sp = &src[0] if n else NULL
        if r == NULL or n > r.blksize:
            return
        lock()                  # (the GIL is held: close() cannot free r now)
        r.busy += 1
        unlock()
        with nogil:
            lock()
            p = ra_begin(r, blk, gen, &slot)
            unlock()
            if p != NULL:
                copy_pad(<char*>slot, r.blksize, <const char*>sp, n)
                lock()
                ra_finish(r, p, slot, gen, 0)
                unlock()
            lock()
            r.busy -= 1
            notify()
            unlock()

    cdef int _grow(self, int64_t nblk) except -1:
        """Extend the reservation in place to hold nblk blocks."""
        cdef Region* r = self.r
        cdef size_t want = max(<size_t>nblk * r.blksize, r.size * 2)
        cdef void* p
        cdef Page** np_
        want = ((want + HUGE - 1) // HUGE) * HUGE
        want = (want // r.blksize) * r.blksize
        p = mmap(r.base + r.size, want - r.size, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
        if p == MAP_FAILED or p != <void*>(r.base + r.size):
            if p != MAP_FAILED:
                munmap(p, want - r.size)
            raise MemoryError(
                "cannot grow the address reservation of %r from %d to %d bytes in place; "
                "open the handle with a larger reserve= (fileh_open(reserve=...))"
                % (self.bigfile, r.size, want))
        np_ = <Page**>calloc(want // r.blksize, sizeof(Page*))
        if np_ == NULL:
            munmap(p, want - r.size)
            raise MemoryError()
        lock()
        memcpy(np_, r.pages, r.nblk * sizeof(Page*))
        free(r.pages)
        r.pages = np_
        r.size = want
        r.nblk = want // r.blksize
        unlock()
        return 0

    def mmap(self, pgoffset, pglen):
        """Map blocks [pgoffset, pgoffset+pglen) -> VMA (a buffer, no copy)."""
        cdef Region* r = self._region()
        cdef VMA v
        pgoffset = _index(pgoffset, "pgoffset")
        pglen = _index(pglen, "pglen")
        if pgoffset < 0 or pglen < 0:
            raise ValueError("pgoffset and pglen must be >= 0")
        if pgoffset + pglen > BLOCKS_MAX:
            raise MemoryError("cannot map blocks [%d, %d): more than a handle can "
                              "address" % (pgoffset, pgoffset + pglen))
        install_handler()
        if pgoffset + pglen > r.nblk:
            self._grow(pgoffset + pglen)
        v = VMA.__new__(VMA)
        v.fileh = self
        v.pgoffset = pgoffset
        v.pglen = pglen
        v.addr = <uintptr_t>blk_addr(r, pgoffset)
        v.size = pglen * r.blksize
        self.nvma += 1
        return v

    @property
    def closed(self):
        return self.r == NULL

    def set_dirty_hook(self, hook):
        """hook() is called each time the handle goes from clean to dirty (first
        write after open, writeout or discard), in the thread whose access
        dirtied it (possibly one Python does not know, e.g. BLAS), with the GIL.
        Bindings use it to join a transaction.  None removes it."""
        cdef Region* r = self._region()
        if hook is not None and not callable(hook):
            raise TypeError("dirty hook must be callable or None")
        lock()
        self._dirty_hook = hook
        r.dirty_hook = NULL if hook is None else <PyObject*>hook
        unlock()

    @property
    def reserved(self):
        return 0 if self.r == NULL else self.r.size

    @property
    def addr(self):
        """Base address of the reservation (block 0)."""
        return 0 if self.r == NULL else <uintptr_t>self.r.base

    def isdirty(self):
        cdef Region* r = self._region()
        return r.ndirty > 0

    cdef list _blocks(self, int want_dirty):
        """Sorted numbers of the dirty (want_dirty) or LOADED blocks.  Collected
        into C memory under g_lock: no Python object is made while it is held."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef int64_t i = 0
        cdef int64_t* a
        lock()
        a = <int64_t*>malloc((r.npages + 1) * sizeof(int64_t))
        if a != NULL:
            p = r.plist
            while p != NULL:
                if (p.dirty if want_dirty else p.state == PG_LOADED):
                    a[i] = p.blk
                    i += 1
                p = p.rnext
        unlock()
        if a == NULL:
            raise MemoryError()
        out = sorted([a[j] for j in range(i)])
        free(a)
        return out

    def dirty_blocks(self):
        """Sorted block numbers with changes not yet written out."""
        return self._blocks(1)

    def resident_blocks(self):
        """Sorted block numbers currently in RAM."""
        return self._blocks(0)

    def uses_mmap_overlay(self):
        """False: blocks read are loaded into this process's memory (wendelin.core
        answers True when its WCFS file system serves them, read-only, and only
        changes live in the process)."""
        return False

    def dirty_writeout(self, int flags=WRITEOUT_STORE | WRITEOUT_MARKSTORED):
        """STORE: bigfile.storeblk() every dirty block (in block order);
        MARKSTORED: make them clean and write-protected again.  If storeblk raises,
        nothing is marked stored and the exception propagates."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page** pv
        cdef int64_t n = 0, i = 0
        cdef size_t bs = r.blksize
        cdef bytes tmp
        cdef _Buf b
        if flags & ~(WRITEOUT_STORE | WRITEOUT_MARKSTORED) or flags == 0:
            raise ValueError("invalid writeout flags %r" % flags)
        lock()
        pv = writeout_begin(r, &n)
        unlock()
        if pv == NULL:
            raise MemoryError()
        qsort(pv, n, sizeof(Page*), cmp_page_blk)
        try:
            if flags & WRITEOUT_STORE:
                tmp = None
                for i in range(n):
                    p = pv[i]
                    lock()
                    if p.state == PG_SPILLED:
                        unlock()
                        if tmp is None:
                            tmp = PyBytes_FromStringAndSize(NULL, bs)
                        lock()
                        if p.state == PG_SPILLED:     # may have been reloaded meanwhile
                            rc = rw_full(g_scratch_fd, PyBytes_AS_STRING(tmp), bs, p.spill, IO_READ)
                            unlock()
                            if rc:
                                raise OSError(rc, "reading scratch file: " + _os.strerror(rc))
                            b = mkbuf(PyBytes_AS_STRING(tmp), bs, 1)
                            b.keep = tmp        # (views outliving storeblk keep it)
                            tmp = None
                        else:
                            unlock()
                            b = mkbuf(blk_addr(r, p.blk), bs, 1)
                    else:
                        if p.uncharged:
                            # compacted: readable for storeblk without being
                            # counted whole, compacted again after it
                            if p.prot == PROT_NONE and mprotect(blk_addr(r, p.blk), bs,
                                                                PROT_RO) == 0:
                                p.prot = PROT_RO
                        elif p.prot == PROT_NONE:
                            set_prot(p, PROT_RO)
                        unlock()
                        b = mkbuf(blk_addr(r, p.blk), bs, 1)
                    mv = memoryview(b)
                    try:
                        self.bigfile.storeblk(p.blk, mv)
                    finally:
                        mv.release()
                        b.done = 1      # (views still alive show the block's pages)
                        lock()
                        if p.state == PG_LOADED and p.uncharged:
                            page_compact(p)
                        unlock()
        except BaseException:
            lock()
            writeout_abort(pv, n)
            unlock()
            free(pv)
            raise
        lock()
        writeout_done(pv, n, flags & WRITEOUT_MARKSTORED)
        unlock()
        free(pv)

    def dirty_discard(self):
        """Forget every change not written out: the next access reloads the block."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page* nx
        lock()
        r.gen += 1
        while True:
            p = r.plist
            busy = False
            while p != NULL:
                nx = p.rnext
                if p.dirty:
                    if p.state == PG_LOADING or p.pin:
                        busy = True
                    else:
                        page_drop(p)
                p = nx
            if not busy:
                break
            wait_change()
        unlock()

    def invalidate_page(self, pgoffset):
        """Drop the in-RAM copy of block pgoffset (it changed in storage); the next
        access reloads it.  A dirty block cannot be invalidated (RuntimeError).
        A block being loaded in another thread is not waited for: that load
        is thrown away when it ends and the block is loaded again."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef int64_t blk = _index(pgoffset, "pgoffset")
        if blk < 0:
            raise ValueError("pgoffset must be >= 0")
        if blk >= r.nblk:
            return
        lock()
        r.gen += 1
        while True:
            p = r.pages[blk]
            if p == NULL:
                break
            if p.state == PG_LOADING and not p.dirty and not p.pin:
                # its loader may be waiting for us (a storage lock held by
                # the invalidating thread): do not wait, the loader throws
                # what it brought away and loads the block again
                p.stale = 1
                break
            if p.state == PG_LOADING or p.pin:
                wait_change()
                continue
            if p.dirty:
                unlock()
                raise RuntimeError("invalidate_page(%d): block has changes not written out"
                                   % blk)
            page_drop(p)
            break
        unlock()

    def drop_clean(self, int64_t start=0, int64_t stop=-1):
        """Evict the clean resident blocks in [start, stop) (madvise DONTNEED)."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page* nx
        if stop < 0 or stop > r.nblk:
            stop = r.nblk
        lock()
        p = r.plist
        while p != NULL:
            nx = p.rnext
            if (p.state == PG_LOADED and not p.dirty and not p.pin
                    and start <= p.blk < stop):
                page_drop(p)
            p = nx
        unlock()

    def prefault(self, start, stop, write=False):
        """Make blocks [start, stop) resident (and dirty, writable with write=True),
        calling loadblk directly: its exceptions propagate normally."""
        start = _index(start, "start")
        stop = _index(stop, "stop")
        if start < 0 or stop < start or stop > BLOCKS_MAX:
            raise ValueError("prefault: need 0 <= start <= stop, got [%d, %d)" % (start, stop))
        self._prefault(start, stop, 1 if write else 0)

    cdef _prefault(self, int64_t start, int64_t stop, int w):
        cdef Region* r = self._region()
        cdef PyObject* exc = NULL
        cdef int rc
        cdef int64_t blk
        if stop > r.nblk:
            self._grow(stop)
            r = self.r
        for blk in range(start, stop):
            rc = pager_access(r, blk, w, 1, &exc)
            if rc != 0:
                if exc != NULL:
                    e = <object>exc
                    Py_DECREF(e)
                    raise _load_error(e, blk, self.bigfile) from e
                _raise_rc(rc, blk, self)

    def pin(self, pgoffset):
        """Make block pgoffset resident and keep it so, at the same memory, until
        unpin(pgoffset): reclaim neither evicts, spills nor moves it.  For I/O
        that works on the pages after the system call has started (O_DIRECT
        pins them in the kernel: if the pager moved them meanwhile, the device
        would read what the pager put there next).  Pins count; a pinned block
        is over the budget if need be."""
        cdef Region* r = self._region()
        cdef int64_t blk = _index(pgoffset, "pgoffset")
        cdef PyObject* exc = NULL
        cdef Page* p
        cdef int rc
        if blk < 0 or blk >= r.nblk:
            raise ValueError("pin(%d): outside the file handle's %d blocks" % (blk, r.nblk))
        while True:
            rc = pager_access(r, blk, 0, 1, &exc)
            if rc != 0:
                if exc != NULL:
                    e = <object>exc
                    Py_DECREF(e)
                    raise _load_error(e, blk, self.bigfile) from e
                _raise_rc(rc, blk, self)
            lock()
            p = r.pages[blk]
            if p != NULL and p.state == PG_LOADED:
                p.pin += 1
                if p.prot == PROT_NONE:         # (demoted: readable again)
                    set_prot(p, PROT_RW if p.dirty and not p.writing else PROT_RO)
                p.referenced = 1
                unlock()
                return
            unlock()        # reclaimed before we could pin it: load it again

    def unpin(self, pgoffset):
        """Undo one pin(pgoffset)."""
        cdef Region* r = self._region()
        cdef int64_t blk = _index(pgoffset, "pgoffset")
        cdef Page* p
        if blk < 0 or blk >= r.nblk:
            raise ValueError("unpin(%d): outside the file handle's %d blocks" % (blk, r.nblk))
        lock()
        p = r.pages[blk]
        if p == NULL or p.pin <= 0:
            unlock()
            raise RuntimeError("unpin(%d): the block is not pinned" % blk)
        p.pin -= 1
        notify()
        unlock()

    def close(self):
        """Release the handle: changes not written out are discarded."""
        if self.r == NULL:
            return
        if self.nvma > 0:
            raise RuntimeError("cannot close %r: %d mappings (views) are still alive"
                               % (self, self.nvma))
        self._close()

    cdef void _close(self):
        cdef Region* r = self.r
        cdef Page* p
        cdef Page* nx
        if r == NULL:
            return
        self.r = NULL
        lock()
        r.closed = 1
        ra_forget(r)
        while True:          # loaders finish (and see .closed) before we tear down
            p = r.plist
            busy = False
            while p != NULL:
                nx = p.rnext
                if p.state == PG_LOADING or p.pin:
                    busy = True
                else:
                    page_drop(p)
                p = nx
            if not busy and r.busy == 0:
                break
            wait_change()
        region_remove(r)
        unlock()
        munmap(r.base, r.size)
        free(r.pages)
        free(r)

    def __dealloc__(self):
        self._close()

    def __repr__(self):
        return "<BigFileH of %r%s>" % (self.bigfile, " (closed)" if self.r == NULL else "")


cdef int cmp_page_blk(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<Page**>a)[0].blk
    cdef int64_t y = (<Page**>b)[0].blk
    return (x > y) - (x < y)


cdef object _index(x, name):
    try:
        return x.__index__()
    except AttributeError:
        raise TypeError("%s must be an integer, not %s" % (name, type(x).__name__)) from None


_ADVICE = {"normal": ADV_NORMAL, "sequential": ADV_SEQUENTIAL, "random": ADV_RANDOM,
           "willneed": ADV_WILLNEED, "dontneed": ADV_DONTNEED}


cdef class VMA:
    """A window of blocks [pgoffset, pgoffset+pglen) of a file handle, exporting a
    writable buffer.  The memory stays valid while the VMA (or any ndarray made
    from it) is alive."""
    cdef readonly BigFileH fileh
    cdef readonly int64_t pgoffset
    cdef readonly int64_t pglen
    cdef uintptr_t addr
    cdef size_t size
    cdef object __weakref__

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if self.fileh.r == NULL:
            raise ValueError("file handle is closed")
        PyBuffer_FillInfo(buf, self, <void*>self.addr, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        pass

    def __len__(self):
        return self.size

    @property
    def addr_start(self):
        return self.addr

    @property
    def addr_stop(self):
        return self.addr + self.size

    def filerange(self):
        return (self.pgoffset, self.pglen)

    def pagesize(self):
        return self.fileh.blksize

    cdef _blkrange(self, offset, length):
        offset = _index(offset, "offset")
        if length is None:
            length = self.size - offset
        length = _index(length, "length")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("range [%d, %d) outside the mapping of %d bytes"
                             % (offset, offset + length, self.size))
        bs = self.fileh.blksize
        if length == 0:
            return self.pgoffset, self.pgoffset
        return (self.pgoffset + offset // bs,
                self.pgoffset + (offset + length + bs - 1) // bs)

    def prefault(self, offset=0, length=None, write=False):
        """Make bytes [offset, offset+length) resident (dirty and writable with
        write=True).  loadblk errors raise here as Python exceptions.  Use it before
        handing mapped memory to a system call: the kernel does not fault pages in
        for us, it returns EFAULT.  Ranges bigger than the RAM budget cannot all stay
        resident: go in chunks."""
        start, stop = self._blkrange(offset, length)
        self.fileh.prefault(start, stop, write)

    def madvise(self, advice, offset=0, length=None):
        """'willneed' loads the range now; 'dontneed' drops its clean blocks;
        'sequential', 'random', 'normal' steer the pager (readahead)."""
        if advice not in _ADVICE:
            raise ValueError("advice must be one of %s" % sorted(_ADVICE))
        start, stop = self._blkrange(offset, length)
        if advice == "willneed":
            self.fileh.prefault(start, stop, False)
        elif advice == "dontneed":
            self.fileh.drop_clean(start, stop)
        else:
            r = (<BigFileH>self.fileh)._region()
            lock()
            r.advice = _ADVICE[advice]
            unlock()
            if advice == "sequential":
                ra_advise(r, start, min(stop - start, ra_window(r)))

    def __dealloc__(self):
        if self.fileh is not None:
            self.fileh.nvma -= 1

    def __repr__(self):
        return "<VMA blocks [%d, %d) of %r>" % (self.pgoffset, self.pgoffset + self.pglen,
                                                self.fileh)
