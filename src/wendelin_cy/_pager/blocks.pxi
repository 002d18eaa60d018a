# ------------------------------------------------------------------ pages

cdef Page* page_new(Region* r, int64_t blk) noexcept nogil:
    cdef Page* p = <Page*>calloc(1, sizeof(Page))
    if p == NULL:
        return NULL
    p.region = r
    p.blk = blk
    p.spill = -1
    p.rnext = r.plist
    if r.plist != NULL:
        r.plist.rprev = p
    r.plist = p
    r.pages[blk] = p
    r.npages += 1
    return p

cdef void page_free(Page* p) noexcept nogil:
    global g_last_loaded, g_ra_inflight
    cdef Region* r = p.region
    if p == g_last_loaded:
        g_last_loaded = NULL
    if p.ra:
        g_ra_inflight -= 1
    if p.rprev != NULL:
        p.rprev.rnext = p.rnext
    else:
        r.plist = p.rnext
    if p.rnext != NULL:
        p.rnext.rprev = p.rprev
    r.pages[p.blk] = NULL
    r.npages -= 1
    free(p)

cdef void page_drop(Page* p) noexcept nogil:
    """Forget a LOADED or SPILLED page entirely (its data is lost)."""
    global g_resident, g_dirty, g_spilled, st_evictions
    cdef Region* r = p.region
    if p.state == PG_LOADED:
        clock_del(p)
        page_unmap(p)
        g_resident -= r.blksize
        if p.dirty:
            g_dirty -= r.blksize
        st_evictions += 1
    elif p.state == PG_SPILLED:
        scratch_release(p.spill, r.blksize)
        g_spilled -= r.blksize
    if p.dirty:
        r.ndirty -= 1
    page_free(p)

cdef int set_prot(Page* p, int prot) noexcept nogil:
    if p.prot != prot:
        if mprotect(blk_addr(p.region, p.blk), p.region.blksize, prot) != 0:
            return errno
        p.prot = prot
    return 0
