"""Byte-buffer helpers under wendelin.core's names (``wendelin.lib.mem``).

Each takes objects exporting a writable (or, for the source, readable)
buffer: bytearray, mmap, memoryview, a view's ``.data``.
"""
import numpy as np

__all__ = ['bzero', 'memset', 'memcpy', 'memdelta']


def _u8(buf, n=None):
    a = np.frombuffer(buf, dtype=np.uint8)
    return a if n is None else a[:n]


def _u8w(buf, n=None):
    m = memoryview(buf).cast('B')
    if m.readonly:
        raise TypeError('buffer is read-only')
    a = np.asarray(m)
    return a if n is None else a[:n]


def bzero(buf):
    """Fill `buf` with zero bytes."""
    _u8w(buf)[:] = 0


def memset(buf, c):
    """Fill `buf` with byte `c` (0..255)."""
    if not 0 <= c <= 0xff:
        raise ValueError('byte value out of range: %r' % (c,))
    _u8w(buf)[:] = c


def memcpy(dst, src):
    """Copy all of `src` to the start of `dst` (len(dst) >= len(src))."""
    s = _u8(src)
    if len(memoryview(dst).cast('B')) < len(s):
        raise ValueError('destination shorter than source')
    _u8w(dst, len(s))[:] = s


def memdelta(buf1, buf2):
    """Number of byte positions where `buf1` and `buf2` differ; the bytes
    of the longer one past the end of the shorter count as different."""
    a, b = _u8(buf1), _u8(buf2)
    n = min(len(a), len(b))
    return int(np.count_nonzero(a[:n] != b[:n])) + abs(len(a) - len(b))
