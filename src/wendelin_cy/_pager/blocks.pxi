# blocks.pxi: the states of a block, its Page, and dirty tracking.
#
# A block of a Region is "absent" (r.pages[blk] == NULL) or has a Page in one
# of three states.  Every transition happens under g_lock:
#
#   from      to        when                                  who
#   --------  --------  ------------------------------------  ---------------------
#   absent    LOADING   a fault or an entry point needs it    load_begin (load.pxi)
#   absent    LOADING   readahead takes a queued block        ra_begin (readahead.pxi)
#   SPILLED   LOADING   a fault needs a spilled block         load_begin
#   LOADING   LOADED    the loader placed it at its address   load_finish, ra_finish
#   LOADING   absent    loading failed (or stale readahead)   load_undo, ra_finish
#   LOADING   SPILLED   reading it back failed                load_undo
#   LOADED    SPILLED   reclaim, a dirty block                page_spill (scratch.pxi)
#   LOADED    absent    reclaim (clean), drop_clean,          page_drop
#                       invalidate_page, dirty_discard, close
#   SPILLED   absent    writeout (MARKSTORED), dirty_discard,  page_drop
#                       close
#
# Only the loader (Page.loader) touches a LOADING page's memory; everyone else
# waits for notify().  A LOADED page's protection says what the next access
# costs: PROT_NONE after the CLOCK hand demoted it, or read ahead and not yet
# touched (one soft fault marks it referenced again), PROT_READ when clean (or
# dirty while being written out), PROT_READ|PROT_WRITE when dirty.  A SPILLED
# page is always dirty: its data lives only in the scratch file.
#
# Dirty tracking: a block becomes dirty only through mark_dirty and clean only
# through mark_clean (or by being dropped, page_drop).  Both keep Page.dirty,
# Region.ndirty and g_dirty in step.

cdef enum:
    PG_LOADING = 1
    PG_LOADED = 2
    PG_SPILLED = 3

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
    """Forget the Page (its memory and scratch slot are the caller's business)."""
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
        g_resident -= r.blksize - p.uncharged
        if p.dirty:
            g_dirty -= r.blksize - p.uncharged
        p.uncharged = 0
        st_evictions += 1
    elif p.state == PG_SPILLED:
        scratch_release(p.spill, r.blksize)
        g_spilled -= r.blksize
    if p.dirty:
        r.ndirty -= 1
    page_free(p)

cdef int set_prot(Page* p, int prot) noexcept nogil:
    """mprotect the block to prot, if it is not that already; 0 or errno.
    A compacted block made accessible is counted whole again (recharge)."""
    if p.prot != prot:
        if mprotect(blk_addr(p.region, p.blk), p.region.blksize, prot) != 0:
            return errno
        p.prot = prot
        if prot != PROT_NONE and p.uncharged:
            recharge(p)
    return 0

cdef inline void set_charge(Page* p, size_t charge) noexcept nogil:
    """Count the LOADED block p as `charge` bytes of RAM (g_lock held)."""
    global g_resident, g_dirty
    cdef size_t bs = p.region.blksize
    cdef size_t unch = bs - charge if charge < bs else 0
    if unch < p.uncharged:
        resident_add(p.uncharged - unch)
        if p.dirty:
            g_dirty += p.uncharged - unch
    else:
        g_resident -= unch - p.uncharged
        if p.dirty:
            g_dirty -= unch - p.uncharged
    p.uncharged = unch

cdef inline void recharge(Page* p) noexcept nogil:
    """The compacted block p becomes accessible: count it whole (g_lock held)."""
    set_charge(p, p.region.blksize)

cdef inline int mark_dirty(Region* r, Page* p) noexcept nogil:
    """The resident block p is about to be written (g_lock held).  Returns 1
    when the handle just went clean -> dirty and has a dirty hook: the caller
    runs call_dirty_hook(r) once g_lock is released."""
    global g_dirty
    if p.dirty:
        return 0
    p.dirty = 1
    r.ndirty += 1
    r.gen += 1
    g_dirty += r.blksize - p.uncharged
    return r.ndirty == 1 and r.dirty_hook != NULL

cdef inline void mark_clean(Region* r, Page* p) noexcept nogil:
    """The LOADED dirty block p was written out (g_lock held)."""
    global g_dirty
    p.dirty = 0
    r.ndirty -= 1
    g_dirty -= r.blksize - p.uncharged


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


# ------------------------------------------------------------------ writeout
#
# BigFileH.dirty_writeout: writeout_begin pins the dirty blocks and
# write-protects them (Page.writing set); storeblk then reads them without
# g_lock.  A write meanwhile faults and clears .writing: such a block stays
# dirty when writeout_done marks the others clean.

cdef Page** writeout_begin(Region* r, int64_t* n) noexcept nogil:
    """Pin the dirty blocks of r (g_lock held) -> malloc'd array of their
    pages, *n of them; NULL if out of memory (nothing pinned)."""
    cdef Page* p
    cdef Page** pv
    cdef int64_t i = 0
    n[0] = 0
    p = r.plist
    while p != NULL:
        if p.dirty and p.state != PG_LOADING:
            n[0] += 1
        p = p.rnext
    pv = <Page**>malloc((n[0] + 1) * sizeof(Page*))
    if pv == NULL:
        return NULL
    r.gen += 1
    p = r.plist
    while p != NULL:
        if p.dirty and p.state != PG_LOADING:
            pv[i] = p
            i += 1
            p.pin += 1
            p.writing = 1
            if p.state == PG_LOADED and not p.uncharged:
                set_prot(p, PROT_RO)      # a concurrent write faults, clears .writing
        p = p.rnext
    return pv

cdef void writeout_abort(Page** pv, int64_t n) noexcept nogil:
    """storeblk failed (g_lock held): unpin, everything stays dirty."""
    cdef int64_t i
    for i in range(n):
        pv[i].pin -= 1
        pv[i].writing = 0

cdef void writeout_done(Page** pv, int64_t n, int markstored) noexcept nogil:
    """The blocks are stored (g_lock held): unpin them; with markstored the
    ones not written meanwhile become clean (a SPILLED one is dropped: the
    storage has its data), the others are writable again."""
    global st_writeouts
    cdef Page* p
    cdef int64_t i
    for i in range(n):
        p = pv[i]
        p.pin -= 1
        if markstored and p.writing:
            if p.state == PG_LOADED:
                mark_clean(p.region, p)
                set_prot(p, PROT_RO if p.prot != PROT_NONE else PROT_NONE)
            elif p.state == PG_SPILLED:
                p.writing = 0
                page_drop(p)             # (a SPILLED page is dirty: counted there)
                st_writeouts += 1
                continue
        elif p.state == PG_LOADED and p.writing and p.prot == PROT_RO:
            set_prot(p, PROT_RW)     # still dirty: writable again
        p.writing = 0
        st_writeouts += 1
