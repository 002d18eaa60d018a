"""The payload of a block record: a pickle whose state is one bytes object.

A ZODB record is two pickles: the class, then the state.  For a ZBlk0 or a
ZData the state is ``bytes`` (older records) or ``(bytes, size, digest)``
(see bigfile._zblk), so its payload is one contiguous run of the record
(and of the file that holds the record), and the size and digest follow it.
These functions find it without unpickling, so that the bytes are copied
once, straight into the page.  Any other layout gives None: the caller then
loads through the object (which reports what is wrong).  A payload whose
size differs from the one recorded gives None too, and so does one whose
digest does not match where content checks are on (``payload_view``; the
callers of ``record_payload`` check the digest after reading).
"""

import os
import pickletools

from .checksum import checks_on, digest

__all__ = ['payload_view', 'payload_span', 'payload_tail', 'payload_tail_ok',
           'record_payload', 'preadinto', 'zero', 'HEAD_PEEK']

# opcodes of the state pickle that we accept (protocols 3 to 5)
_PROTO_HEADS = (b'\x80\x03', b'\x80\x04', b'\x80\x05')
_FRAME = b'\x95'                # FRAME + 8-byte length (protocol 4+)
_FRAME_LEN = 9
_SHORT_BINBYTES = b'C'          # + 1-byte length
_BINBYTES = b'B'                # + 4-byte little-endian length
_BINBYTES8 = b'\x8e'            # + 8-byte little-endian length
_STOP = b'.'
_BINPUT = b'q'                  # memo put, 1-byte index
_LONG_BINPUT = b'r'             # memo put, 4-byte index
_MEMOIZE = b'\x94'

HEAD_PEEK = 512                 # bytes of a record read to find its payload
_MAX_TAIL = 48                  # what may follow the payload is shorter
_BININT1, _BININT2, _BININT = b'K', b'M', b'J'
_TUPLE3 = b'\x87'


def payload_view(p, storage=None):
    """The bytes payload of record `p`, as a memoryview into it, or None if
    the record is not the plain pickle expected, its size is not the one
    recorded, or (content checks on for `storage`) its digest differs."""
    span = payload_span(p)
    if span is None:
        return None
    t = payload_tail(p[span[0] + span[1]:])
    if t is None or (t[0] is not None and t[0] != span[1]):
        return None
    view = memoryview(p)[span[0]:span[0] + span[1]]
    if t[1] is not None and checks_on(storage) and digest(view) != t[1]:
        return None
    return view


def payload_span(p):
    """Where the bytes payload is in a record `p` (or its first HEAD_PEEK
    bytes): (offset, length), or None."""
    try:
        for op, _, pos in pickletools.genops(p):       # the class pickle
            if op.name == 'STOP':
                break
        else:
            return None
    except Exception:
        return None
    i = pos + 1
    if p[i:i + 2] not in _PROTO_HEADS:
        return None
    i += 2
    if p[i:i + 1] == _FRAME:
        i += _FRAME_LEN
    code = p[i:i + 1]
    if code == _SHORT_BINBYTES:
        if len(p) < i + 2:
            return None
        n, i = p[i + 1], i + 2
    elif code == _BINBYTES:
        n, i = int.from_bytes(p[i + 1:i + 5], 'little'), i + 5
    elif code == _BINBYTES8:
        n, i = int.from_bytes(p[i + 1:i + 9], 'little'), i + 9
    else:
        return None
    return i, n


def _skip_memo(t, i):
    c = t[i:i + 1]
    if c == _BINPUT:
        return i + 2
    if c == _LONG_BINPUT:
        return i + 5
    if c == _MEMOIZE:
        return i + 1
    return i


def payload_tail(tail):
    """What follows the payload -> (size, digest): (None, None) for a plain
    bytes state (STOP after an optional memo put), (n, 8-byte digest) for a
    ``(bytes, n, digest)`` state; None for anything else."""
    tail = bytes(tail)
    i = _skip_memo(tail, 0)
    if tail[i:] == _STOP:
        return (None, None)
    c = tail[i:i + 1]
    if c == _BININT1:
        n, i = tail[i + 1], i + 2
    elif c == _BININT2:
        n, i = int.from_bytes(tail[i + 1:i + 3], 'little'), i + 3
    elif c == _BININT:
        n, i = int.from_bytes(tail[i + 1:i + 5], 'little', signed=True), i + 5
    else:
        return None
    i = _skip_memo(tail, i)
    if tail[i:i + 2] != _SHORT_BINBYTES + bytes([8]) or len(tail) < i + 10:
        return None
    h, i = tail[i + 2:i + 10], i + 10
    i = _skip_memo(tail, i)
    if tail[i:i + 1] != _TUPLE3:
        return None
    i = _skip_memo(tail, i + 1)
    if tail[i:] != _STOP:
        return None
    return (n, h)


def payload_tail_ok(tail):
    """What may follow the payload (see payload_tail)."""
    return payload_tail(tail) is not None


def record_payload(fd, dpos, plen, head):
    """(offset, nbytes, digest) of the bytes payload of the record of plen
    bytes at dpos in file fd, whose first bytes are `head` (digest: None for
    an older record without one); None if it is not the plain pickle
    expected or its size is not the one recorded."""
    span = payload_span(head)
    if span is None:
        return None
    i, n = span
    if i + n > plen or plen - (i + n) > _MAX_TAIL:
        return None
    t = payload_tail(os.pread(fd, plen - (i + n), dpos + i + n))
    if t is None or (t[0] is not None and t[0] != n):
        return None
    return dpos + i, n, t[1]


_zeros = memoryview(b'')


def zero(buf, start, end):
    """buf[start:end] = zeros."""
    global _zeros
    n = end - start
    if len(_zeros) < n:
        _zeros = memoryview(bytes(n))
    buf[start:end] = _zeros[:n]


def preadinto(fd, buf, off, n):
    """Read n bytes at off into buf[:n]; zeros after them; False if short."""
    # released on the way out, not when the frame goes: a profiler that
    # samples threads' frames (dask.distributed's does) may keep this frame,
    # and a view of a loadblk buffer alive after loadblk is refused by the pager
    with memoryview(buf) as view:
        done = 0
        while done < n:
            k = os.preadv(fd, [view[done:n]], off + done)
            if k <= 0:
                return False
            done += k
        if n < len(view):
            zero(view, n, len(view))
        return True
