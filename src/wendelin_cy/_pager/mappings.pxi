# mappings.pxi: the address space.  Regions (one reserved range per file
# handle, found by address), fresh mappings, staging slots (the private
# mapping a block is filled in before it is moved to its address) and the pool
# of slots kept for reuse.  All under g_lock, or on memory private to the
# caller.

# ------------------------------------------------------------------- regions

cdef Region** g_regions = NULL      # sorted by base address
cdef int g_nregions = 0
cdef int g_capregions = 0
cdef enum:
    REGIONS_GROW = 8                # slots added to g_regions at a time

cdef inline char* blk_addr(Region* r, int64_t blk) noexcept nogil:
    return r.base + <size_t>blk * r.blksize

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
        nr = <Region**>realloc(g_regions, (g_capregions * 2 + REGIONS_GROW) * sizeof(Region*))
        if nr == NULL:
            return -1
        g_regions = nr
        g_capregions = g_capregions * 2 + REGIONS_GROW
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

# --------------------------------------------------------- memory primitives

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

# Where reservations go.  The kernel's mmap() places mappings top-down from
# below the stack (~127 TiB), and a PIE executable and its heap sit near
# 85 TiB, so the addresses from ZONE_LO up stay free until tens of TiB are
# mapped.  A handle's reservation is put at the start of one of ZONE_SLOTS
# slots ZONE_STRIDE apart (MAP_FIXED_NOREPLACE: a slot in use, by us or by
# anything else, is skipped), which leaves free addresses after it: _grow can
# then extend it in place up to the next slot, so a handle opened with the
# default 64 GiB reservation still maps a file of 1 TiB.  When no slot is
# free the kernel chooses the address (map_aligned), as before.
cdef uintptr_t ZONE_LO = (<uintptr_t>20) << 40
cdef uintptr_t ZONE_STRIDE = (<uintptr_t>2) << 40
cdef int ZONE_SLOTS = 30
cdef int g_zone_next = 0        # next slot to try (round robin; under the GIL)

cdef char* reserve_region(size_t size) noexcept:
    """A PROT_NONE reservation of size bytes, 2 MiB aligned, with room to grow."""
    global g_zone_next
    cdef int k, i
    cdef uintptr_t a
    cdef void* p
    for k in range(ZONE_SLOTS):
        i = (g_zone_next + k) % ZONE_SLOTS
        a = ZONE_LO + <uintptr_t>i * ZONE_STRIDE
        p = mmap(<void*>a, size, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
        if p == MAP_FAILED:
            continue                    # taken (EEXIST), or too big here
        if p != <void*>a:               # a kernel without MAP_FIXED_NOREPLACE
            munmap(p, size)
            break
        g_zone_next = (i + 1) % ZONE_SLOTS
        return <char*>p
    return map_aligned(size, HUGE, PROT_NONE)

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
# page costs the kernel one zeroing instead of 512 small ones.  But on a VM
# whose host takes free guest memory back (free page reporting), a huge page
# the host no longer backs makes the guest wait for the host, much longer than
# small pages would (benchmarks/repro/first_touch.py).  So the readahead
# thread times each huge-page block it populates ahead of a scan (warm_slots):
# when one takes longer than small pages would, the next THP_BACKOFF new
# blocks get small pages, then huge pages are tried again.  The backoff is
# short: a long one made ZEO scans slower.  Blocks read ahead by futures or
# extents take no warm blocks and keep huge pages unless a backoff is on
# (small pages for all of them made SQLite scans slower).  The figures are in
# docs/benchmarks.md, "Figures behind pager design choices".

cdef long NS_PER_S = 1000000000
cdef long THP_SLOW_NS = 1500000     # per 2 MiB: slower than small pages
cdef int THP_BACKOFF = 8            # new blocks on small pages after a slow one
cdef int g_thp_skip = 0
cdef uint64_t st_small_slots = 0

cdef inline long now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return t.tv_sec * NS_PER_S + t.tv_nsec

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

# ---------------------------------------------------------- the staging pool
#
# Slots kept for the next load, PROT_NONE, so that it needs no freshly zeroed
# pages: the memory of evicted blocks (page_unmap) and fresh slots the
# readahead thread faulted in ahead of a scan (warm_slots).  They count
# against the budget (g_pool_bytes); reclaim drains them last.

cdef enum:
    POOL_CAP = 16           # slots in the pool, whatever their origin
cdef int POOLMAX = 2        # evicted blocks kept for reuse
cdef int WARMMAX = 8        # fresh staging blocks made ahead of a scan
                            # (WARMMAX + POOLMAX <= POOL_CAP)

cdef char* g_pool[POOL_CAP]
cdef size_t g_pool_size[POOL_CAP]
cdef int g_npool = 0
cdef size_t g_pool_bytes = 0

cdef inline int index_of_size(const size_t* sizes, int n, size_t size) noexcept nogil:
    """First i < n with sizes[i] == size, or -1 (the pool, the scratch free list)."""
    cdef int i
    for i in range(n):
        if sizes[i] == size:
            return i
    return -1

cdef inline void pool_put(char* slot, size_t size) noexcept nogil:
    """Keep slot (PROT_NONE) for reuse; the caller checked g_npool < POOL_CAP."""
    global g_npool, g_pool_bytes
    g_pool[g_npool] = slot
    g_pool_size[g_npool] = size
    g_npool += 1
    g_pool_bytes += size

cdef inline int pool_has(size_t size) noexcept nogil:
    return index_of_size(g_pool_size, g_npool, size) >= 0

cdef char* pool_take(size_t size) noexcept nogil:
    """A pooled slot of `size` bytes (PROT_NONE), or NULL."""
    global g_npool, g_pool_bytes
    cdef int i = index_of_size(g_pool_size, g_npool, size)
    cdef char* p
    if i < 0:
        return NULL
    p = g_pool[i]
    g_npool -= 1
    g_pool[i] = g_pool[g_npool]         # (the last one fills the gap)
    g_pool_size[i] = g_pool_size[g_npool]
    g_pool_bytes -= size
    return p

cdef void pool_drain() noexcept nogil:
    global g_npool, g_pool_bytes
    while g_npool > 0:
        g_npool -= 1
        munmap(g_pool[g_npool], g_pool_size[g_npool])
        g_pool_bytes -= g_pool_size[g_npool]

# ---------------------------------------------- staging slots and placement

cdef char* g_spare = NULL       # an empty staging slot (PROT_RW, no pages), kept
cdef size_t g_spare_bs = 0      # when a load mapped a file instead of using it

cdef char* acquire_slot(size_t bs, int* recycled=NULL) noexcept nogil:
    """A writable staging buffer for one block, counted as resident (g_lock held).
    *recycled: 1 if it holds the pages of an evicted block (old data), 0 if it
    is a fresh mapping (zero, no pages yet)."""
    global st_fresh_slots, g_spare
    cdef char* slot
    reclaim(bs, bs)
    slot = pool_take(bs)
    if slot != NULL:
        if mprotect(slot, bs, PROT_RW) != 0:
            munmap(slot, bs)
            slot = NULL
    if recycled != NULL:
        recycled[0] = slot != NULL
    if slot == NULL and g_spare != NULL and g_spare_bs == bs:
        slot = g_spare              # (empty: reads as zeros, like a fresh one)
        g_spare = NULL
    if slot == NULL:
        slot = map_aligned(bs, align_for(bs), PROT_RW)
        if slot == NULL:
            return NULL
        st_fresh_slots += 1
        if thp_want(bs):
            madvise(slot, bs, MADV_HUGEPAGE)
    resident_add(bs)
    return slot

cdef void spare_put(char* slot, size_t bs) noexcept nogil:
    """A staging slot a load did not need (it mapped a file): emptied and
    kept for the next load (g_lock not held), which saves mapping a fresh
    aligned slot and unmapping it again for every block mapped from a file."""
    global g_spare, g_spare_bs
    cdef char* old = NULL
    cdef size_t old_bs = 0
    if madvise(slot, bs, MADV_DONTNEED) == 0:     # (loadblk may have written to it)
        lock()
        if g_spare == NULL or g_spare_bs != bs:
            # the latest block size wins: a spare of another file's size
            # would otherwise block the reuse for this one for good
            old, old_bs = g_spare, g_spare_bs
            g_spare = slot
            g_spare_bs = bs
            slot = NULL
        unlock()
    if slot != NULL:
        munmap(slot, bs)
    if old != NULL:
        munmap(old, old_bs)

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

cdef int page_unmap(Page* p) noexcept nogil:
    """Take a LOADED page's memory away from its address; recycle it into the
    staging pool when there is room (saves zeroing a fresh block on next load)."""
    global st_pool_fail
    cdef Region* r = p.region
    cdef char* addr = blk_addr(r, p.blk)
    cdef size_t bs = r.blksize
    cdef char* slot
    if p.filemap and p.seqmap:
        # page cache pages the scan is done with: first in line for the
        # kernel's reclaim (under a memory cgroup limit they would otherwise
        # compete with the readahead the scan needs); without memory pressure
        # they stay cached.  (Not for blocks of random access: that walk of
        # the block's page tables was a third of the cost of a miss.)
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
                pool_put(slot, bs)
    return reset_slot(addr, bs)
