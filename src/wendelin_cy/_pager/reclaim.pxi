# reclaim.pxi: keeping within the RAM budget.  LOADED pages are on one CLOCK
# ring (all regions together); reclaim() sweeps it when a load needs room:
# referenced pages are demoted to PROT_NONE (their next touch is a soft fault
# that sets the bit again), unreferenced clean ones are evicted, dirty ones
# spilled to the scratch file only when clean ones do not suffice.  A dirty
# block mapped privately from a file holds RAM of its own only for the pages
# written (the kernel's copies): reclaim compacts it first (page_compact).

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
                if p.filemap and not p.uncharged and not p.nocompact:
                    page_compact(p)     # frees most of it, writes nothing
                elif pass_ == 1 and (not p.uncharged or scanned > g_nclock + 1):
                    page_spill(p)       # (a compacted one frees little: last)
                continue
            page_drop(p)            # clean: evicted
    if need == 0 or pressure(need) > g_budget:
        pool_drain()
    if pressure(need) > g_budget and need:
        st_overshoots += 1


# ------------------------------------------- compacting file-mapped dirty blocks

cdef int g_pagemap_fd = -1
cdef int g_pagemap_pid = 0
cdef uint64_t PM_PRESENT = 1ULL << 63, PM_SWAPPED = 1ULL << 62, PM_FILE = 1ULL << 61

cdef int pagemap_open() noexcept nogil:
    """The fd of /proc/self/pagemap (reopened after a fork: "self" is resolved
    when it is opened), or -1."""
    global g_pagemap_fd, g_pagemap_pid
    cdef int pid = getpid()
    if g_pagemap_pid != pid:
        if g_pagemap_fd >= 0:
            close(g_pagemap_fd)
        g_pagemap_fd = open(b"/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        g_pagemap_pid = pid
    return g_pagemap_fd

cdef int64_t unmap_file_pages(char* addr, size_t size) noexcept nogil:
    """In [addr, addr+size), mapped privately from a file: unmap the pages
    that are still the file's (MADV_DONTNEED on each run of them: the page
    cache keeps them, a later access maps them again), keep the kernel's
    private copies (the pages written).  Returns how many pages of the range
    are left in RAM or swap, or -1 when the kernel does not tell (pagemap:
    the flags used here mean this since Linux 4.2)."""
    cdef uint64_t ent[512]
    cdef int fd = pagemap_open()
    cdef int64_t npg = size // OSPAGE, done = 0, k, i, kept = 0, run = -1
    if fd < 0:
        return -1
    while done < npg:
        k = npg - done if npg - done < 512 else 512
        if pread(fd, ent, k * 8, <off_t>((<uintptr_t>addr // OSPAGE + done) * 8)) != k * 8:
            return -1
        for i in range(k):
            if ent[i] & PM_PRESENT and ent[i] & PM_FILE:
                if run < 0:
                    run = done + i              # a run of the file's pages starts
                continue
            if run >= 0:
                madvise(addr + run * OSPAGE, (done + i - run) * OSPAGE, MADV_DONTNEED)
                run = -1
            if ent[i] & (PM_PRESENT | PM_SWAPPED):
                kept += 1                       # a private copy (or not the file's)
        done += k
    if run >= 0:
        madvise(addr + run * OSPAGE, (npg - run) * OSPAGE, MADV_DONTNEED)
    return kept

cdef void page_compact(Page* p) noexcept nogil:
    """Make the dirty LOADED block p, mapped privately from a file (filemap),
    cost only the RAM of its written pages (g_lock held).  Only those hold
    data of their own (the kernel's private copies); the others are the
    file's, still in the page cache: they are unmapped (unmap_file_pages) and
    the block is counted as the pages left.  It stays PROT_NONE, so that no
    thread changes it meanwhile and its next access is a soft fault that
    counts it whole again (set_prot).  When it frees less than half of the
    block, it is not tried again."""
    global st_compactions
    cdef Region* r = p.region
    cdef size_t bs = r.blksize
    cdef int64_t n
    if set_prot(p, PROT_NONE) != 0:
        return
    n = unmap_file_pages(blk_addr(r, p.blk), bs)
    if n < 0:
        p.nocompact = 1
        return
    set_charge(p, <size_t>n * OSPAGE)
    st_compactions += 1
    if <size_t>n * OSPAGE * 2 > bs:
        p.nocompact = 1
