"""The payload of a block record: a pickle whose state is one bytes object.

A ZODB record is two pickles: the class, then the state.  For a ZBlk0 or a
ZData the state is ``bytes``, so its payload is one contiguous run of the
record (and of the file that holds the record).  These functions find it
without unpickling, so that the bytes are copied once, straight into the
page.  Any other layout gives None: the caller then loads through the object.
"""

import os
import pickletools

__all__ = ['payload_view', 'payload_span', 'payload_tail_ok', 'record_payload',
           'preadinto', 'zero', 'HEAD_PEEK']

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
_MAX_TAIL = 16                  # what may follow the payload is shorter


def payload_view(p):
    """The bytes payload of record `p`, as a memoryview into it, or None if
    the record is not the plain pickle expected."""
    span = payload_span(p)
    if span is None or not payload_tail_ok(p[span[0] + span[1]:]):
        return None
    return memoryview(p)[span[0]:span[0] + span[1]]


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


def payload_tail_ok(tail):
    """What may follow the payload: STOP, after an optional memo put."""
    return (tail == _STOP
            or (len(tail) == 3 and tail[:1] == _BINPUT and tail[2:] == _STOP)
            or (len(tail) == 6 and tail[:1] == _LONG_BINPUT and tail[5:] == _STOP)
            or tail == _MEMOIZE + _STOP)


def record_payload(fd, dpos, plen, head):
    """(offset, nbytes) of the bytes payload of the record of plen bytes at
    dpos in file fd, whose first bytes are `head`; None if it is not the
    plain pickle expected."""
    span = payload_span(head)
    if span is None:
        return None
    i, n = span
    if (i + n > plen or plen - (i + n) > _MAX_TAIL or not payload_tail_ok(
            os.pread(fd, plen - (i + n), dpos + i + n))):
        return None
    return dpos + i, n


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
