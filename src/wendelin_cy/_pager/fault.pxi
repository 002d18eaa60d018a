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
    zerocopy = not spilled and r.direct_fd >= 0 and direct_covers(r, blk)
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
