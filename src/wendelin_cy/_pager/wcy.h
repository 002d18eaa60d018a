/* wcy.h: the few things of the pager core that Cython cannot say by itself.
 *
 * - per-thread state of the fault handler (C11 _Thread_local);
 * - reading the fault's access kind (read/write) out of the ucontext, which is
 *   architecture specific;
 * - calling a saved previous signal handler through its function pointer.
 *
 * Everything here is async-signal-safe.
 */
#ifndef WENDELIN_CY_WCY_H
#define WENDELIN_CY_WCY_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

/* per-thread: depth of pager-lock ownership; a fault while > 0 is a bug in
 * the pager itself and must not deadlock on the lock: it is chained instead. */
static _Thread_local int wcy_tls_lockdepth = 0;
/* per-thread: last address chained to the previous handler, and how many times
 * in a row.  A previous handler that returns without fixing the fault would
 * make the instruction fault forever; the second time we fall back to SIG_DFL. */
static _Thread_local uintptr_t wcy_tls_chain_addr = 0;
static _Thread_local int wcy_tls_chain_count = 0;
/* per-thread: same address faulting again and again inside our range means
 * something is wrong (e.g. a protection we cannot grant): bounded. */
static _Thread_local uintptr_t wcy_tls_fault_addr = 0;
static _Thread_local int wcy_tls_fault_count = 0;

static inline void wcy_set_errno(int e) { errno = e; }
static inline int  wcy_lockdepth(void) { return wcy_tls_lockdepth; }
static inline void wcy_lockdepth_add(int d) { wcy_tls_lockdepth += d; }

static inline int wcy_chain_again(uintptr_t addr) {
    if (wcy_tls_chain_addr == addr) return ++wcy_tls_chain_count;
    wcy_tls_chain_addr = addr; wcy_tls_chain_count = 1; return 1;
}
static inline int wcy_fault_again(uintptr_t addr) {
    if (wcy_tls_fault_addr == addr) return ++wcy_tls_fault_count;
    wcy_tls_fault_addr = addr; wcy_tls_fault_count = 1; return 1;
}

/* x86-64: the page-fault error code's bit "the access was a write" */
#define WCY_X86_PF_WRITE 0x2
/* arm64: the signal frame's record of the exception syndrome (ESR_EL1), its
 * header (magic, size: 4 bytes each), and the data abort's "write not read" bit */
#define WCY_ARM64_ESR_MAGIC 0x45535201u
#define WCY_ARM64_CTX_HEADER 8
#define WCY_ARM64_ESR_WNR (1u << 6)

/* 1: the faulting access was a write; 0: a read; -1: unknown on this arch
 * (the pager then learns it from a second fault on a read-only block). */
static inline int wcy_fault_is_write(void *ucv) {
#if defined(__x86_64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    return (uc->uc_mcontext.gregs[REG_ERR] & WCY_X86_PF_WRITE) ? 1 : 0;
#elif defined(__aarch64__)
    ucontext_t *uc = (ucontext_t *)ucv;
    unsigned char *p = (unsigned char *)uc->uc_mcontext.__reserved;
    unsigned char *end = p + sizeof(uc->uc_mcontext.__reserved);
    while (p + WCY_ARM64_CTX_HEADER <= end) {
        uint32_t magic, size;
        memcpy(&magic, p, 4); memcpy(&size, p + 4, 4);
        if (magic == 0 || size == 0) break;
        if (magic == WCY_ARM64_ESR_MAGIC && p + WCY_ARM64_CTX_HEADER + 8 <= end) {
            uint64_t esr; memcpy(&esr, p + WCY_ARM64_CTX_HEADER, 8);
            return (esr & WCY_ARM64_ESR_WNR) ? 1 : 0;
        }
        p += size;
    }
    return -1;
#else
    (void)ucv;
    return -1;
#endif
}

/* call a saved struct sigaction as the kernel would have */
static inline void wcy_call_handler(const struct sigaction *sa, int sig, siginfo_t *si, void *uc) {
    if (sa->sa_flags & SA_SIGINFO) {
        if (sa->sa_sigaction) sa->sa_sigaction(sig, si, uc);
    } else if (sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN) {
        sa->sa_handler(sig);
    }
}
static inline int wcy_handler_is_default(const struct sigaction *sa) {
    return !(sa->sa_flags & SA_SIGINFO) && (sa->sa_handler == SIG_DFL || sa->sa_handler == SIG_IGN);
}
static inline void *wcy_handler_ptr(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) ? (void *)sa->sa_sigaction : (void *)sa->sa_handler;
}
static inline void wcy_set_siginfo_handler(struct sigaction *sa, void (*fn)(int, siginfo_t *, void *)) {
    sa->sa_sigaction = fn;
}

/* Are all pages of bytes [off, off+len) of file fd in the page cache?  1 yes,
 * 0 no, -1 cannot tell (no cachestat(2): Linux < 6.5).  cachestat asks the
 * file's page cache directly: unlike mincore of a mapping it takes no mmap
 * lock, which a scan thread mapping its blocks meanwhile waits for. */
#include <unistd.h>
#include <sys/syscall.h>
#ifndef __NR_cachestat
#  if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv) || defined(__i386__)
#    define __NR_cachestat 451
#  endif
#endif
struct wcy_cachestat_range { uint64_t off, len; };
struct wcy_cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };
static inline int wcy_file_cached(int fd, uint64_t off, uint64_t len, uint64_t pagesize) {
#ifdef __NR_cachestat
    struct wcy_cachestat_range r = { off, len };
    struct wcy_cachestat cs;
    if (syscall(__NR_cachestat, fd, &r, &cs, 0) != 0)
        return -1;
    return cs.nr_cache >= (len + pagesize - 1) / pagesize;
#else
    (void)fd; (void)off; (void)len; (void)pagesize;
    return -1;
#endif
}

#endif
