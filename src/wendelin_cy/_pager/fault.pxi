# fault.pxi: the fault path.  The SIGSEGV handler finds the region of the
# address and asks pager_access for the block; pager_access decides by the
# block's state (blocks.pxi): LOADED -> grant the access (access_loaded),
# LOADING -> wait for its loader, absent or SPILLED -> load it (load.pxi).
# The Python entry points (prefault, madvise willneed) call pager_access too.
# All of it runs without the GIL; only loadblk and the binding's callbacks
# take it, never with g_lock held.

cdef enum:
    FAULT_LOOP_MAX = 100000     # faults in a row at one address before we give up:
                                # the access keeps failing although it was granted

cdef sigaction_t g_prev_segv
cdef int g_installed = 0

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
    if wcy_fault_again(addr) > FAULT_LOOP_MAX:
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


cdef int pager_access(Region* r, int64_t blk, int write, int entry,
                      PyObject** exc) noexcept nogil:
    """Make block `blk` of region `r` accessible (for writing if write == 1;
    write == -1: unknown access kind, inferred from the page's protection).
    Called from the fault handler (entry=0) or from a Python entry point (entry=1,
    with or without the GIL).  Returns 0 or an error code (see E_*, or errno)."""
    global st_faults
    cdef Page* p
    cdef Load ld
    cdef int64_t ra_start = 0, ra_n = 0
    cdef int rc, hook
    lock()
    if not entry:
        st_faults += 1
    while True:
        while True:
            if r.closed:
                unlock()
                return E_CLOSED
            if blk >= r.nblk:
                unlock()
                return EINVAL
            p = r.pages[blk]
            if p == NULL or p.state == PG_SPILLED:
                break                                   # not in RAM: load it
            if p.state == PG_LOADED:
                return access_loaded(r, p, write, entry)    # (releases g_lock)
            if p.loader == pthread_self():              # LOADING, by loadblk itself
                unlock()
                return E_RECURSE
            wait_change()                               # LOADING by another thread

        rc = load_begin(&ld, r, blk, p)
        unlock()
        if rc != 0:
            return rc
        rc = load_fill(&ld, r, blk, write, entry, exc)
        lock()
        rc = load_finish(&ld, r, write, rc)
        if rc == E_STALE:
            notify()                # invalidated meanwhile: load it again
            continue
        break
    if rc != 0:
        notify()
        unlock()
        return rc
    hook = mark_dirty(r, ld.p) if write > 0 else 0
    if not entry and not ld.spilled:
        ra_on_load(r, blk, &ra_start, &ra_n)
    notify()
    return access_return(r, ra_start, ra_n, hook, 0)

cdef inline int access_loaded(Region* r, Page* p, int write, int entry) noexcept nogil:
    """Grant an access to the LOADED block p (g_lock held, released on return):
    a write dirties it, any access marks it referenced; a block read ahead
    moves the readahead window on at its first touch."""
    global st_soft
    cdef int64_t ra_start = 0, ra_n = 0
    cdef int prot, rc, hook = 0, compacted
    if write < 0:               # a fault where it was readable can only be a write
        write = 1 if p.prot != PROT_NONE else 0
    if write:
        hook = mark_dirty(r, p)
        p.writing = 0
        prot = PROT_RW
    elif p.dirty and not p.writing:
        prot = PROT_RW
    else:
        prot = PROT_RO
    if p.prot == PROT_RW:
        prot = PROT_RW
    compacted = p.uncharged != 0
    rc = set_prot(p, prot)
    p.referenced = 1
    if compacted and rc == 0 and pressure(0) > g_budget:
        p.pin += 1              # (counted whole again: room for it, not it)
        reclaim(0, r.blksize)
        p.pin -= 1
    if p.ra:
        ra_hit(r, p, &ra_start, &ra_n)
    if not entry:
        st_soft += 1
    return access_return(r, ra_start, ra_n, hook, rc)

cdef inline int access_return(Region* r, int64_t ra_start, int64_t ra_n, int hook,
                              int rc) noexcept nogil:
    """Release g_lock, then do what must not run under it: ask for the blocks
    ahead, tell the binding the handle went dirty.  Returns rc."""
    unlock()
    if ra_n:
        ra_advise(r, ra_start, ra_n)
    if hook:
        call_dirty_hook(r)
    return rc

# --------------------------------------------- not ours, or cannot be served

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
