# load.pxi: loading a block.  A load runs in three steps around g_lock:
#   load_begin   (g_lock held)  this thread becomes the block's loader: the
#                Page goes LOADING, a staging slot is taken (or, for a block
#                mapped from a file, its share of the budget)
#   load_fill    (g_lock free)  the bytes arrive: from the scratch file, the
#                BigFile's fd (pread, or mapped from the page cache), or
#                loadblk (with the GIL), which may answer HOLE or MapFile
#   load_finish  (g_lock held)  the slot is moved to the block's address in
#                one mremap, the Page goes LOADED; on failure load_undo puts
#                everything back
# The fault handler and the Python entry points share them (pager_access,
# fault.pxi).

# What a staging slot holds when loadblk is called (py_loadblk's `recycled`)
cdef enum:
    SLOT_FRESH = 0              # a fresh mapping: zeros, no pages yet
    SLOT_RECYCLED = 1           # the pages of an evicted block (old data)
    SLOT_RECYCLED_WRITE = 2     # that, and the block is loaded to be written

cdef struct Load:
    Page* p
    char* slot          # the staging slot being filled; NULL once mapped from a file
    int spilled         # the data comes back from the scratch file
    int mapped          # the block is mapped from a file's page cache (zero-copy)
    int recycled        # SLOT_*
    int slotmap         # the staging slot is a file mapping (a patched MapFile)
    int how             # MAP_*: how a block mapped from a file is mapped (map_how)

cdef class _Buf:
    """Exports raw memory as a buffer for the duration of one callback.

    Views of it can outlive the callback without the callback keeping them:
    another thread's ``gc.get_objects()`` during a load returns the loader's
    memoryviews and arrays, and holds them as long as it likes.  So when the
    callback is over, ``finish()`` ends it: no new view can be taken, and
    views still alive are detached (``detach``): the memory they show becomes
    the _Buf's own, no longer the pager's, unmapped with the last of them."""
    cdef char* ptr
    cdef Py_ssize_t size
    cdef int readonly
    cdef int exports
    cdef int owned          # ptr is a detached mapping of ours: unmap with the last view
    cdef int done           # the callback is over: no new views
    cdef object keep        # what owns the memory at ptr, if an object (kept alive)

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if self.done:
            raise BufferError("the buffer of a finished pager callback (load or store) "
                              "cannot be used any more")
        PyBuffer_FillInfo(buf, self, self.ptr, self.size, self.readonly, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* buf):
        self.exports -= 1
        if self.exports == 0 and self.owned:
            munmap(self.ptr, self.size)
            self.owned = 0
            self.ptr = NULL

    def __dealloc__(self):
        if self.owned and self.exports == 0:
            munmap(self.ptr, self.size)


cdef char* detach(_Buf b, int copy) noexcept nogil:
    """b's views outlived the load (b.exports > 0): leave them the slot they
    show, now b's own (unmapped with their end), and return a fresh slot for
    the block - a copy of the bytes if `copy` - or NULL (no memory)."""
    cdef size_t bs = b.size
    cdef char* slot = map_aligned(bs, align_for(bs), PROT_RW)
    if slot == NULL:
        return NULL
    if thp_want(bs):
        madvise(slot, bs, MADV_HUGEPAGE)
    if copy:
        memcpy(slot, b.ptr, bs)
    b.owned = 1
    return slot


cdef _Buf mkbuf(char* ptr, size_t size, int readonly):
    cdef _Buf b = _Buf.__new__(_Buf)
    b.ptr = ptr
    b.size = size
    b.readonly = readonly
    return b


# exceptions retried when loadblk raises them inside a page fault (where they
# cannot be propagated); settable by storage bindings (e.g. ZEO disconnects)
TRANSIENT_ERRORS = (InterruptedError, BlockingIOError, TimeoutError, ConnectionError)
LOAD_RETRIES = 3
LOAD_RETRY_DELAY = 0.05        # seconds before the first retry ...
LOAD_RETRY_BACKOFF = 4         # ... and each next one waits this many times longer

# events a user may want to see: a retried load, the budget overshot, a
# callback that failed where nothing can be raised
_log = _logging.getLogger('wendelin_cy.pager')
cdef uint64_t g_overshoots_logged = 0


class _Hole:
    """Returned by loadblk instead of filling ``buf``: the block is a hole (all
    zeros).  The pager then gives the block fresh zero pages itself, which is
    much cheaper than writing zeros."""
    __slots__ = ()

    def __repr__(self):
        return "HOLE"

HOLE = _Hole()


cdef class MapFile:
    """Returned by loadblk instead of filling ``buf``: the block's bytes are
    ``blksize`` bytes of the file at ``path`` from ``offset`` (a multiple of the
    page size), and the file does not change while mapped (e.g. a committed
    ZODB blob).  The pager maps the file's page cache pages privately, read-only,
    at the block's address: no copy at all; a write makes the kernel copy just
    the 4 KiB page touched.  A file shorter than that is read instead, the rest
    zero-filled (a mapping past the end of a file would raise SIGBUS).

    ``patches``: (offset, data, length) triples, parts of the block that
    differ from the file: [offset, offset+length) holds data, then zeros.  The
    pager maps the file in a staging place, writes the patches there (the
    kernel copies just those pages) and only then moves the mapping to the
    block's address: no thread sees the block unpatched."""
    cdef readonly object path
    cdef readonly int64_t offset
    cdef readonly object patches

    def __init__(self, path, int64_t offset=0, patches=None):
        self.path = _os.fsencode(path)
        if offset < 0 or offset % OSPAGE:
            raise ValueError("MapFile: offset must be a non-negative multiple of "
                             "%d, got %d" % (OSPAGE, offset))
        self.offset = offset
        if patches is not None:
            out = []
            for off, data, n in patches:
                mv = memoryview(data).cast('B')
                if off < 0 or n < len(mv):
                    raise ValueError("MapFile: bad patch (%r, %d bytes, %r)"
                                     % (off, len(mv), n))
                out.append((int(off), mv, int(n)))
            patches = tuple(out) or None
        self.patches = patches

    def __repr__(self):
        return "MapFile(%r, %d)" % (_os.fsdecode(self.path), self.offset)


cdef int _open_for_map(MapFile m, size_t bs, _Buf buf) except? -2:
    """Open m's file for mapping -> fd; or read it into buf (short file) -> -1."""
    fd = _os.open(m.path, _os.O_RDONLY | _os.O_CLOEXEC)
    try:
        size = _os.fstat(fd).st_size
        if size >= m.offset + <int64_t>bs:
            return fd
        mv = memoryview(buf)
        try:
            n = _os.preadv(fd, [mv], m.offset) if size > m.offset else 0
            while 0 < n < <Py_ssize_t>bs:
                k = _os.preadv(fd, [mv[n:]], m.offset + n)
                if k <= 0:
                    break
                n += k
            if n < <Py_ssize_t>bs:
                mv[n:] = bytes(<Py_ssize_t>bs - n)
        finally:
            mv.release()
    except BaseException:
        _os.close(fd)
        raise
    _os.close(fd)
    return -1


def _call_loadblk(bigfile, blk, _Buf buf, int entry):
    """Run bigfile.loadblk(blk, memoryview); retry transient errors (in a fault only:
    at an entry point the caller gets the exception and decides).  Returns what
    loadblk returned (None, HOLE or a MapFile)."""
    cdef int attempt = 0
    cdef object interrupted = None
    res = None
    mv = memoryview(buf)
    try:
        while True:
            try:
                res = bigfile.loadblk(blk, mv)
                break
            except KeyboardInterrupt:
                if entry:
                    raise
                interrupted = True          # re-delivered once the fault is over
            except TRANSIENT_ERRORS as e:
                attempt += 1
                if entry or attempt > LOAD_RETRIES:
                    raise
                delay = LOAD_RETRY_DELAY * (LOAD_RETRY_BACKOFF ** (attempt - 1))
                _log.warning('loading block %d of %r inside a page fault: %s: %s; '
                             'retry %d of %d in %.2f s', blk, bigfile,
                             type(e).__name__, e, attempt, LOAD_RETRIES, delay)
                _time.sleep(delay)
    finally:
        try:
            mv.release()
        except BufferError:
            pass
        if interrupted:
            PyErr_SetInterrupt()
    return res


cdef int py_loadblk(Region* r, int64_t blk, char** slotp, int entry,
                    PyObject** exc, int* mapfd, int64_t* mapoff,
                    int recycled, PyObject** patches) noexcept with gil:
    """Run loadblk into the staging slot *slotp.  When loadblk answers
    MapFile(path, offset), the file is opened here and *mapfd / *mapoff say what
    to map at the block's address instead (the caller maps it and closes
    *mapfd).  recycled: SLOT_*, what the slot holds.  Views of the buffer that
    outlive the call are detached (_Buf): *slotp is then a new slot, a copy."""
    cdef char* slot = slotp[0]
    cdef char* fresh
    cdef PyObject *et
    cdef PyObject *ev
    cdef PyObject *etb
    cdef int rc = 0
    cdef _Buf buf = mkbuf(slot, r.blksize, 0)
    if recycled and not r.fills_buf:
        # what loadblk leaves unwritten reads as zeros, as in wendelin.core
        # (not the bytes of the block evicted from this slot)
        with nogil:
            memset(slot, 0, r.blksize)
        recycled = SLOT_FRESH
    PyErr_Fetch(&et, &ev, &etb)
    try:
        if st_overshoots != g_overshoots_logged:
            _log_overshoot()
        res = _call_loadblk(<object>r.bigfile, blk, buf, entry)
        if res is HOLE:
            if recycled == SLOT_RECYCLED_WRITE:
                # about to be written (e.g. an append): zero the recycled pages
                # in place - dropping them and faulting in new ones, which the
                # kernel zeroes anyway, is slower (docs/benchmarks.md)
                with nogil:
                    memset(slot, 0, r.blksize)
            elif recycled:
                madvise(slot, r.blksize, MADV_DONTNEED)     # zero pages, on demand
        elif type(res) is MapFile:
            pt = (<MapFile>res).patches
            if pt is not None:
                for off, data, n in pt:
                    if off + n > <int64_t>r.blksize:
                        raise ValueError("MapFile: patch [%d, %d) outside the %d-byte block"
                                         % (off, off + n, r.blksize))
            mapfd[0] = _open_for_map(<MapFile>res, r.blksize, buf)
            mapoff[0] = (<MapFile>res).offset
            if pt is not None:
                if mapfd[0] < 0:            # (read into buf: patched here)
                    _patch(buf, pt)
                else:
                    Py_INCREF(pt)
                    patches[0] = <PyObject*>pt
    except BaseException as e:
        rc = E_PYTHON
        if entry and exc != NULL:
            Py_INCREF(e)
            exc[0] = <PyObject*>e
        else:
            _report_fault_error(<object>r.bigfile, blk, e)
    buf.done = 1
    if buf.exports:
        # views of the slot outlived loadblk (kept by it, or by another
        # thread's gc.get_objects()): they keep the slot, the block gets a copy
        fresh = detach(buf, rc == 0)
        if fresh == NULL:
            rc = E_BUFKEPT          # (no memory for a copy: the slot is theirs)
            buf.owned = 0
        else:
            slotp[0] = fresh
    PyErr_Restore(et, ev, etb)
    return rc


def _patch(buf, patches):
    mv = memoryview(buf)
    try:
        for off, data, n in patches:
            k = len(data)
            mv[off:off + k] = data
            if n > k:
                mv[off + k:off + n] = bytes(n - k)
    finally:
        mv.release()


cdef int _apply_patches(char** slotp, size_t bs, PyObject* patches) noexcept with gil:
    """Write `patches` into the file mapping at *slotp (copy-on-write); 0 or an
    errno.  Consumes the reference to patches.  Views of the slot that outlive
    the patching (another thread's gc.get_objects()) are detached: *slotp is
    then an anonymous copy."""
    cdef int rc = 0
    cdef char* slot = slotp[0]
    cdef char* fresh
    cdef _Buf b = mkbuf(slot, bs, 0)
    try:
        if mprotect(slot, bs, PROT_RW) != 0:
            rc = errno
        else:
            _patch(b, <object>patches)
            if mprotect(slot, bs, PROT_RO) != 0:
                rc = errno
    except BaseException as e:
        _report_ignored("applying the patches of a MapFile", e)
        rc = EIO
    b.done = 1
    if b.exports:
        fresh = detach(b, 1)
        if fresh == NULL:
            rc = E_BUFKEPT          # (no memory for a copy: the slot is theirs)
        else:
            slotp[0] = fresh
    Py_DECREF(<object>patches)
    return rc


cdef void _log_overshoot() noexcept:
    """The budget could not be kept (everything resident pinned or loading):
    a warning the first time, debug messages after (with the count)."""
    global g_overshoots_logged
    first = g_overshoots_logged == 0
    g_overshoots_logged = st_overshoots
    try:
        _log.log(_logging.WARNING if first else _logging.DEBUG,
                 'RAM budget overshot (%d time(s) so far): every resident block '
                 'was pinned or loading; see pager_stats()["overshoots"]',
                 g_overshoots_logged)
    except BaseException:
        pass


def _report_fault_error(bigfile, blk, exc):
    try:
        _sys.stderr.write(
            "wendelin_cy: FATAL: loading block %d of %r failed inside a page fault;\n"
            "the access cannot be completed and the exception cannot be raised through\n"
            "the code that touched the memory, so the process ends with SIGBUS\n"
            "(as the kernel does for an I/O error on mmap).  The error was:\n" % (blk, bigfile))
        _traceback.print_exception(type(exc), exc, exc.__traceback__, file=_sys.stderr)
        _sys.stderr.flush()
    except BaseException:
        pass


def _report_ignored(what, e):
    """A callback from inside the pager failed where nothing can be raised
    (a fault, or advice): log it (with the traceback) and go on."""
    try:
        _log.error("%s (ignored)", what, exc_info=(type(e), e, e.__traceback__))
    except BaseException:
        pass


cdef int direct_covers(Region* r, int64_t blk) noexcept nogil:
    """Is block blk entirely inside the region's file (so it can be mapped)?
    Past the end a mapping would SIGBUS: such blocks are read (zero-filled)."""
    cdef stat_t st
    if fstat(r.direct_fd, &st) != 0:
        return 0
    return r.direct_off + (blk + 1) * <int64_t>r.blksize <= st.st_size

cdef int map_direct(Region* r, int64_t blk, int how) noexcept nogil:
    return map_fd(r, blk, r.direct_fd, r.direct_off + blk * <int64_t>r.blksize, how, 0)

cdef int map_fd(Region* r, int64_t blk, int fd, int64_t off, int how,
                int blockwise) noexcept nogil:
    return map_fd_at(r, blk_addr(r, blk), fd, off, how, blockwise)

cdef enum:
    MAP_SEQ = 1                 # part of a sequential run
    MAP_LAZY = 2                # not populated: the pages fault in on access

cdef inline int map_how(Region* r, int64_t blk, int write) noexcept nogil:
    """How a block mapped from a file is mapped: MAP_SEQ in a sequential run;
    MAP_LAZY when a write outside of one needs it: populating it is wasted
    (each page written is copied by the kernel anyway, the others stay
    untouched, as in random writes)."""
    cdef int seq = in_seq_run(r, blk)
    if seq:
        return MAP_SEQ
    return MAP_LAZY if write > 0 else 0

cdef int map_fd_at(Region* r, char* addr, int fd, int64_t off, int how,
                   int blockwise) noexcept nogil:
    """Map block blk of a local file from the page cache (g_lock not held).
    In a sequential run the mapping is marked MADV_SEQUENTIAL before it is
    populated, so that a cold read goes through the kernel's sequential
    readahead (large, asynchronous windows) rather than read-around: cold
    scans under a memory cgroup limit then run as fast as numpy.memmap's.
    (Asking the kernel for the next blocks with posix_fadvise(WILLNEED), one
    block at a time, made them slower.)  Figures: docs/benchmarks.md."""
    global st_zerocopy
    # 2 MiB blocks at 2 MiB offsets: MADV_HUGEPAGE before populating lets the
    # kernel read the block into one 2 MiB page cache folio and map it with one
    # page-table entry: mapping such blocks again later, and reading them
    # cold, is many times faster than with a cache filled in 4 KiB pages.
    #
    # blockwise (MapFile: a file of many blocks, each mapped on its own): the
    # kernel's asynchronous readahead for the next block of the file would
    # fill the cache in small folios (slow to map again later); with
    # MADV_RANDOM each block is read by itself, as one 2 MiB folio.  In a
    # sequential scan the readahead thread brings the next blocks into the
    # page cache meanwhile, through one mapping of their file (readahead.pxi,
    # "Readahead into the page cache"): the fault then finds them there.
    cdef int seq = how & MAP_SEQ
    cdef int huge = (r.blksize % HUGE == 0 and off % HUGE == 0
                     and (<uintptr_t>addr) % HUGE == 0)
    if seq or huge:
        if mmap(addr, r.blksize, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd,
                off) == MAP_FAILED:
            return errno
        if huge:
            madvise(addr, r.blksize, MADV_HUGEPAGE)
            if blockwise:
                madvise(addr, r.blksize, MADV_RANDOM)
        if seq and not (huge and blockwise):
            madvise(addr, r.blksize, MADV_SEQUENTIAL)
        # (on kernels without MADV_POPULATE_READ the pages fault in on access)
        if not how & MAP_LAZY:
            madvise(addr, r.blksize, MADV_POPULATE_READ)
    elif mmap(addr, r.blksize, PROT_READ,
              MAP_PRIVATE | MAP_FIXED | (0 if how & MAP_LAZY else MAP_POPULATE),
              fd, off) == MAP_FAILED:
        return errno
    st_zerocopy += 1
    return 0


cdef inline int in_seq_run(Region* r, int64_t blk) noexcept nogil:
    """Is loading blk part of a sequential scan (readahead is worth it)?"""
    return (g_ra_enabled and r.advice != ADV_RANDOM
            and (r.advice == ADV_SEQUENTIAL or blk == r.last_load + 1))

cdef int load_begin(Load* ld, Region* r, int64_t blk, Page* p) noexcept nogil:
    """Make this thread the loader of block blk, absent (p == NULL) or SPILLED
    (g_lock held).  0, or an error with nothing changed."""
    cdef size_t bs = r.blksize
    cdef int rc
    if r.forked and r.direct_fd < 0 and p == NULL:
        return E_FORKED
    ld.spilled = p != NULL
    ld.recycled = SLOT_FRESH
    ld.slotmap = 0
    ld.how = 0
    ld.slot = NULL
    if p == NULL:
        p = page_new(r, blk)
        if p == NULL:
            return ENOMEM
    ld.p = p
    p.state = PG_LOADING
    p.loader = pthread_self()
    ld.mapped = not ld.spilled and r.direct_fd >= 0 and direct_covers(r, blk)
    if ld.mapped:
        # local file, block entirely inside it: map the page cache pages of the
        # block privately, read-only (no copy at all; a write makes the kernel
        # copy just the 4 KiB page touched).  One mmap(MAP_FIXED) replaces the
        # PROT_NONE slot atomically, and what shows is the file's content.
        reclaim(bs, 0)
        resident_add(bs)
        return 0
    ld.slot = acquire_slot(bs, &ld.recycled)
    if ld.slot == NULL:
        rc = errno if errno else ENOMEM
        if ld.spilled:
            p.state = PG_SPILLED
        else:
            page_free(p)
        notify()
        return rc
    return 0

cdef int load_fill(Load* ld, Region* r, int64_t blk, int write, int entry,
                   PyObject** exc) noexcept nogil:
    """Bring the block's bytes into the slot, or map them (g_lock not held:
    the LOADING page is this thread's).  0 or an error code."""
    cdef size_t bs = r.blksize
    cdef int mapfd = -1
    cdef int64_t mapoff = 0
    cdef PyObject* patches = NULL
    cdef char* slot0
    cdef int rc
    ld.how = map_how(r, blk, write)
    if ld.mapped:
        return map_direct(r, blk, ld.how)
    if ld.spilled:
        return rw_full(g_scratch_fd, ld.slot, bs, ld.p.spill, IO_READ)
    if r.direct_fd >= 0:
        return rw_full(r.direct_fd, ld.slot, bs, r.direct_off + <int64_t>(blk * bs),
                       IO_READ)
    rc = py_loadblk(r, blk, &ld.slot, entry, exc, &mapfd, &mapoff,
                    SLOT_RECYCLED_WRITE if write > 0 and ld.recycled else ld.recycled,
                    &patches)
    if patches != NULL:
        # a MapFile with patches: the file is mapped over the staging slot,
        # patched there, and load_finish moves it into place like any slot
        if rc == 0:
            rc = map_fd_at(r, ld.slot, mapfd, mapoff, ld.how, 1)
            if rc == 0:
                ld.slotmap = 1      # (the slot is a file mapping now: never pooled)
                slot0 = ld.slot
                rc = _apply_patches(&ld.slot, bs, patches)
                if ld.slot != slot0:
                    ld.slotmap = 0  # (detached: the block got an anonymous copy)
            else:
                _drop_ref(patches)
        else:
            _drop_ref(patches)
        close(mapfd)
        r.last_mapped = rc == 0
        return rc
    if mapfd >= 0:
        # loadblk named a file extent (MapFile): map it instead; the slot
        # goes back, its share of g_resident now counts the mapping
        if rc == 0:
            rc = map_fd(r, blk, mapfd, mapoff, ld.how, 1)
        close(mapfd)
        if rc == 0:
            spare_put(ld.slot, bs)
            ld.slot = NULL
            ld.mapped = 1
        else:
            reset_slot(blk_addr(r, blk), bs)
    r.last_mapped = mapfd >= 0 and rc == 0
    return rc

cdef void _drop_ref(PyObject* o) noexcept with gil:
    Py_DECREF(<object>o)

cdef int load_finish(Load* ld, Region* r, int write, int rc) noexcept nogil:
    """The fill returned rc (g_lock held): on success put the block at its
    address with the protection the access needs and make it LOADED; else
    undo the load.  Returns rc, or the error placing it."""
    global g_last_loaded, st_loads
    cdef Page* p = ld.p
    cdef int prot
    if rc == 0 and r.closed:
        rc = E_CLOSED
    if rc == 0 and p.stale:
        rc = E_STALE              # invalidated while loading: the caller loads again
    if rc == 0:
        if ld.spilled:
            prot = PROT_RW if (write > 0 or not p.writing) else PROT_RO
            if write > 0:
                p.writing = 0
        else:
            prot = PROT_RW if write > 0 else PROT_RO
        if ld.mapped:
            p.filemap = 1
            p.prot = PROT_RO
            rc = set_prot(p, prot)
        else:
            rc = place(r, p, ld.slot, prot)
            if rc == 0 and ld.slotmap:
                p.filemap = 1
        p.seqmap = p.filemap and ld.how & MAP_SEQ
    if rc != 0:
        load_undo(ld, r, rc)
        return rc
    if ld.spilled:
        page_unspilled(p)
    p.state = PG_LOADED
    p.referenced = 1
    clock_add(p)
    g_last_loaded = p
    st_loads += 1
    return 0

cdef void load_undo(Load* ld, Region* r, int rc) noexcept nogil:
    """The load failed with rc (g_lock held): give the memory back; a spilled
    block stays SPILLED (unless its handle is closed), a new one goes absent."""
    global g_resident, st_load_errors
    cdef Page* p = ld.p
    cdef size_t bs = r.blksize
    if ld.mapped:
        reset_slot(blk_addr(r, p.blk), bs)
        g_resident -= bs
    elif rc == E_BUFKEPT:
        g_resident -= bs          # somebody holds it: leak, never unmap
    else:
        release_slot(ld.slot, bs)
    if ld.spilled:
        p.state = PG_SPILLED      # the data is still in the scratch file
        if r.closed:
            page_drop(p)
    else:
        page_free(p)
    if rc != E_STALE:
        st_load_errors += 1
