# reclaim.pxi: keeping within the RAM budget.  LOADED pages are on one CLOCK
# ring (all regions together); reclaim() sweeps it when a load needs room:
# referenced pages are demoted to PROT_NONE (their next touch is a soft fault
# that sets the bit again), unreferenced clean ones are evicted, dirty ones
# spilled to the scratch file only when clean ones do not suffice.

cdef Page* g_hand = NULL        # the CLOCK hand: next page to look at
cdef int64_t g_nclock = 0       # pages on the ring


cdef void clock_add(Page* p) noexcept nogil:
    global g_hand, g_nclock
    if g_hand == NULL:
        p.prev = p
        p.next = p
        g_hand = p
    else:          # just behind the hand: visited last
        p.next = g_hand
        p.prev = g_hand.prev
        g_hand.prev.next = p
        g_hand.prev = p
    g_nclock += 1

cdef void clock_del(Page* p) noexcept nogil:
    global g_hand, g_nclock
    if p.next == p:
        g_hand = NULL
    else:
        if g_hand == p:
            g_hand = p.next
        p.prev.next = p.next
        p.next.prev = p.prev
    p.prev = NULL
    p.next = NULL
    g_nclock -= 1

cdef inline size_t pressure(size_t need) noexcept nogil:
    return g_resident + g_pool_bytes + need

cdef void reclaim(size_t need, size_t bs) noexcept nogil:
    """Make room for `need` more bytes (a block of size bs when need > 0): CLOCK
    over LOADED pages.  A referenced page is demoted to PROT_NONE (its next touch
    costs one soft fault and marks it referenced again); an unreferenced clean page
    is evicted; dirty pages are spilled only when clean ones do not suffice."""
    global g_hand, st_demotions, st_overshoots
    cdef int pass_
    cdef int64_t scanned, limit
    cdef Page* p
    cdef size_t eff
    for pass_ in range(2):
        # pass 0: one sweep, clean pages only; pass 1: dirty ones are spilled too
        # (treating dirty pages as unevictable would make the few clean ones
        # thrash; an instruction that spans two blocks could then never finish)
        scanned = 0
        limit = g_nclock + 1 if pass_ == 0 else 2 * g_nclock + 2
        while g_hand != NULL and scanned < limit:
            # a pooled slot of the size asked for is already counted
            eff = 0 if need and pool_has(bs) else need
            if pressure(eff) <= g_budget:
                return
            p = g_hand
            g_hand = p.next
            scanned += 1
            if p.pin or p == g_last_loaded:
                continue        # the block just loaded is what the faulting access needs
            if p.referenced:
                p.referenced = 0
                if set_prot(p, PROT_NONE) == 0:
                    st_demotions += 1
                continue
            if p.dirty:
                if pass_ == 1:
                    page_spill(p)
                continue
            page_drop(p)            # clean: evicted
    if need == 0 or pressure(need) > g_budget:
        pool_drain()
    if pressure(need) > g_budget and need:
        st_overshoots += 1
