# ----------------------------------------------------------------------------
# memory primitives (g_lock held or memory private to the caller)

cdef inline char* blk_addr(Region* r, int64_t blk) noexcept nogil:
    return r.base + <size_t>blk * r.blksize

cdef char* map_aligned(size_t size, size_t align, int prot) noexcept nogil:
    """Fresh anonymous mapping of `size` bytes aligned to `align`."""
    cdef char* p = <char*>mmap(NULL, size + align, prot,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    cdef uintptr_t a
    cdef size_t head
    if <void*>p == MAP_FAILED:
        return NULL
    a = (<uintptr_t>p + align - 1) & ~(<uintptr_t>align - 1)
    head = a - <uintptr_t>p
    if head:
        munmap(p, head)
    if align - head:
        munmap(<char*>a + size, align - head)
    return <char*>a

cdef inline size_t align_for(size_t blksize) noexcept nogil:
    return HUGE if blksize % HUGE == 0 else OSPAGE

cdef int reset_slot(char* addr, size_t size) noexcept nogil:
    """Drop the memory at addr and make it PROT_NONE again, as a fresh mapping
    (so the kernel can merge it back into the surrounding reservation: the VMA
    count stays bounded by the number of resident blocks)."""
    if mmap(addr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE,
            -1, 0) == MAP_FAILED:
        # cannot happen short of ENOMEM at vm.max_map_count; keep the promise
        # "no access" with the calls that do not need a new VMA
        madvise(addr, size, MADV_DONTNEED)
        if mprotect(addr, size, PROT_NONE) != 0:
            return errno
    return 0

# Huge pages for new staging blocks.  A 2 MiB block faulted in as one huge
# page costs the kernel one zeroing (0.23 ms measured here) against 512 small
# pages (0.65-0.95 ms).  But on a VM whose host takes free guest memory back
# (free page reporting), a huge page the host no longer backs waited for the
# host 4.4 ms here, while small pages stayed at 0.65-0.95 ms
# (benchmarks/repro/first_touch.py).  So the readahead thread times each
# huge-page block it populates ahead of a scan (warm_slots): when one takes
# longer than small pages would, the next THP_BACKOFF new blocks get small
# pages, then huge pages are tried again.  A short backoff measured best: ZEO
# scans with a 1 GiB budget, A/B medians of 6, 0.69 -> 0.79 (loopback) and
# 0.76 -> 0.90 (2 ms round trip) of ZEO's own loads with 8, 0.71 / 0.85 with
# 64.  Blocks read ahead by futures or extents take no warm blocks and keep
# huge pages unless a backoff is on (small pages for all of them measured
# slower for SQLite: 0.55 against 0.70).

cdef long THP_SLOW_NS = 1500000     # per 2 MiB: slower than small pages
cdef int THP_BACKOFF = 8            # new blocks on small pages after a slow one
cdef int g_thp_skip = 0
cdef uint64_t st_small_slots = 0

cdef inline long now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return t.tv_sec * 1000000000 + t.tv_nsec

cdef inline int thp_want(size_t bs) noexcept nogil:
    """Should a new staging block of bs bytes get huge pages (g_lock held)?"""
    global g_thp_skip, st_small_slots
    if bs % HUGE != 0:
        return 0
    if g_thp_skip > 0:
        g_thp_skip -= 1
        st_small_slots += 1
        return 0
    return 1

cdef char* pool_take(size_t size) noexcept nogil:
    global g_npool, g_pool_bytes
    cdef int i
    cdef char* p
    for i in range(g_npool):
        if g_pool_size[i] == size:
            p = g_pool[i]
            g_npool -= 1
            g_pool[i] = g_pool[g_npool]
            g_pool_size[i] = g_pool_size[g_npool]
            g_pool_bytes -= size
            return p
    return NULL

cdef void pool_drain() noexcept nogil:
    global g_npool, g_pool_bytes
    while g_npool > 0:
        g_npool -= 1
        munmap(g_pool[g_npool], g_pool_size[g_npool])
        g_pool_bytes -= g_pool_size[g_npool]

cdef int page_unmap(Page* p) noexcept nogil:
    """Take a LOADED page's memory away from its address; recycle it into the
    staging pool when there is room (saves zeroing a fresh block on next load)."""
    global g_npool, g_pool_bytes, st_pool_fail
    cdef Region* r = p.region
    cdef char* addr = blk_addr(r, p.blk)
    cdef size_t bs = r.blksize
    cdef char* slot
    if p.filemap:
        # page cache pages the scan is done with: first in line for the
        # kernel's reclaim (under a memory cgroup limit they would otherwise
        # compete with the readahead the scan needs); without memory pressure
        # they stay cached
        madvise(addr, bs, MADV_COLD)
    if g_npool < POOLMAX and not p.filemap:
        slot = map_aligned(bs, align_for(bs), PROT_NONE)
        # MREMAP_DONTUNMAP leaves the old range mapped but empty: with read
        # permission left on it, another thread reading there meanwhile would
        # see zero pages instead of faulting.  Take all access away first.
        if slot != NULL and p.prot != PROT_NONE and mprotect(addr, bs, PROT_NONE) != 0:
            munmap(slot, bs)
            slot = NULL
        if slot != NULL:
            p.prot = PROT_NONE
            if mremap(addr, bs, bs, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
                      slot) == MAP_FAILED:
                st_pool_fail += 1
                munmap(slot, bs)
            else:
                g_pool[g_npool] = slot
                g_pool_size[g_npool] = bs
                g_npool += 1
                g_pool_bytes += bs
    return reset_slot(addr, bs)

# ---------------------------------------------------------------- regions

cdef Region* region_find(uintptr_t addr) noexcept nogil:
    cdef int lo = 0, hi = g_nregions - 1, mid
    cdef Region* r
    while lo <= hi:
        mid = (lo + hi) // 2
        r = g_regions[mid]
        if addr < <uintptr_t>r.base:
            hi = mid - 1
        elif addr >= <uintptr_t>r.base + r.size:
            lo = mid + 1
        else:
            return r
    return NULL

cdef int region_insert(Region* r) noexcept nogil:
    global g_regions, g_capregions, g_nregions
    cdef Region** nr
    cdef int i
    if g_nregions == g_capregions:
        nr = <Region**>realloc(g_regions, (g_capregions * 2 + 8) * sizeof(Region*))
        if nr == NULL:
            return -1
        g_regions = nr
        g_capregions = g_capregions * 2 + 8
    i = g_nregions
    while i > 0 and <uintptr_t>g_regions[i - 1].base > <uintptr_t>r.base:
        g_regions[i] = g_regions[i - 1]
        i -= 1
    g_regions[i] = r
    g_nregions += 1
    return 0

cdef void region_remove(Region* r) noexcept nogil:
    global g_nregions
    cdef int i, j
    for i in range(g_nregions):
        if g_regions[i] == r:
            for j in range(i, g_nregions - 1):
                g_regions[j] = g_regions[j + 1]
            g_nregions -= 1
            return

# ------------------------------------------------------------ loading

cdef char* acquire_slot(size_t bs, int* recycled=NULL) noexcept nogil:
    """A writable staging buffer for one block, counted as resident (g_lock held).
    *recycled: 1 if it holds the pages of an evicted block (old data), 0 if it
    is a fresh mapping (zero, no pages yet)."""
    global g_resident, st_peak_resident, st_fresh_slots
    cdef char* slot
    reclaim(bs, bs)
    slot = pool_take(bs)
    if slot != NULL:
        if mprotect(slot, bs, PROT_RW) != 0:
            munmap(slot, bs)
            slot = NULL
    if recycled != NULL:
        recycled[0] = slot != NULL
    if slot == NULL:
        slot = map_aligned(bs, align_for(bs), PROT_RW)
        if slot == NULL:
            return NULL
        st_fresh_slots += 1
        if thp_want(bs):
            madvise(slot, bs, MADV_HUGEPAGE)
    g_resident += bs
    if g_resident > st_peak_resident:
        st_peak_resident = g_resident
    return slot

cdef void release_slot(char* slot, size_t bs) noexcept nogil:
    global g_resident
    munmap(slot, bs)
    g_resident -= bs

cdef int place(Region* r, Page* p, char* slot, int prot) noexcept nogil:
    """Move a filled staging buffer to its block address, atomically (g_lock held)."""
    cdef char* addr = blk_addr(r, p.blk)
    if mprotect(slot, r.blksize, prot) != 0:
        return errno
    if mremap(slot, r.blksize, r.blksize, MREMAP_MAYMOVE | MREMAP_FIXED, addr) == MAP_FAILED:
        if errno != ENOMEM:
            return errno
        # likely vm.max_map_count: give memory (and VMAs) back, then once more
        reclaim(<size_t>(g_budget // 2) + 1, r.blksize)
        if mremap(slot, r.blksize, r.blksize, MREMAP_MAYMOVE | MREMAP_FIXED, addr) == MAP_FAILED:
            return errno
    p.prot = prot
    return 0
