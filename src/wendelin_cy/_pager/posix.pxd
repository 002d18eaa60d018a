# Kernel and libc declarations used by the pager core (and nothing else).
from libc.stdint cimport uintptr_t, int64_t, uint64_t

cdef extern from "<sys/types.h>":
    ctypedef long off_t
    ctypedef long ssize_t

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN
        ENOMEM
        EEXIST
        EINVAL
        EFAULT
        EIO

cdef extern from "<string.h>" nogil:
    char* strerror(int errnum)

cdef extern from "<sys/mman.h>" nogil:
    int mincore(void* addr, size_t length, unsigned char* vec)
    enum:
        PROT_NONE
        PROT_READ
        PROT_WRITE
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_FIXED
        MAP_FIXED_NOREPLACE
        MAP_NORESERVE
        MAP_POPULATE
        MREMAP_MAYMOVE
        MREMAP_FIXED
        MREMAP_DONTUNMAP
        MADV_DONTNEED
        MADV_HUGEPAGE
        MADV_WILLNEED
        MADV_SEQUENTIAL
        MADV_POPULATE_READ
        MADV_POPULATE_WRITE
        MADV_COLD
        MADV_RANDOM
    void* MAP_FAILED
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void* addr, size_t length)
    int mprotect(void* addr, size_t length, int prot)
    void* mremap(void* old_address, size_t old_size, size_t new_size, int flags, ...)
    int madvise(void* addr, size_t length, int advice)

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void* buf, size_t count, off_t offset)
    ssize_t pwrite(int fd, const void* buf, size_t count, off_t offset)
    int close(int fd)
    int syncfs(int fd)
    long sysconf(int name)
    enum: _SC_PAGESIZE
    int getpid()

cdef extern from "<fcntl.h>" nogil:
    int open(const char* path, int flags, ...)
    int posix_fadvise(int fd, off_t offset, off_t len, int advice)
    enum: POSIX_FADV_WILLNEED
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    enum: SYNC_FILE_RANGE_WRITE
    enum:
        O_RDONLY
        O_RDWR
        O_TMPFILE
        O_EXCL
        O_CLOEXEC

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    ctypedef int clockid_t
    enum: CLOCK_MONOTONIC
    int clock_gettime(clockid_t clk, timespec* tp)

cdef extern from "<sys/stat.h>" nogil:
    cdef struct stat_t "stat":
        off_t st_size
        unsigned long st_dev
        unsigned long st_ino
    int fstat(int fd, stat_t* st)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef unsigned long pthread_t
    int pthread_mutex_init(pthread_mutex_t*, void*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_cond_init(pthread_cond_t*, void*)
    int pthread_cond_wait(pthread_cond_t*, pthread_mutex_t*)
    int pthread_cond_broadcast(pthread_cond_t*)
    pthread_t pthread_self()
    int pthread_kill(pthread_t, int)
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t* th, const pthread_attr_t* attr,
                       void* (*start)(void*) noexcept nogil, void* arg)
    int pthread_detach(pthread_t)
    int pthread_sigmask(int how, const sigset_t* set, sigset_t* old)
    int pthread_cond_timedwait(pthread_cond_t*, pthread_mutex_t*, const timespec*)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    ctypedef struct siginfo_t:
        int si_signo
        int si_code
        void* si_addr
    ctypedef struct sigaction_t "struct sigaction":
        int sa_flags
        sigset_t sa_mask
        void (*sa_handler)(int) noexcept nogil
    int sigaction_ "sigaction"(int signum, const sigaction_t* act, sigaction_t* oldact)
    int sigemptyset(sigset_t*)
    int sigfillset(sigset_t*)
    int sigdelset(sigset_t*, int)
    enum: SIG_BLOCK
    enum: SIG_SETMASK
    int raise_ "raise"(int sig)
    enum:
        SIGSEGV
        SIGBUS
        SA_SIGINFO
        SA_NODEFER
        SA_RESTART
    void (*SIG_DFL)(int) noexcept nogil

cdef extern from "wcy.h" nogil:
    void wcy_set_errno(int e)
    int wcy_lockdepth()
    void wcy_lockdepth_add(int d)
    int wcy_chain_again(uintptr_t addr)
    int wcy_fault_again(uintptr_t addr)
    int wcy_fault_is_write(void* uc)
    void wcy_call_handler(const sigaction_t* sa, int sig, siginfo_t* si, void* uc)
    int wcy_handler_is_default(const sigaction_t* sa)
    int wcy_file_cached(int fd, uint64_t off, uint64_t len, uint64_t pagesize)
    void* wcy_handler_ptr(const sigaction_t* sa)
    void wcy_set_siginfo_handler(sigaction_t* sa, void (*fn)(int, siginfo_t*, void*) noexcept nogil)
