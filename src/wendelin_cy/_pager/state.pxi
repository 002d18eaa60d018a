# state.pxi: the pager's data structures, its global state and its one lock.
#
# Invariants (all under g_lock unless said otherwise)
# * Every open file handle (BigFileH) owns one Region: an anonymous address
#   range reserved PROT_NONE, 2 MiB aligned, big enough that the file can grow
#   in place.  Block blk of a handle lives at base + blk*blksize and nowhere
#   else, so all windows (VMA objects, ndarray views) of one handle share memory.
# * A block has at most one Page; no Page means "not in RAM".  What states a
#   Page goes through, and who moves it, is the table at the top of blocks.pxi.
# * Blocks appear at their address only complete: they are filled in a private
#   staging mapping and moved into place with one mremap(MREMAP_FIXED) (or
#   mapped from a file with one mmap(MAP_FIXED)), so no thread can observe a
#   half-loaded block.
# * g_resident + g_pool_bytes stays within g_budget except when everything
#   resident is pinned or loading; then the overshoot is counted in the stats.
#
# Lock order: the GIL before g_lock, everywhere.  Python code is never run
# while g_lock is held: a Python callback could fault on mapped memory and
# re-enter.  A fault that happens while this thread holds g_lock is a bug of
# the pager and is passed on to the previous handler (it crashes with a
# traceback, never hangs).

# ----------------------------------------------------------------- constants

WRITEOUT_STORE = 1
WRITEOUT_MARKSTORED = 2

cdef enum:
    PROT_RO = 1          # PROT_READ
    PROT_RW = 3          # PROT_READ | PROT_WRITE

# error codes of pager_access (>0: errno of a syscall)
cdef enum:
    E_PYTHON = -1        # loadblk raised; exception stored by the caller's request
    E_CLOSED = -2        # the handle was closed while we waited
    E_RECURSE = -3       # loadblk touched the block it is loading
    E_FORKED = -4        # Python loadblk in a forked child
    E_BUFKEPT = -5       # views of loadblk's buffer outlived it, no memory for a copy
    E_STALE = -6         # invalidate_page came while loading: load again

# Region.advice (VMA.madvise); WILLNEED and DONTNEED act at once, never stored
cdef enum:
    ADV_NORMAL = 0
    ADV_SEQUENTIAL = 1
    ADV_RANDOM = 2
    ADV_WILLNEED = 3
    ADV_DONTNEED = 4

cdef size_t HUGE = 2 * 1024 * 1024      # a huge page (x86-64, arm64 with 4 KiB pages)
cdef size_t OSPAGE = 4096               # the small page; blksize is a multiple of it
cdef size_t DEFAULT_BUDGET = 1024 * 1024 * 1024

# ----------------------------------------------------------- data structures

cdef struct Region
cdef struct Page

cdef struct Page:
    Region* region
    int64_t blk
    int state            # PG_* (blocks.pxi)
    int dirty            # changed since loaded or written out (mark_dirty/mark_clean)
    int prot             # PROT_NONE, PROT_RO or PROT_RW: what is mapped now
    int referenced       # CLOCK reference bit
    int pin              # > 0: being written out, reclaim leaves it alone
    int writing          # being written out; a write fault clears it
    int filemap          # mapped straight from a file's page cache (zero-copy)
    int stale            # LOADING, and invalidate_page came meanwhile: what the
                         # loader brings is out of date, it loads again
    int ra               # loaded ahead, not touched yet (PROT_NONE: its first
                         # touch is a soft fault that moves the window on)
    int64_t spill        # byte offset in the scratch file, or -1
    size_t uncharged     # LOADED, mapped from a file and compacted (reclaim.pxi):
                         # bytes of the block not in RAM and not counted in
                         # g_resident; > 0 only while PROT_NONE
    int nocompact        # compacting it did not free enough: not tried again
    int seqmap           # mapped from a file in a sequential run (a scan's)
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
    PyObject* bigfile    # borrowed: the BigFileH keeps it alive while not closed
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
    int fills_buf        # its loadblk always writes all of buf (_loadblk_fills_buf):
                         # a recycled slot is not zeroed before the call
    int last_mapped      # the last load mapped a file (MapFile): it needed no staging
    int64_t ra_max       # BigFile.readahead_max: at most this many blocks ahead (0: any)
    int forked           # opened before a fork(), in the child: no Python loadblk
    uint64_t gen         # bumped when block contents may change (dirtied, written
                         # out, discarded, invalidated): queued readahead of an
                         # older generation is dropped

# ---------------------------------------------- the budget and what counts

cdef size_t g_budget = DEFAULT_BUDGET
cdef size_t g_resident = 0          # bytes of LOADED and LOADING blocks
cdef size_t g_dirty = 0             # of those, bytes of dirty LOADED blocks
cdef size_t g_spilled = 0           # bytes of SPILLED blocks (in the scratch file)
cdef Page* g_last_loaded = NULL     # never the victim of the next reclaim

# statistics (counts), read by stats() (control.pxi)
cdef uint64_t st_faults = 0, st_soft = 0, st_loads = 0, st_evictions = 0
cdef uint64_t st_writeouts = 0, st_spills = 0, st_unspills = 0, st_overshoots = 0
cdef uint64_t st_load_errors = 0, st_demotions = 0, st_compactions = 0
cdef size_t st_peak_resident = 0
cdef uint64_t st_fresh_slots = 0, st_pool_fail = 0, st_zerocopy = 0

cdef inline void resident_add(size_t bs) noexcept nogil:
    """bs more bytes are in RAM for a block (g_lock held)."""
    global g_resident, st_peak_resident
    g_resident += bs
    if g_resident > st_peak_resident:
        st_peak_resident = g_resident

# ------------------------------------------------------------------- locking

cdef pthread_mutex_t g_lock
cdef pthread_cond_t g_cond
cdef uint64_t g_change_seq = 0       # bumped by every notify()

cdef inline void lock() noexcept nogil:
    pthread_mutex_lock(&g_lock)
    wcy_lockdepth_add(1)

cdef inline void unlock() noexcept nogil:
    wcy_lockdepth_add(-1)
    pthread_mutex_unlock(&g_lock)

cdef inline void notify() noexcept nogil:
    """A page changed state (g_lock held): wake the waiters."""
    global g_change_seq
    g_change_seq += 1
    pthread_cond_broadcast(&g_cond)

cdef inline void wait_seq(uint64_t seq) noexcept nogil:
    """Sleep on g_cond (g_lock held) until notify() moved past seq."""
    wcy_lockdepth_add(-1)
    while g_change_seq == seq:
        pthread_cond_wait(&g_cond, &g_lock)
    wcy_lockdepth_add(1)

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
        wait_seq(seq)
        unlock()
        PyEval_RestoreThread(ts)
        lock()
    else:
        wait_seq(seq)

# fork(): the child gets g_lock in a known state (free) and no readahead thread

cdef void atfork_prepare() noexcept nogil:
    pthread_mutex_lock(&g_lock)

cdef void atfork_parent() noexcept nogil:
    pthread_mutex_unlock(&g_lock)

cdef void atfork_child() noexcept nogil:
    cdef int i
    pthread_mutex_init(&g_lock, NULL)
    pthread_cond_init(&g_cond, NULL)
    ra_after_fork()
    for i in range(g_nregions):         # handles of the parent: its connections
        g_regions[i].forked = 1
