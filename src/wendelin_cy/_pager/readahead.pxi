# readahead.pxi: loading blocks ahead of a sequential scan.
#
# Sequential access is detected per region (a fault loads block k right after it
# loaded k-1, or madvise('sequential')).  For a local file the block is then
# mapped MADV_SEQUENTIAL, and the kernel's own readahead runs ahead of the scan
# (see map_direct).  For other BigFiles, prefetch() is asked for the next
# window.  Random access never triggers it.

cdef int g_ra_enabled = 1
cdef uint64_t st_ra_blocks = 0
cdef enum:
    RA_WINDOW_MAX = 16          # blocks asked for ahead, at most
    RA_WINDOW_SHARE = 4         # ... and at most 1/4 of the budget
    RA_INFLIGHT_SHARE = 2       # blocks read ahead, not touched yet: <= 1/2 of it

cdef int64_t ra_window(Region* r) noexcept nogil:
    cdef int64_t w = <int64_t>(g_budget // (RA_WINDOW_SHARE * r.blksize))
    if w > RA_WINDOW_MAX:
        w = RA_WINDOW_MAX
    if r.ra_max > 0 and w > r.ra_max:
        w = r.ra_max
    return w

cdef void ra_on_load(Region* r, int64_t blk, int64_t* start, int64_t* n) noexcept nogil:
    """A fault loaded blk: extend or start the readahead window (g_lock held).
    Returns in start/n the blocks to advise (after g_lock is released)."""
    global st_ra_blocks
    cdef int64_t w, end
    n[0] = 0
    if r.direct_fd >= 0 or not r.has_prefetch or not in_seq_run(r, blk):
        r.last_load = blk       # (a local file: the kernel reads ahead, map_fd)
        return
    w = ra_window(r)
    if w > 0:
        if r.ra_next <= blk or r.ra_next > blk + 1 + 2 * w:
            r.ra_next = blk + 1
        end = blk + 1 + w
        if end > r.nblk:
            end = r.nblk
        # top the window up when half of it or less is left ahead: one call
        # asks for several blocks (for a storage, one batch of requests)
        if r.ra_next < end and (r.ra_next - blk - 1) * 2 <= w:
            start[0] = r.ra_next
            n[0] = end - r.ra_next
            r.ra_next = end
            st_ra_blocks += n[0]
    r.last_load = blk

cdef inline void ra_hit(Region* r, Page* p, int64_t* start, int64_t* n) noexcept nogil:
    """The first touch of block p, read ahead (g_lock held): it counts as the
    scan's load of it, and moves the window on (see ra_on_load)."""
    global g_ra_inflight, st_ra_hits
    p.ra = 0
    g_ra_inflight -= 1
    st_ra_hits += 1
    ra_on_load(r, p.blk, start, n)

# Readahead into RAM: prefetch() may answer with the extents of the blocks
# ahead, [(blk, fd, offset, nbytes), ...] -- where their bytes lie in some file
# (e.g. the payload of a ZODB record in a FileStorage).  One background thread
# of the pager reads them into staging blocks (pread, no GIL) and places them
# PROT_NONE: the scan then finds them in RAM, pays one soft fault each, and
# that fault moves the window on.  Requests are dropped when the block got a
# page meanwhile, or when the region's generation moved (contents may have
# changed: a write, writeout, discard or invalidation since the extent was
# found).

cdef struct RAReq:
    Region* r           # NULL: dropped (its handle closed)
    int64_t blk         # fd == RAQ_WARM: how many slots to warm
    int fd              # where the extent lies, or RAQ_WARM
    int64_t off
    int64_t n           # fd == RAQ_WARM: their size
    uint64_t gen
    int64_t cache       # > 0: a page-cache request (ra_cache) for blocks of
                        # this size; fd is the request's own (closed after)

cdef enum:
    RA_QMAX = 64        # requests queued for the readahead thread, at most
    RAQ_WARM = -2       # RAReq.fd of a request to warm staging slots (ra_warm)
cdef RAReq g_raq[RA_QMAX]
cdef int g_raq_head = 0
cdef int g_raq_len = 0
cdef pthread_cond_t g_ra_cond
cdef int g_ra_started = 0
cdef int64_t g_ra_inflight = 0
cdef uint64_t st_ra_loads = 0, st_ra_hits = 0, st_ra_dropped = 0, st_warm_slots = 0
cdef uint64_t st_ra_cached = 0     # blocks brought into the page cache ahead
cdef uint64_t st_ra_cache_reads = 0 # ... in that many reads (runs of blocks)
cdef uint64_t st_ra_checked = 0    # ... and blocks asked for (in the cache or not)

cdef Page* ra_begin(Region* r, int64_t blk, uint64_t gen, char** slot) noexcept nogil:
    """Start loading block blk ahead (g_lock held): a LOADING page owned by this
    thread and a staging slot for it; NULL if the request is stale (the block
    has a page, the generation moved), the handle is closed, or readahead
    already holds its share of the budget."""
    global st_ra_dropped
    cdef Page* p
    if (r.closed or r.forked or gen != r.gen or blk < 0 or blk >= r.nblk
            or r.pages[blk] != NULL
            or (g_ra_inflight + 1) * <int64_t>r.blksize * RA_INFLIGHT_SHARE
               > <int64_t>g_budget):
        st_ra_dropped += 1
        return NULL
    p = page_new(r, blk)
    if p == NULL:
        return NULL
    p.state = PG_LOADING
    p.loader = pthread_self()
    slot[0] = acquire_slot(r.blksize)
    if slot[0] == NULL:
        page_free(p)
        return NULL
    return p

cdef void ra_finish(Region* r, Page* p, char* slot, uint64_t gen, int rc) noexcept nogil:
    """The staging slot of a block read ahead is filled (rc == 0) or not
    (g_lock held): place it PROT_NONE, or drop it (a fault will load, and
    report, the block itself)."""
    global g_ra_inflight, st_ra_loads, st_ra_dropped
    if rc == 0 and (r.closed or gen != r.gen):
        rc = E_CLOSED
    if rc == 0:
        rc = place(r, p, slot, PROT_NONE)
    if rc != 0:
        release_slot(slot, r.blksize)
        page_free(p)
        st_ra_dropped += 1
    else:
        p.state = PG_LOADED
        p.ra = 1
        p.referenced = 1
        clock_add(p)
        g_ra_inflight += 1
        st_ra_loads += 1
    notify()


cdef void* ra_main(void* arg) noexcept nogil:
    global g_raq_head, g_raq_len, st_ra_checked
    cdef sigset_t all_
    cdef RAReq q
    cdef Region* r
    cdef Page* p
    cdef char* slot
    cdef int rc
    sigfillset(&all_)
    sigdelset(&all_, SIGSEGV)
    sigdelset(&all_, SIGBUS)
    pthread_sigmask(SIG_BLOCK, &all_, NULL)
    lock()
    while True:
        while g_raq_len == 0:
            wcy_lockdepth_add(-1)
            pthread_cond_wait(&g_ra_cond, &g_lock)
            wcy_lockdepth_add(1)
        q = g_raq[g_raq_head]
        g_raq_head = (g_raq_head + 1) % RA_QMAX
        g_raq_len -= 1
        if q.cache > 0:
            unlock()
            warm_cache(q.fd, q.off, q.n, <size_t>q.cache)     # (closes q.fd)
            lock()
            st_ra_checked += <uint64_t>(q.n // q.cache)
            continue
        if q.fd == RAQ_WARM:
            warm_slots(<size_t>q.n, q.blk)
            continue
        r = q.r
        if r == NULL:
            continue
        p = ra_begin(r, q.blk, q.gen, &slot)
        if p == NULL:
            r.busy -= 1
            notify()
            continue
        unlock()
        rc = rw_full(q.fd, slot, q.n, q.off, IO_READ_EXACT)
        if rc == 0 and <size_t>q.n < r.blksize:
            memset(slot + q.n, 0, r.blksize - q.n)
        lock()
        ra_finish(r, p, slot, q.gen, rc)
        r.busy -= 1
        notify()
    return NULL

cdef void warm_slots(size_t bs, int64_t want) noexcept nogil:
    """The readahead thread (g_lock held): put up to `want` fresh staging
    blocks, their pages already faulted in, into the pool, as long as that
    fits in the budget without evicting anything.  A scan whose blocks come
    through loadblk (ZEO, RelStorage, ...) then copies into memory that is
    ready instead of faulting in new pages block by block on its own thread
    (a first touch of fresh memory costs several times a copy into memory
    already faulted in: docs/benchmarks.md)."""
    global st_warm_slots, g_thp_skip
    cdef char* slot
    cdef int64_t made = 0
    cdef int huge, slow
    cdef long t
    while (made < want and g_npool < WARMMAX + POOLMAX and g_npool < POOL_CAP
           and pressure(bs) <= g_budget):
        huge = thp_want(bs)
        slow = 0
        unlock()
        slot = map_aligned(bs, align_for(bs), PROT_RW)
        if slot != NULL:
            if huge:
                madvise(slot, bs, MADV_HUGEPAGE)
            t = now_ns()
            # fault the pages in (the kernel zeroes them): without writing
            # the zeros a second time where the kernel can populate
            if madvise(slot, bs, MADV_POPULATE_WRITE) != 0:
                touch_pages(slot, bs)
            slow = huge and (now_ns() - t) > THP_SLOW_NS * <long>(bs // HUGE)
            if mprotect(slot, bs, PROT_NONE) != 0:
                munmap(slot, bs)
                slot = NULL
        lock()
        if slow:
            g_thp_skip = THP_BACKOFF
        if slot == NULL:
            return
        if g_npool < POOL_CAP and pressure(bs) <= g_budget:
            pool_put(slot, bs)
            st_warm_slots += 1
            made += 1
        else:
            unlock()
            munmap(slot, bs)
            lock()
            return

# Readahead into the page cache: a block a loadblk answers with MapFile is
# mapped from its file by the faulting thread itself, each block on its own
# (MADV_RANDOM, map_fd: so that it is read as one 2 MiB folio), which leaves
# the disk one 2 MiB read at a time while the scan waits.  prefetch() may
# answer, for the blocks ahead, where they lie: (blk, MapFile).  Runs of
# consecutive blocks of one file become one request of the readahead thread,
# which maps that range once with MADV_HUGEPAGE (the kernel's readahead then
# keeps several 2 MiB folios in flight: asynchronous, large reads), faults it
# in 1 block at a time, and drops the mapping again: the bytes stay in the page
# cache, where the scan's own mapping of each block finds them.  Nothing is
# charged to the budget (page cache, not the process's memory: at most one
# block mapped at a time here).  posix_fadvise(WILLNEED) instead filled the
# cache in 4 KiB folios, slow to map again (docs/benchmarks.md).

# The file being read ahead: one mapping of all of it, kept from one request
# to the next (the kernel's readahead state is that of the open file: a new
# open, or a new mapping, for every few blocks restarted it each time, and the
# blocks at each restart came in 4 KiB folios).  Dropped when its end is
# reached, or for another file.  (The readahead thread's own.)
cdef enum:
    RA_CACHE_RUN = 16 << 20     # bytes read into the page cache per MADV_POPULATE_READ, at most
cdef int g_wc_fd = -1
cdef unsigned long g_wc_dev = 0, g_wc_ino = 0
cdef char* g_wc_map = NULL
cdef size_t g_wc_len = 0

cdef void wc_drop() noexcept nogil:
    global g_wc_fd, g_wc_map, g_wc_len
    if g_wc_map != NULL:
        munmap(g_wc_map, g_wc_len)
    if g_wc_fd >= 0:
        close(g_wc_fd)
    g_wc_fd = -1
    g_wc_map = NULL
    g_wc_len = 0

cdef int g_cachestat = 1        # 0: the kernel has no cachestat(2), mincore it is

cdef int cached(char* a, size_t n) noexcept nogil:
    """Are all pages of bytes [a - g_wc_map, +n) of the file being read ahead
    in the page cache (nothing is read or mapped)?  cachestat(2) of the file,
    else mincore of its mapping (which holds the mmap lock: the scan's own
    mmap of a block waits meanwhile -- in a warm scan, for every block)."""
    global g_cachestat
    cdef unsigned char vec[512]
    cdef size_t i, k, np
    cdef int c
    if g_cachestat:
        c = wcy_file_cached(g_wc_fd, <uint64_t>(a - g_wc_map), n, OSPAGE)
        if c >= 0:
            return c
        g_cachestat = 0
    while n > 0:
        k = n if n <= 512 * OSPAGE else 512 * OSPAGE
        np = (k + OSPAGE - 1) // OSPAGE
        if mincore(a, k, vec) != 0:
            return 0
        for i in range(np):
            if not (vec[i] & 1):
                return 0
        a += k
        n -= k
    return 1

cdef void warm_cache(int fd, int64_t off, int64_t n, size_t bs) noexcept nogil:
    """Bring bytes [off, off+n) of file fd into the page cache (the readahead
    thread, g_lock not held; fd is closed, or kept as g_wc_fd); errors are
    ignored (advice)."""
    global g_wc_fd, g_wc_dev, g_wc_ino, g_wc_map, g_wc_len, st_ra_cached, st_ra_cache_reads
    cdef stat_t st
    cdef int huge = off % HUGE == 0 and bs % HUGE == 0
    cdef int64_t i, j, end
    cdef size_t k, size
    cdef char* a
    if fstat(fd, &st) != 0:
        close(fd)
        return
    if g_wc_fd >= 0 and st.st_dev == g_wc_dev and st.st_ino == g_wc_ino:
        close(fd)
    else:
        wc_drop()
        size = <size_t>st.st_size // OSPAGE * OSPAGE
        a = map_aligned(size, HUGE if huge else OSPAGE, PROT_NONE) if size else NULL
        if a == NULL:
            close(fd)
            return
        if mmap(a, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0) == MAP_FAILED:
            munmap(a, size)
            close(fd)
            return
        if huge:
            madvise(a, size, MADV_HUGEPAGE)
        g_wc_fd, g_wc_dev, g_wc_ino, g_wc_map, g_wc_len = fd, st.st_dev, st.st_ino, a, size
    end = off + n
    if end > <int64_t>g_wc_len:
        end = <int64_t>g_wc_len
    # blocks not in the cache yet (mincore) are read in runs of up to
    # RA_CACHE_RUN bytes, one MADV_POPULATE_READ each: the kernel then has
    # several 2 MiB reads in flight (one block at a time kept the disk at one
    # or two, benchmarks/repro/cache_ahead.py); the mapping is dropped after
    # each run (the cache keeps the pages; RSS grows by one run at most)
    i = off
    while i < end:
        k = bs if i + <int64_t>bs <= end else <size_t>(end - i)
        if cached(g_wc_map + i, k):             # (a warm scan: nothing to do)
            i += k
            continue
        j = i + <int64_t>k                      # extend the run of blocks to read
        while j < end and j - i < RA_CACHE_RUN:
            k = bs if j + <int64_t>bs <= end else <size_t>(end - j)
            if cached(g_wc_map + j, k):
                break
            j += k
        if madvise(g_wc_map + i, <size_t>(j - i), MADV_POPULATE_READ) != 0:
            break
        madvise(g_wc_map + i, <size_t>(j - i), MADV_DONTNEED)
        st_ra_cached += <uint64_t>((j - i + <int64_t>bs - 1) // <int64_t>bs)
        st_ra_cache_reads += 1
        i = j
    if end >= <int64_t>g_wc_len:
        wc_drop()

cdef int ra_cache(Region* r, int64_t blk, int fd, int64_t off, int64_t n) noexcept nogil:
    """Queue a page-cache request for [off, off+n) of fd, the file of blocks
    blk... (g_lock held); on success the request owns fd.  0 or -1."""
    if r.forked or r.closed:
        return -1
    if ra_push(NULL, blk, fd, off, n, 0) != 0:
        return -1
    g_raq[(g_raq_head + g_raq_len - 1) % RA_QMAX].cache = <int64_t>r.blksize
    return 0

cdef void touch_pages(char* p, size_t n) noexcept nogil:
    """Write one byte of every OS page of fresh memory p[:n]."""
    cdef size_t i = 0
    while i < n:
        (<volatile char*>p)[i] = 0
        i += OSPAGE

cdef void ra_warm(size_t bs, int64_t n) noexcept nogil:
    """Ask the readahead thread for n warm staging blocks (g_lock held)."""
    if n > 0 and g_npool < WARMMAX:
        ra_push(NULL, n, RAQ_WARM, 0, <int64_t>bs, 0)

cdef int ra_push(Region* r, int64_t blk, int fd, int64_t off, int64_t n,
                 uint64_t gen) noexcept nogil:
    """Append a request to the readahead thread's queue, starting the thread
    the first time (g_lock held).  0, or -1 if the queue is full or the
    thread cannot be started."""
    global g_raq_len, g_ra_started
    cdef pthread_t th
    cdef RAReq* q
    if g_raq_len >= RA_QMAX:
        return -1
    if not g_ra_started:
        if pthread_create(&th, NULL, ra_main, NULL) != 0:
            return -1
        pthread_detach(th)
        g_ra_started = 1
    q = &g_raq[(g_raq_head + g_raq_len) % RA_QMAX]
    q.r = r
    q.blk = blk
    q.fd = fd
    q.off = off
    q.n = n
    q.gen = gen
    q.cache = 0
    g_raq_len += 1
    pthread_cond_broadcast(&g_ra_cond)
    return 0

cdef int ra_queue(Region* r, int64_t blk, int fd, int64_t off, int64_t n) noexcept nogil:
    """Queue one extent for the readahead thread (g_lock held)."""
    if r.forked or r.closed or blk < 0 or blk >= r.nblk:
        return -1
    if r.pages[blk] != NULL:
        return 0
    if ra_push(r, blk, fd, off, n, r.gen) != 0:
        return -1
    r.busy += 1
    return 0

cdef void ra_forget(Region* r) noexcept nogil:
    """Drop the queued requests of r (g_lock held)."""
    cdef int i, k
    for i in range(g_raq_len):
        k = (g_raq_head + i) % RA_QMAX
        if g_raq[k].r == r:
            g_raq[k].r = NULL
            r.busy -= 1

cdef void ra_advise(Region* r, int64_t start, int64_t n) noexcept nogil:
    """Start reading blocks [start, start+n) ahead (g_lock not held): the
    kernel's readahead for a local file, else the BigFile's own prefetch()."""
    if n <= 0:
        return
    if r.direct_fd >= 0:
        return              # the kernel reads ahead itself (see map_direct)
    if r.has_prefetch:
        call_prefetch(r, start, n)

cdef _queue_extents(Region* r, extents, uint64_t gen0):
    """Queue what prefetch() answered (at the region's generation gen0):
    extents (blk, fd, offset, nbytes), read by the readahead thread, (blk,
    future) pairs, placed when the future completes, with the block's bytes,
    in whichever thread completes it, and (blk, MapFile[, placed]) -- runs of
    consecutive blocks of one file brought into the page cache, or mapped at
    once (map_ahead) when they are there and loadblk would answer the same
    (`placed`: called as placed(blk) for each block so mapped)."""
    cdef int64_t blk, off, n
    cdef int fd
    cdef uint64_t gen
    fh = None
    run = None              # [path, blk, offset, nbytes, placed]: consecutive MapFile blocks
    for e in extents:
        if 2 <= len(e) <= 3 and type(e[1]) is MapFile:
            blk = e[0]
            m = <MapFile>e[1]
            placed = e[2] if len(e) == 3 else None
            if blk < 0 or blk >= r.nblk or not (placed is None or callable(placed)):
                raise ValueError("prefetch: bad (blk, MapFile[, placed]) %r" % (e,))
            if m.patches is not None:
                placed = None       # (a patched block is copied: never mapped ahead)
            if (run is not None and run[0] == m.path and run[1] + run[3] // r.blksize == blk
                    and run[2] + run[3] == m.offset and run[4] is placed):
                run[3] += r.blksize
            else:
                if run is not None:
                    _queue_cache(r, run, gen0)
                run = [m.path, blk, m.offset, r.blksize, placed]
            continue
        if len(e) == 2:
            blk, fut = e
            if blk < 0 or blk >= r.nblk or not callable(getattr(fut, "add_done_callback", None)):
                raise ValueError("prefetch: bad (blk, future) %r" % (e,))
            if fh is None:
                fh = _weakref.ref(<object>r.fileh)
            lock()
            gen = r.gen
            skip = r.pages[blk] != NULL or r.closed or r.forked
            unlock()
            if not skip:
                fut.add_done_callback(_RAPlace.new(fh, blk, gen))
            continue
        blk, fd, off, n = e
        if n < 0 or n > <int64_t>r.blksize or off < 0 or fd < 0:
            raise ValueError("prefetch: bad extent %r" % (e,))
        lock()
        rc = ra_queue(r, blk, fd, off, n)
        unlock()
        if rc != 0:
            break
    if run is not None:
        _queue_cache(r, run, gen0)

cdef _queue_cache(Region* r, run, uint64_t gen0):
    """A page-cache request for the blocks of run (see _queue_extents); the
    first ones, when their bytes are in the page cache already and `placed`
    was given, are mapped at once instead (map_ahead)."""
    cdef int fd
    cdef int64_t blk = run[1], off = run[2], n = run[3], k = 0, i, done
    cdef size_t bs = r.blksize
    cdef int rc
    placed = run[4]
    try:
        fd = _os.open(run[0], _os.O_RDONLY | _os.O_CLOEXEC)
    except OSError:
        return              # (the block's own load will report it)
    try:
        size = _os.fstat(fd).st_size
        if size < off + n:                  # (never map past the end)
            n = (size - off) // OSPAGE * OSPAGE if size > off else 0
    except OSError:
        n = 0
    if placed is not None and g_map_ahead and n >= <int64_t>bs:
        with nogil:
            # the blocks whose bytes are all in the page cache (no waiting
            # for the disk in the scan's thread: the others are read ahead)
            while (k + 1) * <int64_t>bs <= n and wcy_file_cached(
                    fd, <uint64_t>(off + k * <int64_t>bs), bs, OSPAGE) == 1:
                k += 1
            done = map_ahead(r, blk, fd, off, k, gen0) if k else 0
        for i in range(done):
            try:
                placed(blk + i)
            except BaseException as e:      # (advice: the block stays mapped)
                _report_ignored("placed(%d) of prefetch" % (blk + i), e)
        blk += done
        off += done * <int64_t>bs
        n -= done * <int64_t>bs
    rc = -1
    if n > 0:
        lock()
        rc = ra_cache(r, blk, fd, off, n)
        unlock()
    if rc != 0:
        _os.close(fd)


# Mapping ahead: in a scan over a warm page cache the time of each block is
# the fault (signal, handler, loadblk, an mmap and three madvise of the
# block), ~40 us against the 3-4 us of numpy.memmap's fault of a 2 MiB folio.
# When prefetch() says that blocks ahead are consecutive blocks of one file
# that loadblk would map (a callable `placed` with the MapFile) and their
# bytes are in the page cache, they are mapped at once, with one mmap and one
# populate for the run, and become LOADED as if each had been loaded: the
# scan reads them without a fault (benchmarks/repro/map_ahead.py).

cdef int g_map_ahead = 1
cdef uint64_t st_mapped_ahead = 0

cdef int64_t map_ahead(Region* r, int64_t blk, int fd, int64_t off, int64_t n,
                       uint64_t gen0) noexcept nogil:
    """Map blocks [blk, blk+n) of r from fd at off (their bytes in the page
    cache), the ones absent from the first up to the first present (g_lock not
    held).  -> how many became LOADED (blocks blk, blk+1, ...: those after a
    block invalidated meanwhile are given up too)."""
    global st_zerocopy, st_mapped_ahead, g_resident
    cdef size_t bs = r.blksize
    cdef int64_t k = 0, i, good
    cdef Page* p
    cdef char* addr = blk_addr(r, blk)
    cdef int huge = bs % HUGE == 0 and off % HUGE == 0 and (<uintptr_t>addr) % HUGE == 0
    cdef int ok
    lock()
    if r.closed or r.forked or r.gen != gen0:
        unlock()
        return 0
    while k < n and blk + k < r.nblk and r.pages[blk + k] == NULL:
        p = page_new(r, blk + k)
        if p == NULL:
            break
        p.state = PG_LOADING
        p.loader = pthread_self()
        reclaim(bs, 0)
        resident_add(bs)
        k += 1
    unlock()
    if k == 0:
        return 0
    ok = mmap(addr, <size_t>k * bs, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, off) != MAP_FAILED
    if ok:
        if huge:
            madvise(addr, <size_t>k * bs, MADV_HUGEPAGE)
        madvise(addr, <size_t>k * bs, MADV_RANDOM)
        madvise(addr, <size_t>k * bs, MADV_POPULATE_READ)
    lock()
    good = 0
    for i in range(k):
        p = r.pages[blk + i]
        if ok and good == i and not p.stale and not r.closed and r.gen == gen0:
            p.filemap = 1
            p.seqmap = 1
            p.prot = PROT_RO
            p.state = PG_LOADED
            p.referenced = 1
            clock_add(p)
            good += 1
        else:
            if ok:
                reset_slot(addr + i * <int64_t>bs, bs)
            g_resident -= bs
            page_free(p)
    if good:
        st_zerocopy += good
        st_mapped_ahead += good
        if r.last_load < blk + good - 1:
            r.last_load = blk + good - 1    # (the scan goes on from there)
    notify()
    unlock()
    return good


cdef class _RAPlace:
    """Done-callback of a future prefetch() answered for one block: its
    result (bytes-like, or None) becomes the block's page, PROT_NONE like a
    block read ahead from a file, if nothing changed the block's generation
    meanwhile."""
    cdef object fh
    cdef int64_t blk
    cdef uint64_t gen

    @staticmethod
    cdef _RAPlace new(fh, int64_t blk, uint64_t gen):
        cdef _RAPlace c = _RAPlace.__new__(_RAPlace)
        c.fh = fh
        c.blk = blk
        c.gen = gen
        return c

    def __call__(self, fut):
        try:
            if fut.cancelled() or fut.exception() is not None:
                return
            data = fut.result()
            fh = self.fh()
            if data is not None and fh is not None:
                (<BigFileH>fh)._ra_place(self.blk, self.gen, data)
        except BaseException as e:          # readahead is advice: never fatal
            _report_ignored("placing block %d read ahead" % self.blk, e)


cdef void call_prefetch(Region* r, int64_t start, int64_t n) noexcept nogil:
    with gil:
        _run_prefetch(r, start, n)

cdef void _run_prefetch(Region* r, int64_t start, int64_t n) noexcept:
    cdef uint64_t gen
    cdef PyObject *et
    cdef PyObject *ev
    cdef PyObject *etb
    PyErr_Fetch(&et, &ev, &etb)
    if not r.closed:
        try:
            lock()
            gen = r.gen
            unlock()
            extents = (<object>r.bigfile).prefetch(start, n)
            if extents:
                _queue_extents(r, extents, gen)
            elif not r.last_mapped:
                # the blocks will be copied in by loadblk on the faulting
                # thread: have their staging memory made ready meanwhile
                # (extents are read into slots by the readahead thread
                # itself; futures are copied in by the thread completing
                # them - warming memory for them too only competed with it
                # for the CPU, and was slower on 2 cores)
                lock()
                ra_warm(r.blksize, n)
                unlock()
        except BaseException as e:          # readahead is advice: never fatal
            if r.has_prefetch == 1:         # (said once per handle)
                r.has_prefetch = 2
                _report_ignored("%r.prefetch failed" % (<object>r.bigfile,), e)
    PyErr_Restore(et, ev, etb)

cdef void ra_after_fork() noexcept nogil:
    """In a fork()ed child (from atfork_child): the readahead thread is not
    there; forget its queue."""
    global g_raq_len, g_ra_started, g_wc_fd, g_wc_map
    cdef int i
    pthread_cond_init(&g_ra_cond, NULL)
    if g_wc_fd >= 0:                # (the child's copies of the thread's file)
        close(g_wc_fd)
        g_wc_fd = -1
    g_wc_map = NULL                 # (mapped in the child too: left alone)
    for i in range(g_raq_len):
        if g_raq[(g_raq_head + i) % RA_QMAX].cache > 0:
            close(g_raq[(g_raq_head + i) % RA_QMAX].fd)     # (the child's copy)
        elif g_raq[(g_raq_head + i) % RA_QMAX].r != NULL:
            g_raq[(g_raq_head + i) % RA_QMAX].r.busy -= 1
    g_raq_len = 0
    g_ra_started = 0
