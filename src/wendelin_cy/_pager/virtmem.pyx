# cython: language_level=3
"""The pager core: userspace virtual memory over fixed-size blocks of a BigFile.

Invariants (all under ``g_lock`` unless said otherwise)
-------------------------------------------------------
* Every open file handle (BigFileH) owns one *region*: an anonymous address range
  reserved PROT_NONE, 2 MiB aligned, big enough that the file can grow in place.
  Block ``blk`` of a handle lives at ``base + blk*blksize`` and nowhere else, so all
  windows (VMA objects, ndarray views) of one handle share memory.
* A block has at most one ``Page``.  Its state is LOADING (a thread is filling a
  private staging mapping), LOADED (mapped at its address) or SPILLED (dirty data
  parked in the scratch file to respect the budget).  No Page means "not in RAM".
* A LOADED page's protection says what the next access costs: PROT_NONE after the
  CLOCK hand demoted it (one soft fault marks it referenced again), PROT_READ when
  clean (or dirty while being written out), PROT_READ|PROT_WRITE when dirty.
* Blocks appear at their address only complete: they are loaded into a staging
  mapping and moved into place with one ``mremap(MREMAP_FIXED)``, so no thread can
  observe a half-loaded block.
* ``g_resident + g_pool_bytes`` stays within ``g_budget`` except when everything
  resident is pinned or loading; then the overshoot is counted in the stats.

Lock order: the GIL before ``g_lock``, everywhere.  Python code is never run while
``g_lock`` is held: a Python callback could fault on mapped memory and re-enter.
A fault that happens while this thread holds ``g_lock`` is a bug of the pager and
is passed on to the previous handler (it crashes with a traceback, never hangs).
"""

from libc.stdint cimport uintptr_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free, qsort, abort
from libc.string cimport memset, memcpy
from libc.stdio cimport fprintf, stderr, fflush
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.exc cimport PyErr_Fetch, PyErr_Restore
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from .posix cimport *
cimport cython

import os as _os
import weakref as _weakref
import sys as _sys
import time as _time
import traceback as _traceback

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    int PyGILState_Check() nogil
    PyThreadState* PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState*) nogil
    void PyErr_SetInterrupt()


# ----------------------------------------------------------------------------
# constants

WRITEOUT_STORE = 1
WRITEOUT_MARKSTORED = 2

cdef enum:
    PG_LOADING = 1
    PG_LOADED = 2
    PG_SPILLED = 3

cdef enum:
    PROT_RO = 1          # PROT_READ
    PROT_RW = 3          # PROT_READ | PROT_WRITE

# error codes of pager_access (>0: errno of a syscall)
cdef enum:
    E_PYTHON = -1        # loadblk raised; exception stored by the caller's request
    E_CLOSED = -2        # the handle was closed while we waited
    E_RECURSE = -3       # loadblk touched the block it is loading
    E_FORKED = -4        # Python loadblk in a forked child
    E_BUFKEPT = -5       # loadblk kept a reference to its buffer

cdef enum:
    ADV_NORMAL = 0
    ADV_SEQUENTIAL = 1
    ADV_RANDOM = 2

cdef size_t HUGE = 2 * 1024 * 1024
cdef int POOLMAX = 2         # evicted blocks kept for reuse
cdef int WARMMAX = 8         # fresh staging blocks made ahead of a scan (<= 16 in all)
cdef size_t OSPAGE = 4096

# ----------------------------------------------------------------------------
# data structures

cdef struct Region
cdef struct Page

cdef struct Page:
    Region* region
    int64_t blk
    int state
    int dirty
    int prot
    int referenced
    int pin
    int writing          # being written out; a write fault clears it
    int filemap          # mapped straight from the BigFile's fd (zero-copy)
    int ra               # loaded ahead, not touched yet (PROT_NONE: its first
                         # touch is a soft fault that moves the window on)
    int64_t spill        # byte offset in the scratch file, or -1
    pthread_t loader     # thread filling it while LOADING
    Page* prev           # CLOCK ring (LOADED pages only)
    Page* next
    Page* rprev          # all pages of the region
    Page* rnext

cdef struct Region:
    char* base
    size_t size
    size_t blksize
    int64_t nblk
    Page** pages
    Page* plist          # head of the region's page list
    PyObject* bigfile    # strong reference, dropped when the region is freed
    PyObject* fileh      # borrowed: for diagnostics only, valid while not closed
    int direct_fd        # >= 0: blocks are pread() from this fd without the GIL
    int64_t direct_off
    int64_t npages
    int64_t ndirty       # dirty pages, resident or spilled
    int busy             # faults in progress
    int closed
    int advice           # ADV_*
    int64_t last_load    # block of the last load by a fault (sequential detection)
    int64_t ra_next      # first block not yet requested by readahead
    PyObject* dirty_hook # called (GIL taken) when the handle goes clean -> dirty
    int has_prefetch     # the BigFile has prefetch(blk, n): readahead for Python loaders
    int last_mapped      # the last load mapped a file (MapFile): it needed no staging
    int64_t ra_max       # BigFile.readahead_max: at most this many blocks ahead (0: any)
    int forked           # opened before a fork(), in the child: no Python loadblk
    uint64_t gen         # bumped when block contents may change (dirtied, written
                         # out, discarded, invalidated): queued readahead of an
                         # older generation is dropped

cdef pthread_mutex_t g_lock
cdef pthread_cond_t g_cond
cdef Region** g_regions = NULL
cdef int g_nregions = 0
cdef int g_capregions = 0
cdef Page* g_hand = NULL
cdef int64_t g_nclock = 0
cdef size_t g_budget = 1024 * 1024 * 1024
cdef size_t g_resident = 0
cdef size_t g_dirty = 0
cdef size_t g_spilled = 0
cdef size_t g_pool_bytes = 0
cdef char* g_pool[16]
cdef size_t g_pool_size[16]
cdef int g_npool = 0
cdef int g_overshoot_warned = 0
cdef int g_recycle = 1
cdef Page* g_last_loaded = NULL     # never the victim of the next reclaim

# statistics (counts)
cdef uint64_t st_faults = 0, st_soft = 0, st_loads = 0, st_evictions = 0
cdef uint64_t st_writeouts = 0, st_spills = 0, st_unspills = 0, st_overshoots = 0
cdef uint64_t st_load_errors = 0, st_demotions = 0
cdef size_t st_peak_resident = 0
cdef uint64_t st_fresh_slots = 0, st_pool_fail = 0, st_zerocopy = 0
cdef int g_zerocopy = 1

# scratch file for spilled dirty pages
cdef int g_scratch_fd = -1
cdef int64_t g_scratch_end = 0
cdef int64_t* g_scratch_free = NULL     # free offsets (all slots of one size class)
cdef size_t* g_scratch_free_sz = NULL
cdef int g_nscratch_free = 0
cdef int g_capscratch_free = 0
cdef char* g_scratch_dir_c = NULL     # malloc'd; replaced under g_lock

# ----------------------------------------------------------------------------
# locking

cdef inline void lock() noexcept nogil:
    pthread_mutex_lock(&g_lock)
    wcy_lockdepth_add(1)

cdef inline void unlock() noexcept nogil:
    wcy_lockdepth_add(-1)
    pthread_mutex_unlock(&g_lock)

cdef uint64_t g_change_seq = 0       # bumped by every notify()

cdef inline void notify() noexcept nogil:
    """A page changed state (g_lock held): wake the waiters."""
    global g_change_seq
    g_change_seq += 1
    pthread_cond_broadcast(&g_cond)

cdef void wait_change() noexcept nogil:
    """Wait for any page state change.  Called and returns with g_lock held.
    If this thread holds the GIL it is released meanwhile (the loader may need it);
    it is retaken *before* g_lock to keep the lock order.  g_lock is dropped for a
    moment to release the GIL: a change notified then is not lost, the sequence
    number says it happened."""
    cdef PyThreadState* ts
    cdef uint64_t seq = g_change_seq
    if PyGILState_Check():
        unlock()
        ts = PyEval_SaveThread()
        lock()
        wcy_lockdepth_add(-1)
        while g_change_seq == seq:
            pthread_cond_wait(&g_cond, &g_lock)
        wcy_lockdepth_add(1)
        unlock()
        PyEval_RestoreThread(ts)
        lock()
    else:
        wcy_lockdepth_add(-1)
        while g_change_seq == seq:
            pthread_cond_wait(&g_cond, &g_lock)
        wcy_lockdepth_add(1)

cdef void atfork_prepare() noexcept nogil:
    pthread_mutex_lock(&g_lock)

cdef void atfork_parent() noexcept nogil:
    pthread_mutex_unlock(&g_lock)

cdef void atfork_child() noexcept nogil:
    global g_raq_len, g_ra_started
    cdef int i
    pthread_mutex_init(&g_lock, NULL)
    pthread_cond_init(&g_cond, NULL)
    pthread_cond_init(&g_ra_cond, NULL)
    for i in range(g_raq_len):          # the thread is not in the child
        if g_raq[(g_raq_head + i) % RA_QMAX].r != NULL:
            g_raq[(g_raq_head + i) % RA_QMAX].r.busy -= 1
    g_raq_len = 0
    g_ra_started = 0
    for i in range(g_nregions):         # handles of the parent: its connections
        g_regions[i].forked = 1

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
    if g_recycle and g_npool < POOLMAX and not p.filemap:
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

# ---------------------------------------------------------------- CLOCK ring

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

# ----------------------------------------------------------------- reclaim

cdef inline size_t pressure(size_t need) noexcept nogil:
    return g_resident + g_pool_bytes + need

cdef void reclaim(size_t need, size_t bs) noexcept nogil:
    """Make room for `need` more bytes (a block of size bs when need > 0): CLOCK
    over LOADED pages.  A referenced page is demoted to PROT_NONE (its next touch
    costs one soft fault and marks it referenced again); an unreferenced clean page
    is evicted; dirty pages are spilled only when clean ones do not suffice."""
    global g_hand, st_evictions, st_demotions, g_resident, st_overshoots, g_overshoot_warned
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
            eff = need
            if need and g_npool > 0:
                for i in range(g_npool):
                    if g_pool_size[i] == bs:
                        eff = 0
                        break
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
            clock_del(p)
            page_unmap(p)
            g_resident -= p.region.blksize
            st_evictions += 1
            page_free(p)
    if need == 0 or pressure(need) > g_budget:
        pool_drain()
    if pressure(need) > g_budget and need:
        st_overshoots += 1

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
        if size >= m.offset + <int64_t>bs and g_zerocopy:
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


cdef int pager_access(Region* r, int64_t blk, int write, int entry,
                      PyObject** exc) noexcept nogil:
    """Make block `blk` of region `r` accessible (for writing if write == 1;
    write == -1: unknown access kind, inferred from the page's protection).
    Called from the fault handler (entry=0) or from a Python entry point (entry=1,
    with or without the GIL).  Returns 0 or an error code (see E_*, or errno)."""
    global st_faults, st_soft, st_loads, g_dirty, g_spilled, st_unspills, st_load_errors
    global g_resident, st_peak_resident, g_last_loaded, g_ra_inflight, st_ra_hits
    cdef Page* p
    cdef int64_t ra_start = 0, ra_n = 0
    cdef int zerocopy = 0
    cdef int mapfd = -1
    cdef int64_t mapoff = 0
    cdef int recycled = 0
    cdef int hook = 0
    cdef char* slot
    cdef int rc, spilled, prot
    cdef size_t bs = r.blksize
    lock()
    if not entry:
        st_faults += 1
    while True:
        if r.closed:
            unlock()
            return E_CLOSED
        if blk >= r.nblk:
            unlock()
            return EINVAL
        p = r.pages[blk]
        if p == NULL or p.state == PG_SPILLED:
            break
        if p.state == PG_LOADING:
            if p.loader == pthread_self():
                unlock()
                return E_RECURSE
            wait_change()
            continue
        # LOADED: upgrade or restore protection
        if write < 0:
            write = 1 if p.prot != PROT_NONE else 0
        if write:
            if not p.dirty:
                p.dirty = 1
                r.ndirty += 1
                r.gen += 1
                g_dirty += bs
                if r.ndirty == 1 and r.dirty_hook != NULL:
                    hook = 1
            p.writing = 0
            prot = PROT_RW
        elif p.dirty and not p.writing:
            prot = PROT_RW
        else:
            prot = PROT_RO
        if p.prot == PROT_RW:
            prot = PROT_RW
        rc = set_prot(p, prot)
        p.referenced = 1
        if p.ra:
            p.ra = 0
            g_ra_inflight -= 1
            st_ra_hits += 1
            ra_on_load(r, blk, &ra_start, &ra_n)
        if not entry:
            st_soft += 1
        unlock()
        if ra_n:
            ra_advise(r, ra_start, ra_n)
        if hook:
            call_dirty_hook(r)
        return rc

    # -- load: this thread becomes the loader of the block
    if r.forked and r.direct_fd < 0 and p == NULL:
        unlock()
        return E_FORKED
    spilled = p != NULL
    if p == NULL:
        p = page_new(r, blk)
        if p == NULL:
            unlock()
            return ENOMEM
    p.state = PG_LOADING
    p.loader = pthread_self()
    zerocopy = (not spilled and r.direct_fd >= 0 and g_zerocopy
                and direct_covers(r, blk))
    if zerocopy:
        # local file, block entirely inside it: map the page cache pages of the
        # block privately, read-only (no copy at all; a write makes the kernel
        # copy just the 4 KiB page touched).  One mmap(MAP_FIXED) replaces the
        # PROT_NONE slot atomically, and what shows is the file's content.
        reclaim(bs, 0)
        g_resident += bs
        if g_resident > st_peak_resident:
            st_peak_resident = g_resident
        slot = NULL
    else:
        slot = acquire_slot(bs, &recycled)
        if slot == NULL:
            rc = errno if errno else ENOMEM
            if spilled:
                p.state = PG_SPILLED
            else:
                page_free(p)
            notify()
            unlock()
            return rc
    unlock()

    if zerocopy:
        rc = map_direct(r, blk, g_ra_enabled and r.advice != ADV_RANDOM and
                        (r.advice == ADV_SEQUENTIAL or blk == r.last_load + 1))
    elif spilled:
        rc = rw_full(g_scratch_fd, slot, bs, p.spill, 0)
    elif r.direct_fd >= 0:
        rc = rw_full(r.direct_fd, slot, bs, r.direct_off + <int64_t>(blk * bs), 0)
    else:
        rc = py_loadblk(r, blk, slot, entry, exc, &mapfd, &mapoff,
                        2 if write > 0 and recycled else recycled)
        if mapfd >= 0:
            # loadblk named a file extent (MapFile): map it instead; the slot
            # goes back, its share of g_resident now counts the mapping
            if rc == 0:
                rc = map_fd(r, blk, mapfd, mapoff,
                            g_ra_enabled and r.advice != ADV_RANDOM and
                            (r.advice == ADV_SEQUENTIAL or blk == r.last_load + 1), 1)
            close(mapfd)
            if rc == 0:
                munmap(slot, bs)
                slot = NULL
                zerocopy = 1
            else:
                reset_slot(blk_addr(r, blk), bs)
        r.last_mapped = mapfd >= 0 and rc == 0

    lock()
    if rc == 0 and r.closed:
        rc = E_CLOSED
    if rc == 0:
        if spilled:
            prot = PROT_RW if (write > 0 or not p.writing) else PROT_RO
            if write > 0:
                p.writing = 0
        else:
            prot = PROT_RW if write > 0 else PROT_RO
        if zerocopy:
            p.filemap = 1
            p.prot = PROT_RO
            rc = set_prot(p, prot)
        else:
            rc = place(r, p, slot, prot)
    if rc != 0:
        if zerocopy:
            reset_slot(blk_addr(r, blk), bs)
            g_resident -= bs
        elif rc == E_BUFKEPT:
            g_resident -= bs          # somebody holds it: leak, never unmap
        else:
            release_slot(slot, bs)
        if spilled and not r.closed:
            p.state = PG_SPILLED
        else:
            if spilled:
                scratch_release(p.spill, bs)
                g_spilled -= bs
                r.ndirty -= 1
            page_free(p)
        st_load_errors += 1
        notify()
        unlock()
        return rc
    if spilled:
        scratch_release(p.spill, bs)
        p.spill = -1
        g_spilled -= bs
        g_dirty += bs
        st_unspills += 1
    elif write > 0:
        p.dirty = 1
        r.ndirty += 1
        r.gen += 1
        g_dirty += bs
        if r.ndirty == 1 and r.dirty_hook != NULL:
            hook = 1
    p.state = PG_LOADED
    p.referenced = 1
    clock_add(p)
    g_last_loaded = p
    st_loads += 1
    if not entry and not spilled:
        ra_on_load(r, blk, &ra_start, &ra_n)
    notify()
    unlock()
    if ra_n:
        ra_advise(r, ra_start, ra_n)
    if hook:
        call_dirty_hook(r)
    return 0


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




# ------------------------------------------------------------ readahead
#
# Sequential access is detected per region (a fault loads block k right after it
# loaded k-1, or madvise('sequential')).  For a local file the block is then
# mapped MADV_SEQUENTIAL, and the kernel's own readahead runs ahead of the scan
# (see map_direct).  For other BigFiles, prefetch() is asked for the next
# window.  Random access never triggers it.

cdef int g_ra_enabled = 1
cdef uint64_t st_ra_blocks = 0

cdef int64_t ra_window(Region* r) noexcept nogil:
    cdef int64_t w = <int64_t>(g_budget // (4 * r.blksize))
    if w > 16:
        w = 16
    if r.ra_max > 0 and w > r.ra_max:
        w = r.ra_max
    return w

cdef void ra_on_load(Region* r, int64_t blk, int64_t* start, int64_t* n) noexcept nogil:
    """A fault loaded blk: extend or start the readahead window (g_lock held).
    Returns in start/n the blocks to advise (after g_lock is released)."""
    global st_ra_blocks
    cdef int64_t w, end
    n[0] = 0
    if r.advice == ADV_RANDOM or not g_ra_enabled or r.direct_fd >= 0 or not r.has_prefetch:
        r.last_load = blk
        return
    w = ra_window(r)
    if w > 0 and (r.advice == ADV_SEQUENTIAL or blk == r.last_load + 1):
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
    Region* r
    int64_t blk
    int fd
    int64_t off
    int64_t n
    uint64_t gen

cdef int RA_QMAX = 64
cdef RAReq g_raq[64]
cdef int g_raq_head = 0
cdef int g_raq_len = 0
cdef pthread_cond_t g_ra_cond
cdef int g_ra_started = 0
cdef int64_t g_ra_inflight = 0
cdef uint64_t st_ra_loads = 0, st_ra_hits = 0, st_ra_dropped = 0, st_warm_slots = 0

cdef Page* ra_begin(Region* r, int64_t blk, uint64_t gen, char** slot) noexcept nogil:
    """Start loading block blk ahead (g_lock held): a LOADING page owned by this
    thread and a staging slot for it; NULL if the request is stale (the block
    has a page, the generation moved), the handle is closed, or readahead
    already holds its share of the budget."""
    global st_ra_dropped
    cdef Page* p
    if (r.closed or r.forked or gen != r.gen or blk < 0 or blk >= r.nblk
            or r.pages[blk] != NULL
            or (g_ra_inflight + 1) * <int64_t>r.blksize * 2 > <int64_t>g_budget):
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
    global g_raq_head, g_raq_len
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
        if q.fd == -2:
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
        rc = read_exact(q.fd, slot, q.n, q.off)
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
    ready instead of faulting in new pages block by block on its own thread:
    on this VM a first touch of fresh memory cost 4.7 ms per 2 MiB block, a
    copy into reused memory 0.5 ms."""
    global g_npool, g_pool_bytes, st_warm_slots, g_thp_skip
    cdef char* slot
    cdef int64_t made = 0
    cdef int huge, slow
    cdef long t
    while (made < want and g_npool < WARMMAX + POOLMAX and g_npool < 16
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
        if g_npool < 16 and pressure(bs) <= g_budget:
            g_pool[g_npool] = slot
            g_pool_size[g_npool] = bs
            g_npool += 1
            g_pool_bytes += bs
            st_warm_slots += 1
            made += 1
        else:
            unlock()
            munmap(slot, bs)
            lock()
            return

cdef inline void copy_pad(char* dst, size_t m, const char* src, size_t n) noexcept nogil:
    """dst[:m] = src[:n] followed by zeros (n <= m)."""
    if n:
        memcpy(dst, src, n)
    if n < m:
        memset(dst + n, 0, m - n)

cdef void touch_pages(char* p, size_t n) noexcept nogil:
    """Write one byte of every OS page of fresh memory p[:n]."""
    cdef size_t i = 0
    while i < n:
        (<volatile char*>p)[i] = 0
        i += OSPAGE

cdef void ra_warm(size_t bs, int64_t n) noexcept nogil:
    """Ask the readahead thread for n warm staging blocks (g_lock held)."""
    if n > 0 and g_npool < WARMMAX:
        ra_push(NULL, n, -2, 0, <int64_t>bs, 0)

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
    g_raq_len += 1
    pthread_cond_broadcast(&g_ra_cond)
    return 0

cdef int read_exact(int fd, char* buf, int64_t n, int64_t off) noexcept nogil:
    cdef ssize_t k
    cdef int64_t done = 0
    while done < n:
        k = pread(fd, buf + done, n - done, off + done)
        if k < 0:
            if errno == EINTR:
                continue
            return errno
        if k == 0:
            return EIO_()
        done += k
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

cdef _queue_extents(Region* r, extents):
    """Queue what prefetch() answered: extents (blk, fd, offset, nbytes), read
    by the readahead thread, and (blk, future) pairs, placed when the future
    completes, with the block's bytes, in whichever thread completes it."""
    cdef int64_t blk, off, n
    cdef int fd
    cdef uint64_t gen
    fh = None
    for e in extents:
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
    cdef PyObject *et
    cdef PyObject *ev
    cdef PyObject *etb
    PyErr_Fetch(&et, &ev, &etb)
    if not r.closed:
        try:
            extents = (<object>r.bigfile).prefetch(start, n)
            if extents:
                _queue_extents(r, extents)
            elif not r.last_mapped:
                # the blocks will be copied in by loadblk on the faulting
                # thread: have their staging memory made ready meanwhile
                # (extents are read into slots by the readahead thread
                # itself; futures are copied in by the thread completing
                # them - warming memory for them too only competed with it
                # for the CPU: measured slower on 2 cores)
                lock()
                ra_warm(r.blksize, n)
                unlock()
        except BaseException as e:          # readahead is advice: never fatal
            if r.has_prefetch == 1:         # (said once per handle)
                r.has_prefetch = 2
                _report_ignored("%r.prefetch failed" % (<object>r.bigfile,), e)
    PyErr_Restore(et, ev, etb)

# ------------------------------------------------------------ the fault handler

cdef sigaction_t g_prev_segv
cdef int g_installed = 0

cdef void chain(int sig, siginfo_t* si, void* uc, uintptr_t addr) noexcept nogil:
    """Not our fault: hand it to whoever was installed before us (faulthandler)."""
    cdef sigaction_t dfl
    if si.si_code > 0 and wcy_chain_again(addr) == 1 and not wcy_handler_is_default(&g_prev_segv):
        wcy_call_handler(&g_prev_segv, sig, si, uc)
        return
    # default action: the access faults again (or the signal is re-raised) and
    # the kernel ends the process with SIGSEGV, as without us
    memset(&dfl, 0, sizeof(dfl))
    dfl.sa_handler = SIG_DFL
    sigaction_(SIGSEGV, &dfl, NULL)
    if si.si_code <= 0:
        raise_(sig)

cdef void fatal_fault(Region* r, int64_t blk, uintptr_t addr, int rc) noexcept nogil:
    cdef sigaction_t dfl
    if rc == E_FORKED:
        fprintf(stderr, b"wendelin_cy: FATAL: block %lld at %p is not in RAM and this is a "
                b"forked child: its BigFile must be reopened in the child (e.g. dbopen() "
                b"again) before its data can be loaded.\n", <long long>blk, <void*>addr)
    elif rc == E_RECURSE:
        fprintf(stderr, b"wendelin_cy: FATAL: loadblk of block %lld touched the block it is "
                b"loading (address %p)\n", <long long>blk, <void*>addr)
    elif rc > 0:
        fprintf(stderr, b"wendelin_cy: FATAL: cannot load block %lld at %p: %s\n",
                <long long>blk, <void*>addr, strerror(rc))
    elif rc == E_CLOSED:
        fprintf(stderr, b"wendelin_cy: FATAL: access at %p to a file handle that was closed\n",
                <void*>addr)
    fflush(stderr)
    memset(&dfl, 0, sizeof(dfl))
    dfl.sa_handler = SIG_DFL
    pthread_kill(pthread_self(), SIGBUS)
    sigaction_(SIGBUS, &dfl, NULL)
    raise_(SIGBUS)
    abort()

cdef void on_sigsegv(int sig, siginfo_t* si, void* uc) noexcept nogil:
    cdef int saved = errno
    cdef uintptr_t addr = <uintptr_t>si.si_addr
    cdef Region* r = NULL
    cdef int rc
    cdef int64_t blk
    if si.si_code > 0 and wcy_lockdepth() == 0:
        lock()
        r = region_find(addr)
        if r != NULL:
            r.busy += 1
        unlock()
    if r == NULL:
        chain(sig, si, uc, addr)
        wcy_set_errno(saved)
        return
    if wcy_fault_again(addr) > 100000:
        # the same access keeps faulting although we granted it: not ours to fix
        lock()
        r.busy -= 1
        unlock()
        chain(sig, si, uc, addr)
        return
    blk = <int64_t>((addr - <uintptr_t>r.base) // r.blksize)
    rc = pager_access(r, blk, wcy_fault_is_write(uc), 0, NULL)
    lock()
    r.busy -= 1
    if r.closed:
        notify()
    unlock()
    if rc != 0:
        fatal_fault(r, blk, addr, rc)
    wcy_set_errno(saved)

cdef void install_handler() noexcept nogil:
    """Install (or re-assert) our SIGSEGV handler on top of the current one."""
    global g_installed
    cdef sigaction_t cur, act
    sigaction_(SIGSEGV, NULL, &cur)
    if g_installed and wcy_handler_ptr(&cur) == <void*>on_sigsegv:
        return
    memset(&act, 0, sizeof(act))
    wcy_set_siginfo_handler(&act, on_sigsegv)
    act.sa_flags = SA_SIGINFO | SA_NODEFER
    sigemptyset(&act.sa_mask)
    if sigaction_(SIGSEGV, &act, &g_prev_segv) == 0:
        g_installed = 1

def _ensure_handler():
    """Re-assert the pager's SIGSEGV handler (e.g. after faulthandler.enable()
    installed its own on top): ours runs first, and passes on what is not ours."""
    install_handler()

# ----------------------------------------------------------------- Python API

_LOADERR_CLASSES = {}

def _load_error(e, blk, bigfile):
    """The exception loadblk raised -> a wendelin_cy.LoadError naming the block
    and the file, that is also an instance of e's class where Python allows
    (so ``except OSError`` / ``except KeyError`` / ``except LoadError`` all
    work).  Not exceptions that are not errors (KeyboardInterrupt, ...)."""
    from wendelin_cy.errors import LoadError
    if isinstance(e, LoadError) or not isinstance(e, Exception):
        return e
    msg = "cannot load block %d of %r: %s: %s" % (blk, bigfile, type(e).__name__, e)
    cls = type(e)
    sub = _LOADERR_CLASSES.get(cls)
    if sub is None:
        try:
            sub = type("LoadError", (LoadError, cls), {"__module__": "wendelin_cy.errors"})
        except TypeError:           # incompatible layouts: a plain LoadError
            sub = LoadError
        _LOADERR_CLASSES[cls] = sub
    try:
        err = sub(msg)
    except Exception:
        err = LoadError(msg)
    err.blk = blk
    err.bigfile = bigfile
    return err


def _raise_rc(int rc, blk, fileh):
    if rc == E_CLOSED:
        raise ValueError("file handle is closed")
    if rc == E_FORKED:
        raise RuntimeError("block %d of %r is not in RAM in this forked child; reopen the "
                           "file (or database) in the child" % (blk, fileh))
    if rc == E_RECURSE:
        raise RuntimeError("loadblk of block %d touched the block it is loading" % blk)
    if rc == E_BUFKEPT:
        raise BufferError("loadblk kept a reference to its buffer (block %d)" % blk)
    if rc == ENOMEM:
        raise MemoryError("cannot map block %d of %r: out of memory or of kernel "
                          "mappings (vm.max_map_count)" % (blk, fileh))
    raise OSError(rc, "cannot load block %d of %r: %s" % (blk, fileh, _os.strerror(rc)))


cdef class BigFile:
    """A file of fixed-size blocks, served to the pager.

    Subclass it and define ``loadblk(blk, buf)`` (fill the writable memoryview
    ``buf`` of ``blksize`` bytes completely; zeros for holes) and
    ``storeblk(blk, buf)`` (persist the read-only memoryview ``buf``).
    Optionally ``readahead_max``: read when a handle is opened, at most that
    many blocks are asked for ahead (e.g. what a storage's cache holds).
    Optionally ``prefetch(blk, n)``: the pager saw sequential access and will
    soon load blocks [blk, blk+n); start fetching them in the background, or
    return their extents ``[(blk, fd, offset, nbytes), ...]`` (where each
    block's bytes lie in a file; the rest of the block reads as zeros) for the
    pager's readahead thread to read into RAM, or ``[(blk, future), ...]``:
    a ``concurrent.futures.Future`` (loading in a thread of the BigFile's
    own) whose result is the block's bytes (or None), which the pager copies
    into the block, in the thread that completes the future, as long as the
    block was not touched, written or invalidated meanwhile.  It is advice: errors are
    reported once and ignored.  Instead of filling ``buf``, loadblk may return
    ``HOLE`` (all zeros) or ``MapFile(path, offset)`` (the block is that part
    of an immutable file: mapped without a copy).  loadblk may
    run inside a page fault, in any thread, with the GIL taken for it: it must not
    touch the block it is loading, and must not keep ``buf``.
    """
    cdef readonly size_t blksize
    cdef int _direct_fd
    cdef int64_t _direct_off
    cdef object __weakref__

    def __cinit__(self, *args, **kw):
        self._direct_fd = -1

    def __init__(self, blksize):
        self._set_blksize(blksize)

    def _set_blksize(self, blksize):
        if isinstance(blksize, bool) or not isinstance(blksize, int):
            raise TypeError("blksize must be an int, not %s" % type(blksize).__name__)
        if blksize <= 0 or blksize % OSPAGE:
            raise ValueError("blksize must be a positive multiple of the page size (%d), "
                             "got %d" % (OSPAGE, blksize))
        if blksize > (1 << 30):
            raise ValueError("blksize must be at most 1 GiB, got %d" % blksize)
        self.blksize = blksize

    def _set_direct_fd(self, int fd, int64_t offset=0):
        """Let the pager pread() blocks from fd itself, without the GIL (the lean
        load path of local files).  fd must stay open while handles are open."""
        self._direct_fd = fd
        self._direct_off = offset

    def loadblk(self, blk, buf):
        raise NotImplementedError("%s.loadblk" % type(self).__name__)

    def storeblk(self, blk, buf):
        raise NotImplementedError("%s.storeblk" % type(self).__name__)

    def fileh_open(self, reserve=None):
        """Open a file handle: an address reservation the blocks are paged into."""
        return BigFileH(self, reserve)


def _default_reserve():
    v = _os.environ.get("WENDELIN_CY_VMA_RESERVE")
    if not v:
        return 64 << 30
    from wendelin_cy.ram import parse_size
    return parse_size(v)

DEFAULT_RESERVE = _default_reserve()


# no_gc_clear: the region borrows self.bigfile, so it must stay set until
# __dealloc__ has closed the region (a fault may be using it); cycles through
# a BigFile subclass are still collected, by clearing the other objects.
@cython.no_gc_clear
cdef class BigFileH:
    """An open handle of a BigFile: blocks are paged into one address reservation.

    The reservation is ``reserve`` bytes (default 64 GiB, or
    ``$WENDELIN_CY_VMA_RESERVE``), address space only: it costs no memory.  A file
    mapped beyond it grows the reservation in place when the addresses after it
    are free, else mmap() raises MemoryError: open with a larger ``reserve``."""
    cdef Region* r
    cdef readonly object bigfile
    cdef readonly size_t blksize
    cdef int nvma
    cdef object _dirty_hook
    cdef object __weakref__

    def __cinit__(self, BigFile bigfile, reserve=None):
        cdef size_t bs, size
        cdef Region* r
        cdef char* base
        if bigfile.blksize == 0:
            raise ValueError("%r: BigFile.__init__(blksize) was not called" % (bigfile,))
        bs = bigfile.blksize
        if reserve is None:
            reserve = max(DEFAULT_RESERVE, bs * 64)
        reserve = _index(reserve, "reserve")
        if reserve <= 0:
            raise ValueError("reserve must be positive")
        if reserve > (1 << 47):
            raise MemoryError("cannot reserve %d bytes of address space (the user address "
                              "space is 128 TiB)" % reserve)
        size = ((<size_t>reserve + bs - 1) // bs) * bs
        size = ((size + HUGE - 1) // HUGE) * HUGE
        size = (size // bs) * bs
        if size == 0:
            size = bs
        install_handler()
        base = map_aligned(size, HUGE, PROT_NONE)
        if base == NULL:
            raise MemoryError("cannot reserve %d bytes of address space" % size)
        r = <Region*>calloc(1, sizeof(Region))
        if r == NULL:
            munmap(base, size)
            raise MemoryError()
        r.base = base
        r.size = size
        r.blksize = bs
        r.nblk = size // bs
        r.pages = <Page**>calloc(r.nblk, sizeof(Page*))
        if r.pages == NULL:
            munmap(base, size)
            free(r)
            raise MemoryError()
        r.bigfile = <PyObject*>bigfile      # borrowed: self.bigfile keeps it alive
        r.fileh = <PyObject*>self
        r.direct_fd = bigfile._direct_fd
        r.direct_off = bigfile._direct_off
        r.last_load = -2
        r.has_prefetch = 1 if callable(getattr(bigfile, "prefetch", None)) else 0
        ra_max = getattr(bigfile, "readahead_max", None)
        r.ra_max = max(0, min(int(ra_max), 1 << 20)) if ra_max else 0
        lock()
        rc = region_insert(r)
        unlock()
        if rc != 0:
            munmap(base, size)
            free(r.pages)
            free(r)
            raise MemoryError()
        self.r = r
        self.bigfile = bigfile
        self.blksize = bs

    cdef Region* _region(self) except NULL:
        if self.r == NULL:
            raise ValueError("file handle is closed")
        return self.r

    cdef _ra_place(self, int64_t blk, uint64_t gen, data):
        """Make `data` (the bytes of block blk, read ahead at generation gen;
        shorter: zeros follow) the block's page, unless it is stale."""
        cdef Region* r = self.r
        cdef Page* p
        cdef char* slot = NULL
        cdef const unsigned char[::1] src = memoryview(data).cast("B")
        cdef size_t n = src.shape[0]
        cdef const unsigned char* sp = &src[0] if n else NULL
        if r == NULL or n > r.blksize:
            return
        lock()                  # (the GIL is held: close() cannot free r now)
        r.busy += 1
        unlock()
        with nogil:
            lock()
            p = ra_begin(r, blk, gen, &slot)
            unlock()
            if p != NULL:
                copy_pad(<char*>slot, r.blksize, <const char*>sp, n)
                lock()
                ra_finish(r, p, slot, gen, 0)
                unlock()
            lock()
            r.busy -= 1
            notify()
            unlock()

    cdef int _grow(self, int64_t nblk) except -1:
        """Extend the reservation in place to hold nblk blocks."""
        cdef Region* r = self.r
        cdef size_t want = max(<size_t>nblk * r.blksize, r.size * 2)
        cdef void* p
        cdef Page** np_
        want = ((want + HUGE - 1) // HUGE) * HUGE
        want = (want // r.blksize) * r.blksize
        p = mmap(r.base + r.size, want - r.size, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
        if p == MAP_FAILED or p != <void*>(r.base + r.size):
            if p != MAP_FAILED:
                munmap(p, want - r.size)
            raise MemoryError(
                "cannot grow the address reservation of %r from %d to %d bytes in place; "
                "open the handle with a larger reserve= (fileh_open(reserve=...))"
                % (self.bigfile, r.size, want))
        np_ = <Page**>calloc(want // r.blksize, sizeof(Page*))
        if np_ == NULL:
            munmap(p, want - r.size)
            raise MemoryError()
        lock()
        memcpy(np_, r.pages, r.nblk * sizeof(Page*))
        free(r.pages)
        r.pages = np_
        r.size = want
        r.nblk = want // r.blksize
        unlock()
        return 0

    def mmap(self, pgoffset, pglen):
        """Map blocks [pgoffset, pgoffset+pglen) -> VMA (a buffer, no copy)."""
        cdef Region* r = self._region()
        cdef VMA v
        pgoffset = _index(pgoffset, "pgoffset")
        pglen = _index(pglen, "pglen")
        if pgoffset < 0 or pglen < 0:
            raise ValueError("pgoffset and pglen must be >= 0")
        if pgoffset + pglen > (1 << 40):
            raise ValueError("mapping too large")
        install_handler()
        if pgoffset + pglen > r.nblk:
            self._grow(pgoffset + pglen)
        v = VMA.__new__(VMA)
        v.fileh = self
        v.pgoffset = pgoffset
        v.pglen = pglen
        v.addr = <uintptr_t>blk_addr(r, pgoffset)
        v.size = pglen * r.blksize
        self.nvma += 1
        return v

    @property
    def closed(self):
        return self.r == NULL

    def set_dirty_hook(self, hook):
        """hook() is called each time the handle goes from clean to dirty (first
        write after open, writeout or discard), in the thread whose access
        dirtied it (possibly one Python does not know, e.g. BLAS), with the GIL.
        Bindings use it to join a transaction.  None removes it."""
        cdef Region* r = self._region()
        if hook is not None and not callable(hook):
            raise TypeError("dirty hook must be callable or None")
        lock()
        self._dirty_hook = hook
        r.dirty_hook = NULL if hook is None else <PyObject*>hook
        unlock()

    @property
    def reserved(self):
        return 0 if self.r == NULL else self.r.size

    @property
    def addr(self):
        """Base address of the reservation (block 0)."""
        return 0 if self.r == NULL else <uintptr_t>self.r.base

    def isdirty(self):
        cdef Region* r = self._region()
        return r.ndirty > 0

    cdef list _blocks(self, int want_dirty):
        """Sorted numbers of the dirty (want_dirty) or LOADED blocks.  Collected
        into C memory under g_lock: no Python object is made while it is held."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef int64_t i = 0
        cdef int64_t* a
        lock()
        a = <int64_t*>malloc((r.npages + 1) * sizeof(int64_t))
        if a != NULL:
            p = r.plist
            while p != NULL:
                if (p.dirty if want_dirty else p.state == PG_LOADED):
                    a[i] = p.blk
                    i += 1
                p = p.rnext
        unlock()
        if a == NULL:
            raise MemoryError()
        out = sorted([a[j] for j in range(i)])
        free(a)
        return out

    def dirty_blocks(self):
        """Sorted block numbers with changes not yet written out."""
        return self._blocks(1)

    def resident_blocks(self):
        """Sorted block numbers currently in RAM."""
        return self._blocks(0)

    def dirty_writeout(self, int flags=WRITEOUT_STORE | WRITEOUT_MARKSTORED):
        """STORE: bigfile.storeblk() every dirty block (in block order);
        MARKSTORED: make them clean and write-protected again.  If storeblk raises,
        nothing is marked stored and the exception propagates."""
        global g_dirty, g_spilled, st_writeouts
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page** pv
        cdef int64_t n = 0, i = 0
        cdef size_t bs = r.blksize
        cdef bytes tmp
        cdef _Buf b
        if flags & ~3 or flags == 0:
            raise ValueError("invalid writeout flags %r" % flags)
        lock()
        p = r.plist
        while p != NULL:
            if p.dirty and p.state != PG_LOADING:
                n += 1
            p = p.rnext
        pv = <Page**>malloc((n + 1) * sizeof(Page*))
        if pv == NULL:
            unlock()
            raise MemoryError()
        r.gen += 1
        p = r.plist
        while p != NULL:
            if p.dirty and p.state != PG_LOADING:
                pv[i] = p
                i += 1
                p.pin += 1
                p.writing = 1
                if p.state == PG_LOADED:
                    set_prot(p, PROT_RO)      # a concurrent write faults, clears .writing
            p = p.rnext
        unlock()
        qsort(pv, n, sizeof(Page*), cmp_page_blk)
        try:
            if flags & WRITEOUT_STORE:
                tmp = None
                for i in range(n):
                    p = pv[i]
                    lock()
                    if p.state == PG_SPILLED:
                        unlock()
                        if tmp is None:
                            tmp = PyBytes_FromStringAndSize(NULL, bs)
                        lock()
                        if p.state == PG_SPILLED:     # may have been reloaded meanwhile
                            rc = rw_full(g_scratch_fd, PyBytes_AS_STRING(tmp), bs, p.spill, 0)
                            unlock()
                            if rc:
                                raise OSError(rc, "reading scratch file: " + _os.strerror(rc))
                            b = mkbuf(PyBytes_AS_STRING(tmp), bs, 1)
                        else:
                            unlock()
                            b = mkbuf(blk_addr(r, p.blk), bs, 1)
                    else:
                        if p.prot == PROT_NONE:
                            set_prot(p, PROT_RO)
                        unlock()
                        b = mkbuf(blk_addr(r, p.blk), bs, 1)
                    mv = memoryview(b)
                    try:
                        self.bigfile.storeblk(p.blk, mv)
                    finally:
                        mv.release()
        except BaseException:
            lock()
            for i in range(n):
                pv[i].pin -= 1
                pv[i].writing = 0
            unlock()
            free(pv)
            raise
        lock()
        for i in range(n):
            p = pv[i]
            p.pin -= 1
            if flags & WRITEOUT_MARKSTORED and p.writing:
                if p.state == PG_LOADED:
                    p.dirty = 0
                    r.ndirty -= 1
                    g_dirty -= bs
                    set_prot(p, PROT_RO if p.prot != PROT_NONE else PROT_NONE)
                elif p.state == PG_SPILLED:
                    p.writing = 0
                    p.dirty = 1          # page_drop accounts ndirty
                    page_drop(p)
                    st_writeouts += 1
                    continue
            elif p.state == PG_LOADED and p.writing and p.prot == PROT_RO:
                set_prot(p, PROT_RW)     # still dirty: writable again
            p.writing = 0
            st_writeouts += 1
        unlock()
        free(pv)

    def dirty_discard(self):
        """Forget every change not written out: the next access reloads the block."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page* nx
        lock()
        r.gen += 1
        while True:
            p = r.plist
            busy = False
            while p != NULL:
                nx = p.rnext
                if p.dirty:
                    if p.state == PG_LOADING or p.pin:
                        busy = True
                    else:
                        page_drop(p)
                p = nx
            if not busy:
                break
            wait_change()
        unlock()

    def invalidate_page(self, pgoffset):
        """Drop the in-RAM copy of block pgoffset (it changed in storage); the next
        access reloads it.  A dirty block cannot be invalidated (RuntimeError)."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef int64_t blk = _index(pgoffset, "pgoffset")
        if blk < 0:
            raise ValueError("pgoffset must be >= 0")
        if blk >= r.nblk:
            return
        lock()
        r.gen += 1
        while True:
            p = r.pages[blk]
            if p == NULL:
                break
            if p.state == PG_LOADING or p.pin:
                wait_change()
                continue
            if p.dirty:
                unlock()
                raise RuntimeError("invalidate_page(%d): block has changes not written out"
                                   % blk)
            page_drop(p)
            break
        unlock()

    def drop_clean(self, int64_t start=0, int64_t stop=-1):
        """Evict the clean resident blocks in [start, stop) (madvise DONTNEED)."""
        cdef Region* r = self._region()
        cdef Page* p
        cdef Page* nx
        if stop < 0 or stop > r.nblk:
            stop = r.nblk
        lock()
        p = r.plist
        while p != NULL:
            nx = p.rnext
            if (p.state == PG_LOADED and not p.dirty and not p.pin
                    and start <= p.blk < stop):
                page_drop(p)
            p = nx
        unlock()

    def prefault(self, start, stop, write=False):
        """Make blocks [start, stop) resident (and dirty, writable with write=True),
        calling loadblk directly: its exceptions propagate normally."""
        start = _index(start, "start")
        stop = _index(stop, "stop")
        if start < 0 or stop < start or stop > (1 << 40):
            raise ValueError("prefault: need 0 <= start <= stop, got [%d, %d)" % (start, stop))
        self._prefault(start, stop, 1 if write else 0)

    cdef _prefault(self, int64_t start, int64_t stop, int w):
        cdef Region* r = self._region()
        cdef PyObject* exc = NULL
        cdef int rc
        cdef int64_t blk
        if stop > r.nblk:
            self._grow(stop)
            r = self.r
        for blk in range(start, stop):
            rc = pager_access(r, blk, w, 1, &exc)
            if rc != 0:
                if exc != NULL:
                    e = <object>exc
                    Py_DECREF(e)
                    raise _load_error(e, blk, self.bigfile) from e
                _raise_rc(rc, blk, self)

    def close(self):
        """Release the handle: changes not written out are discarded."""
        if self.r == NULL:
            return
        if self.nvma > 0:
            raise RuntimeError("cannot close %r: %d mappings (views) are still alive"
                               % (self, self.nvma))
        self._close()

    cdef void _close(self):
        cdef Region* r = self.r
        cdef Page* p
        cdef Page* nx
        if r == NULL:
            return
        self.r = NULL
        lock()
        r.closed = 1
        ra_forget(r)
        while True:          # loaders finish (and see .closed) before we tear down
            p = r.plist
            busy = False
            while p != NULL:
                nx = p.rnext
                if p.state == PG_LOADING or p.pin:
                    busy = True
                else:
                    page_drop(p)
                p = nx
            if not busy and r.busy == 0:
                break
            wait_change()
        region_remove(r)
        unlock()
        munmap(r.base, r.size)
        free(r.pages)
        free(r)

    def __dealloc__(self):
        self._close()

    def __repr__(self):
        return "<BigFileH of %r%s>" % (self.bigfile, " (closed)" if self.r == NULL else "")


cdef int cmp_page_blk(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<Page**>a)[0].blk
    cdef int64_t y = (<Page**>b)[0].blk
    return (x > y) - (x < y)


cdef object _index(x, name):
    try:
        return x.__index__()
    except AttributeError:
        raise TypeError("%s must be an integer, not %s" % (name, type(x).__name__)) from None


_ADVICE = {"normal": ADV_NORMAL, "sequential": ADV_SEQUENTIAL, "random": ADV_RANDOM,
           "willneed": 3, "dontneed": 4}


cdef class VMA:
    """A window of blocks [pgoffset, pgoffset+pglen) of a file handle, exporting a
    writable buffer.  The memory stays valid while the VMA (or any ndarray made
    from it) is alive."""
    cdef readonly BigFileH fileh
    cdef readonly int64_t pgoffset
    cdef readonly int64_t pglen
    cdef uintptr_t addr
    cdef size_t size
    cdef object __weakref__

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if self.fileh.r == NULL:
            raise ValueError("file handle is closed")
        PyBuffer_FillInfo(buf, self, <void*>self.addr, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        pass

    def __len__(self):
        return self.size

    @property
    def addr_start(self):
        return self.addr

    @property
    def addr_stop(self):
        return self.addr + self.size

    def filerange(self):
        return (self.pgoffset, self.pglen)

    def pagesize(self):
        return self.fileh.blksize

    cdef _blkrange(self, offset, length):
        offset = _index(offset, "offset")
        if length is None:
            length = self.size - offset
        length = _index(length, "length")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("range [%d, %d) outside the mapping of %d bytes"
                             % (offset, offset + length, self.size))
        bs = self.fileh.blksize
        if length == 0:
            return self.pgoffset, self.pgoffset
        return (self.pgoffset + offset // bs,
                self.pgoffset + (offset + length + bs - 1) // bs)

    def prefault(self, offset=0, length=None, write=False):
        """Make bytes [offset, offset+length) resident (dirty and writable with
        write=True).  loadblk errors raise here as Python exceptions.  Use it before
        handing mapped memory to a system call: the kernel does not fault pages in
        for us, it returns EFAULT.  Ranges bigger than the RAM budget cannot all stay
        resident: go in chunks."""
        start, stop = self._blkrange(offset, length)
        self.fileh.prefault(start, stop, write)

    def madvise(self, advice, offset=0, length=None):
        """'willneed' loads the range now; 'dontneed' drops its clean blocks;
        'sequential', 'random', 'normal' steer the pager (readahead)."""
        if advice not in _ADVICE:
            raise ValueError("advice must be one of %s" % sorted(_ADVICE))
        start, stop = self._blkrange(offset, length)
        if advice == "willneed":
            self.fileh.prefault(start, stop, False)
        elif advice == "dontneed":
            self.fileh.drop_clean(start, stop)
        else:
            r = (<BigFileH>self.fileh)._region()
            lock()
            r.advice = _ADVICE[advice]
            unlock()
            if advice == "sequential":
                ra_advise(r, start, min(stop - start, ra_window(r)))

    def __dealloc__(self):
        if self.fileh is not None:
            self.fileh.nvma -= 1

    def __repr__(self):
        return "<VMA blocks [%d, %d) of %r>" % (self.pgoffset, self.pgoffset + self.pglen,
                                                self.fileh)

# ----------------------------------------------------------------- module API

def set_budget(nbytes):
    """Set the process-wide RAM budget (bytes) and reclaim down to it now."""
    global g_budget
    cdef size_t n
    nbytes = _index(nbytes, "nbytes")
    if nbytes <= 0 or nbytes >= (1 << 64):
        raise ValueError("RAM budget must be positive and below 2**64 bytes, got %d"
                         % nbytes)
    n = nbytes                  # (converted before the lock: no exception under it)
    lock()
    g_budget = n
    reclaim(0, 0)
    unlock()

def set_readahead(flag):
    """Enable (default) or disable readahead of sequential scans."""
    global g_ra_enabled
    g_ra_enabled = 1 if flag else 0

def get_budget():
    return g_budget

def zero_chunks(const unsigned char[::1] buf, Py_ssize_t cs):
    """-> bytearray with one flag per cs-byte chunk of buf: 1 if it is all zeros.
    Each chunk is scanned only up to its first nonzero byte, so dense data
    costs a few words per chunk (a full numpy pass costs the whole buffer)."""
    cdef Py_ssize_t n = buf.shape[0], nch, i, j, lo, hi
    cdef const unsigned char* p
    cdef const uint64_t* w
    if cs <= 0:
        raise ValueError("zero_chunks: chunk size must be > 0")
    nch = (n + cs - 1) // cs
    out = bytearray(nch)
    cdef unsigned char[::1] o = out
    if n == 0:
        return out
    p = &buf[0]
    with nogil:
        for i in range(nch):
            lo = i * cs
            hi = lo + cs
            if hi > n:
                hi = n
            j = lo
            # (words where aligned; bytes at the edges)
            while j < hi and (<uintptr_t>(p + j)) % 8:
                if p[j]:
                    break
                j += 1
            else:
                w = <const uint64_t*>(p + j)
                while j + 8 <= hi and w[0] == 0:
                    w += 1
                    j += 8
                while j < hi and p[j] == 0:
                    j += 1
            o[i] = j >= hi
    return out


def copy_into(unsigned char[::1] dst, const unsigned char[::1] src):
    """dst[:len(src)] = src, and zeros after it, without the GIL (another
    thread - a storage's reader, say - runs meanwhile).  ValueError if src is
    longer than dst."""
    cdef size_t n = src.shape[0], m = dst.shape[0]
    if n > m:
        raise ValueError("%d bytes do not fit in %d" % (n, m))
    with nogil:
        copy_pad(<char*>&dst[0] if m else NULL, m, <const char*>&src[0] if n else NULL, n)


def start_writeback(int fd):
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start writing fd's dirty pages
    to disk now, without waiting (so that a later fsync/syncfs has less to
    wait for).  Advice: errors are ignored."""
    with nogil:
        sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def sync_filesystem(int fd):
    """syncfs(2): write out everything cached of the filesystem holding fd (data
    and metadata, renames included), in one call."""
    cdef int rc
    with nogil:
        rc = syncfs(fd)
    if rc != 0:
        raise OSError(errno, _os.strerror(errno))


def set_zerocopy(flag):
    """Map local-file blocks straight from the page cache (default on) instead
    of copying them with pread."""
    global g_zerocopy
    g_zerocopy = 1 if flag else 0

def _thp_policy(slow_ns=None, backoff=None):
    """(For tests and measurements.)  Set how slow a huge-page block must be
    to fault in (ns per 2 MiB) before new blocks use small pages, and for how
    many; returns the old (slow_ns, backoff).  backoff=0: always huge pages.
    A backoff in progress ends."""
    global THP_SLOW_NS, THP_BACKOFF, g_thp_skip
    slow_ns = None if slow_ns is None else max(0, int(slow_ns))
    backoff = None if backoff is None else max(0, int(backoff))
    lock()
    old = (THP_SLOW_NS, THP_BACKOFF)
    if slow_ns is not None:
        THP_SLOW_NS = slow_ns
    if backoff is not None:
        THP_BACKOFF = backoff
    g_thp_skip = 0
    unlock()
    return old


def set_recycle(flag):
    """Recycle evicted block memory as staging buffers (default on)."""
    global g_recycle
    g_recycle = 1 if flag else 0

def set_scratch_dir(path):
    """Where the scratch file for spilled dirty blocks is made (an unnamed
    O_TMPFILE; the directory's filesystem must support it)."""
    global g_scratch_dir_c
    cdef bytes b = _os.fsencode(path)
    cdef char* c = <char*>malloc(len(b) + 1)
    cdef char* old
    if c == NULL:
        raise MemoryError()
    memcpy(c, <char*>b, len(b))
    c[len(b)] = 0
    lock()
    old = g_scratch_dir_c
    g_scratch_dir_c = c
    unlock()
    free(old)

def stats():
    lock()
    d = dict(budget=g_budget, resident=g_resident, dirty=g_dirty, spilled=g_spilled,
             pool=g_pool_bytes, faults=st_faults, soft_faults=st_soft, loads=st_loads,
             evictions=st_evictions, writeouts=st_writeouts, spills=st_spills,
             unspills=st_unspills, demotions=st_demotions, overshoots=st_overshoots,
             load_errors=st_load_errors, peak_resident=st_peak_resident,
             fresh_slots=st_fresh_slots, pool_fail=st_pool_fail,
             readahead_blocks=st_ra_blocks, zerocopy_loads=st_zerocopy,
             readahead_loads=st_ra_loads, readahead_hits=st_ra_hits,
             readahead_dropped=st_ra_dropped, readahead_inflight=g_ra_inflight,
             warm_slots=st_warm_slots, small_page_slots=st_small_slots,
             readahead_queued=g_raq_len,
             regions=g_nregions)
    unlock()
    return d

def reset_peak():
    global st_peak_resident
    lock()
    st_peak_resident = g_resident
    unlock()

def _addr_in_pager(uintptr_t addr):
    cdef Region* r
    lock()
    r = region_find(addr)
    unlock()
    return r != NULL


pthread_mutex_init(&g_lock, NULL)
pthread_cond_init(&g_cond, NULL)
pthread_cond_init(&g_ra_cond, NULL)
pthread_atfork(atfork_prepare, atfork_parent, atfork_child)
install_handler()
