# scratch.pxi: the scratch file, where dirty blocks are parked (SPILLED) when
# clean ones do not free enough of the budget.  It is an unnamed O_TMPFILE in
# set_scratch_dir()'s directory, opened on the first spill; its slots are
# block-sized and reused.

cdef int g_scratch_fd = -1
cdef int64_t g_scratch_end = 0
cdef int64_t* g_scratch_free = NULL     # free offsets (all slots of one size class)
cdef size_t* g_scratch_free_sz = NULL
cdef int g_nscratch_free = 0
cdef int g_capscratch_free = 0
cdef char* g_scratch_dir_c = NULL       # malloc'd; replaced under g_lock
cdef enum:
    SCRATCH_FREE_GROW = 16              # free-list entries added at a time

cdef int scratch_open() noexcept nogil:
    """Open the scratch file (g_lock held): no GIL may be taken here, a thread
    holding it may be waiting for g_lock."""
    global g_scratch_fd
    if g_scratch_fd >= 0:
        return 0
    if g_scratch_dir_c == NULL:
        return -1
    g_scratch_fd = open(g_scratch_dir_c, O_RDWR | O_TMPFILE | O_EXCL | O_CLOEXEC,
                        0o600)             # (owner only; it is never linked)
    return 0 if g_scratch_fd >= 0 else -1

cdef int64_t scratch_alloc(size_t size) noexcept nogil:
    """Offset of a free slot of `size` bytes: a released one, else at the end."""
    global g_scratch_end, g_nscratch_free
    cdef int i = index_of_size(g_scratch_free_sz, g_nscratch_free, size)
    cdef int64_t off
    if i >= 0:
        off = g_scratch_free[i]
        g_nscratch_free -= 1
        g_scratch_free[i] = g_scratch_free[g_nscratch_free]
        g_scratch_free_sz[i] = g_scratch_free_sz[g_nscratch_free]
        return off
    off = g_scratch_end
    g_scratch_end += size
    return off

cdef void scratch_release(int64_t off, size_t size) noexcept nogil:
    global g_nscratch_free, g_capscratch_free, g_scratch_free, g_scratch_free_sz
    cdef int64_t* nf
    cdef size_t* nsz
    if off < 0:
        return
    if g_nscratch_free == g_capscratch_free:
        nf = <int64_t*>realloc(g_scratch_free, (g_capscratch_free * 2 + SCRATCH_FREE_GROW) * sizeof(int64_t))
        if nf == NULL:
            return            # leak the slot: harmless
        g_scratch_free = nf
        nsz = <size_t*>realloc(g_scratch_free_sz, (g_capscratch_free * 2 + SCRATCH_FREE_GROW) * sizeof(size_t))
        if nsz == NULL:
            return
        g_scratch_free_sz = nsz
        g_capscratch_free = g_capscratch_free * 2 + SCRATCH_FREE_GROW
    g_scratch_free[g_nscratch_free] = off
    g_scratch_free_sz[g_nscratch_free] = size
    g_nscratch_free += 1

cdef int page_spill(Page* p) noexcept nogil:
    """Park a dirty LOADED page in the scratch file (g_lock held).  Writers fault
    on it (we make it read-only first) and wait for us on g_lock."""
    global g_resident, g_dirty, g_spilled, st_spills
    cdef Region* r = p.region
    cdef int64_t off
    if scratch_open() != 0:
        return -1
    if set_prot(p, PROT_RO) != 0:
        return -1
    off = scratch_alloc(r.blksize)
    if rw_full(g_scratch_fd, blk_addr(r, p.blk), r.blksize, off, IO_WRITE) != 0:
        scratch_release(off, r.blksize)
        return -1
    clock_del(p)
    page_unmap(p)
    p.state = PG_SPILLED
    p.prot = PROT_NONE
    p.spill = off
    g_resident -= r.blksize
    g_dirty -= r.blksize
    g_spilled += r.blksize
    st_spills += 1
    return 0

cdef void page_unspilled(Page* p) noexcept nogil:
    """The SPILLED block p is back in RAM, still dirty (g_lock held): free its
    scratch slot."""
    global g_spilled, g_dirty, st_unspills
    cdef size_t bs = p.region.blksize
    scratch_release(p.spill, bs)
    p.spill = -1
    g_spilled -= bs
    g_dirty += bs
    st_unspills += 1
