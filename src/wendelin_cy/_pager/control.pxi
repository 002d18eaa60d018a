# control.pxi: the module's knobs and gauges: the RAM budget, readahead, the
# huge-page backoff, the scratch directory, and stats() (what
# wendelin_cy.pager_stats() reports).

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

RECLAIM_BATCH = 64

def ram_reclaim():
    """Evict up to RECLAIM_BATCH clean, resident blocks (of any handle) now,
    least recently looked at first; returns how many (0: none left to evict).
    Dirty blocks stay.  wendelin.core's name; the pager reclaims by itself
    to keep within the budget, this is for tests and for giving RAM back."""
    cdef Page* p
    cdef Page* nx
    cdef int64_t n = 0, left
    lock()
    left = g_nclock
    p = g_hand
    while p != NULL and left > 0 and n < RECLAIM_BATCH:
        nx = p.next
        left -= 1
        if not p.dirty and not p.pin:
            page_drop(p)
            n += 1
        p = nx if g_hand != NULL else NULL
    pool_drain()
    unlock()
    return n

def set_readahead(flag):
    """Enable (default) or disable readahead of sequential scans."""
    global g_ra_enabled
    g_ra_enabled = 1 if flag else 0

def set_map_ahead(flag):
    """Enable (default) or disable mapping ahead: blocks a scan comes to next
    that are in the page cache mapped at once, before their faults
    (readahead.pxi).  Returns the previous setting."""
    global g_map_ahead
    old = bool(g_map_ahead)
    g_map_ahead = 1 if flag else 0
    return old

def get_budget():
    return g_budget

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
             compactions=st_compactions,
             load_errors=st_load_errors, peak_resident=st_peak_resident,
             fresh_slots=st_fresh_slots, pool_fail=st_pool_fail,
             readahead_blocks=st_ra_blocks, zerocopy_loads=st_zerocopy,
             readahead_loads=st_ra_loads, readahead_hits=st_ra_hits,
             readahead_dropped=st_ra_dropped, readahead_inflight=g_ra_inflight,
             readahead_cached=st_ra_cached, readahead_cache_reads=st_ra_cache_reads,
             mapped_ahead=st_mapped_ahead,
             readahead_cache_checked=st_ra_checked,
             warm_slots=st_warm_slots, small_page_slots=st_small_slots,
             readahead_queued=g_raq_len,
             regions=g_nregions)
    unlock()
    return d
