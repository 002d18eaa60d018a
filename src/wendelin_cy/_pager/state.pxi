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
cdef Page* g_last_loaded = NULL     # never the victim of the next reclaim

# statistics (counts)
cdef uint64_t st_faults = 0, st_soft = 0, st_loads = 0, st_evictions = 0
cdef uint64_t st_writeouts = 0, st_spills = 0, st_unspills = 0, st_overshoots = 0
cdef uint64_t st_load_errors = 0, st_demotions = 0
cdef size_t st_peak_resident = 0
cdef uint64_t st_fresh_slots = 0, st_pool_fail = 0, st_zerocopy = 0

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
