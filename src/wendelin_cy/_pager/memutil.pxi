# memutil.pxi: byte-level helpers: whole-range file I/O for the pager, and
# the helpers the storage layers call on large buffers without the GIL
# (another thread, e.g. a storage's reader, runs meanwhile).

cdef enum:
    IO_READ = 0         # pread; past the end of the file reads zeros (holes)
    IO_WRITE = 1        # pwrite all of it
    IO_READ_EXACT = 2   # pread all of it; the end of the file is EIO

cdef int rw_full(int fd, char* buf, size_t size, int64_t off, int mode) noexcept nogil:
    """pread/pwrite the whole range (mode: IO_*); 0 or errno."""
    cdef ssize_t n
    cdef size_t done = 0
    while done < size:
        if mode == IO_WRITE:
            n = pwrite(fd, buf + done, size - done, off + done)
        else:
            n = pread(fd, buf + done, size - done, off + done)
        if n < 0:
            if errno == EINTR:
                continue
            return errno
        if n == 0:
            if mode != IO_READ:
                return EIO
            memset(buf + done, 0, size - done)
            return 0
        done += n
    return 0

cdef inline void copy_pad(char* dst, size_t m, const char* src, size_t n) noexcept nogil:
    """dst[:m] = src[:n] followed by zeros (n <= m)."""
    if n:
        memcpy(dst, src, n)
    if n < m:
        memset(dst + n, 0, m - n)


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
