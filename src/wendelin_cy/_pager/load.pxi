
cdef class _Buf:
    """Exports raw memory as a buffer for the duration of one callback."""
    cdef char* ptr
    cdef Py_ssize_t size
    cdef int readonly
    cdef int exports

    def __getbuffer__(self, Py_buffer* buf, int flags):
        PyBuffer_FillInfo(buf, self, self.ptr, self.size, self.readonly, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer* buf):
        self.exports -= 1


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
LOAD_RETRY_DELAY = 0.05


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
    zero-filled (a mapping past the end of a file would raise SIGBUS)."""
    cdef readonly object path
    cdef readonly int64_t offset

    def __init__(self, path, int64_t offset=0):
        self.path = _os.fsencode(path)
        if offset < 0 or offset % OSPAGE:
            raise ValueError("MapFile: offset must be a non-negative multiple of "
                             "%d, got %d" % (OSPAGE, offset))
        self.offset = offset

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
            except TRANSIENT_ERRORS:
                attempt += 1
                if entry or attempt > LOAD_RETRIES:
                    raise
                _time.sleep(LOAD_RETRY_DELAY * (4 ** (attempt - 1)))
    finally:
        try:
            mv.release()
        except BufferError:
            pass
        if interrupted:
            PyErr_SetInterrupt()
    if buf.exports:
        raise BufferError("loadblk kept a reference to its buffer (blk %d)" % blk)
    return res


cdef int py_loadblk(Region* r, int64_t blk, char* slot, int entry,
                    PyObject** exc, int* mapfd, int64_t* mapoff,
                    int recycled) noexcept with gil:
    """Run loadblk into the staging slot.  When loadblk answers MapFile(path,
    offset), the file is opened here and *mapfd / *mapoff say what to map at the
    block's address instead (the caller maps it and closes *mapfd).
    recycled: 0 the slot is a fresh (zero) mapping, 1 it holds an evicted
    block's pages, 2 that and the block is loaded to be written."""
    cdef PyObject *et
    cdef PyObject *ev
    cdef PyObject *etb
    cdef int rc = 0
    cdef _Buf buf = mkbuf(slot, r.blksize, 0)
    PyErr_Fetch(&et, &ev, &etb)
    try:
        res = _call_loadblk(<object>r.bigfile, blk, buf, entry)
        if res is HOLE:
            if recycled == 2:
                # about to be written (e.g. an append): zero the recycled pages
                # in place - dropping them and faulting in new ones, which the
                # kernel zeroes anyway, measured 2x slower in an ingest
                with nogil:
                    memset(slot, 0, r.blksize)
            elif recycled:
                madvise(slot, r.blksize, MADV_DONTNEED)     # zero pages, on demand
        elif type(res) is MapFile:
            mapfd[0] = _open_for_map(<MapFile>res, r.blksize, buf)
            mapoff[0] = (<MapFile>res).offset
    except BaseException as e:
        rc = E_BUFKEPT if buf.exports else E_PYTHON
        if entry and exc != NULL:
            Py_INCREF(e)
            exc[0] = <PyObject*>e
        else:
            _report_fault_error(<object>r.bigfile, blk, e)
    PyErr_Restore(et, ev, etb)
    return rc


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


cdef void call_dirty_hook(Region* r) noexcept nogil:
    """Tell the binding (e.g. ZODB: join the transaction) that the handle just
    became dirty.  Runs in the faulting thread, with the GIL; an exception is
    reported and ignored (the write itself must go on)."""
    with gil:
        _run_hook(r)

cdef void _run_hook(Region* r) noexcept:
    cdef PyObject *et
    cdef PyObject *ev
    cdef PyObject *etb
    PyErr_Fetch(&et, &ev, &etb)
    if r.dirty_hook != NULL and not r.closed:
        hook = <object>r.dirty_hook
        try:
            hook()
        except BaseException as e:
            _report_ignored("exception in dirty hook %r" % (hook,), e)
    PyErr_Restore(et, ev, etb)


def _report_ignored(what, e):
    """A callback from inside the pager failed where nothing can be raised
    (a fault, or advice): say so on stderr and go on."""
    try:
        _sys.stderr.write("wendelin_cy: %s (ignored):\n" % what)
        _traceback.print_exception(type(e), e, e.__traceback__, file=_sys.stderr)
    except BaseException:
        pass


cdef int direct_covers(Region* r, int64_t blk) noexcept nogil:
    """Is block blk entirely inside the region's file (so it can be mapped)?
    Past the end a mapping would SIGBUS: such blocks are read (zero-filled)."""
    cdef stat_t st
    if fstat(r.direct_fd, &st) != 0:
        return 0
    return r.direct_off + (blk + 1) * <int64_t>r.blksize <= st.st_size

cdef int map_direct(Region* r, int64_t blk, int seq) noexcept nogil:
    return map_fd(r, blk, r.direct_fd, r.direct_off + blk * <int64_t>r.blksize, seq, 0)

cdef int map_fd(Region* r, int64_t blk, int fd, int64_t off, int seq,
                int blockwise) noexcept nogil:
    """Map block blk of a local file from the page cache (g_lock not held).
    In a sequential run the mapping is marked MADV_SEQUENTIAL before it is
    populated, so that a cold read goes through the kernel's sequential
    readahead (large, asynchronous windows) rather than read-around: measured
    in a 768 MiB cgroup, cold, this doubled the scan rate, to numpy.memmap's.
    (Asking the kernel for the next blocks with posix_fadvise(WILLNEED), 2 MiB
    at a time, had halved it.)"""
    global st_zerocopy
    cdef char* addr = blk_addr(r, blk)
    # 2 MiB blocks at 2 MiB offsets: MADV_HUGEPAGE before populating lets the
    # kernel read the block into one 2 MiB page cache folio and map it with one
    # page-table entry.  Measured here, mapping 2 MiB blocks already in the page
    # cache: 115-140 GB/s when the cache was filled that way, 7-10 GB/s when
    # it was filled in 4 KiB pages; reading them cold: 2.1 against 1.1 GB/s.
    #
    # blockwise (MapFile: a file of many blocks, each mapped on its own): the
    # kernel's asynchronous readahead for the next block of the file would
    # fill the cache in small folios (mapping them again later: 12-16 GB/s
    # against 84-147 with 2 MiB folios, measured on 32-block files); with
    # MADV_RANDOM each block is read by itself, as one 2 MiB folio.
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
        madvise(addr, r.blksize, MADV_POPULATE_READ)
    elif mmap(addr, r.blksize, PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_POPULATE,
              fd, off) == MAP_FAILED:
        return errno
    st_zerocopy += 1
    return 0
