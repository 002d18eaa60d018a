# ----------------------------------------------------------------- scratch

cdef int scratch_open() noexcept nogil:
    """Open the scratch file (g_lock held): no GIL may be taken here, a thread
    holding it may be waiting for g_lock."""
    global g_scratch_fd
    if g_scratch_fd >= 0:
        return 0
    if g_scratch_dir_c == NULL:
        return -1
    g_scratch_fd = open(g_scratch_dir_c, O_RDWR | O_TMPFILE | O_EXCL | O_CLOEXEC, 0o600)
    return 0 if g_scratch_fd >= 0 else -1

cdef int64_t scratch_alloc(size_t size) noexcept nogil:
    global g_scratch_end, g_nscratch_free
    cdef int i
    cdef int64_t off
    for i in range(g_nscratch_free):
        if g_scratch_free_sz[i] == size:
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
        nf = <int64_t*>realloc(g_scratch_free, (g_capscratch_free * 2 + 16) * sizeof(int64_t))
        if nf == NULL:
            return            # leak the slot: harmless
        g_scratch_free = nf
        nsz = <size_t*>realloc(g_scratch_free_sz, (g_capscratch_free * 2 + 16) * sizeof(size_t))
        if nsz == NULL:
            return
        g_scratch_free_sz = nsz
        g_capscratch_free = g_capscratch_free * 2 + 16
    g_scratch_free[g_nscratch_free] = off
    g_scratch_free_sz[g_nscratch_free] = size
    g_nscratch_free += 1

cdef int rw_full(int fd, char* buf, size_t size, int64_t off, int write) noexcept nogil:
    """pread/pwrite the whole range; 0 or errno.  A short read zero-fills (holes)."""
    cdef ssize_t n
    cdef size_t done = 0
    while done < size:
        if write:
            n = pwrite(fd, buf + done, size - done, off + done)
        else:
            n = pread(fd, buf + done, size - done, off + done)
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        if n == 0:
            if write:
                return EIO_()
            memset(buf + done, 0, size - done)
            return 0
        done += n
    return 0

cdef inline int EIO_() noexcept nogil:
    return 5

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
    if rw_full(g_scratch_fd, blk_addr(r, p.blk), r.blksize, off, 1) != 0:
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
