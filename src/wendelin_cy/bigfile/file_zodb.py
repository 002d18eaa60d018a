"""ZBigFile: a BigFile whose blocks are objects in ZODB.

A ``ZBigFile`` is a small Persistent object: ``blksize``, a revision counter
``rev`` and ``blktab``, an ``LOBTree`` mapping block number -> ZBlk object
(absent: a hole, read as zeros).  A block is stored as a ``ZBlk0`` (one
record of the whole block), a ``ZBlk1`` (``ZData`` chunks, over an optional
base) or a ``ZBlkSeg`` (its part of a blob file, mapped by the pager), chosen
per block at commit by the ZBlk format (``zblk_fmt`` of ``fileh_open``, of
the ZBigFile, ``$WENDELIN_CY_ZBLK_FMT``, or ``auto``).  ``fileh_open()``
gives a ``ZBigFileH``, which joins the transactions of the ZBigFile's
connection.  The design (formats, one copy in RAM, committing,
invalidation, limits) is in docs/design.md, section "ZODB binding".

The classes stored in databases keep this module's path.  Where the rest
lives:

* ``_zblk``: the ZBlk classes and how each fills a page;
* ``_zblk_io``: formats, byte helpers, blob segment files;
* ``_zio``: ``_ZBigFileIO`` (loadblk, storeblk, prefetch, invalidation);
* ``_zhandle``: ``ZBigFileH`` (the transaction side), savepoints;
* ``_txn``: what is used of transaction's and Connection's internals;
* ``wendelin_cy.storage``: everything storage-specific.
"""

import numpy as np
from BTrees.LOBTree import LOBTree
from persistent import Persistent

from wendelin_cy.storage import READER as _READER, zeo as _zeo

from ._txn import check_cache as _check_cache
from ._zblk import ZBlk0, ZBlk1, ZBlkSeg, ZData
from ._zblk_io import (CHUNKSIZE, DEFAULT_BLKSIZE, SEG_BLOCKS, ZBLK_FMT_ENV, ZBLK_FORMATS,
                       _OSPAGE, _check_fmt, _env_fmt, _write_blob_file)
from ._zhandle import ZBigFileH, _close_handles_of, zodb_storing
from ._zio import _IOS, _ZBigFileIO

__all__ = ['ZBigFile', 'ZBigFileH', 'ZBlk0', 'ZBlk1', 'ZData', 'ZBlkSeg',
           'DEFAULT_BLKSIZE', 'CHUNKSIZE', 'ZBLK_FORMATS', 'ZBLK_FMT_ENV']

# names other modules, tests and benchmarks use from here
_reexports = (_READER, _close_handles_of, _write_blob_file, zodb_storing, SEG_BLOCKS)


# wendelin.core's names for the formats: ZBlk_fmt_registry maps a format to its
# class (_ZBlk_auto: chosen per block); ZBlk_fmt_write (read below, until
# assigned) is the format written by default, $WENDELIN_CY_ZBLK_FMT or 'auto'
_ZBlk_auto = object()
ZBlk_fmt_registry = {'ZBlk0': ZBlk0, 'ZBlk1': ZBlk1, 'blob': ZBlkSeg, 'auto': _ZBlk_auto}


def __getattr__(name):
    if name == '_zeo_direct_reads':         # a counter: read it where it counts
        return _zeo.direct_reads
    if name == 'ZBlk_fmt_write':            # not assigned: the environment's
        return _env_fmt()
    raise AttributeError('module %r has no attribute %r' % (__name__, name))


class ZBigFile(Persistent):
    """A file of ``blksize`` blocks stored as ZBlk objects in ``blktab``.

    ZBigFile(blksize=2 MiB, zblk_fmt=None); ``fileh_open()`` gives a handle
    (``ZBigFileH``) to mmap, joined to the transactions of the connection the
    ZBigFile lives in.
    """

    _IO = _ZBigFileIO       # what the pager sees (bigfile._wcore: another)

    def __init__(self, blksize: int = DEFAULT_BLKSIZE, zblk_fmt: str | None = None) -> None:
        if isinstance(blksize, bool) or not isinstance(blksize, (int, np.integer)):
            raise TypeError('ZBigFile: blksize must be an int, not %s'
                            % type(blksize).__name__)
        blksize = int(blksize)
        if blksize <= 0 or blksize % _OSPAGE or blksize > (1 << 30):
            raise ValueError('ZBigFile: blksize must be a positive multiple of %d, '
                             'at most 1 GiB, got %d' % (_OSPAGE, blksize))
        if zblk_fmt is not None:
            _check_fmt(zblk_fmt, 'ZBigFile')
        self.blksize = blksize
        self.blktab = LOBTree()
        self.rev = 0
        self.zblk_fmt = zblk_fmt

    def __setstate__(self, state):
        d = self.__dict__
        keep = {k: v for k, v in d.items() if k.startswith('_v_')}
        d.clear()
        d.update(state)
        d.setdefault('zblk_fmt', None)
        d.setdefault('rev', 0)
        d.update(keep)

    def fileh_open(self, zblk_fmt: str | None = None, reserve: int | None = None) -> ZBigFileH:
        """Open a handle: mmap it; commit/abort of the transaction write out /
        discard its changes."""
        if zblk_fmt is not None:
            _check_fmt(zblk_fmt, 'fileh_open')
        elif self.zblk_fmt is None:
            _env_fmt()          # a bad $WENDELIN_CY_ZBLK_FMT fails here, early
        jar = self._p_jar
        if jar is not None and getattr(jar, 'opened', True) is None:
            from ZODB.POSException import ConnectionStateError
            raise ConnectionStateError(
                '%r: cannot open a handle, the database connection is closed'
                % (self,))
        if jar is not None:
            _check_cache(jar)
        io = self.__dict__.get('_v_io')         # (does not load a ghost)
        if io is None:
            io = self._IO(self)
            self.__dict__['_v_io'] = io
            _IOS.add(io)
        return ZBigFileH(self, io, zblk_fmt, reserve)

    # The _v_io helper must survive ghostification: the pager holds it, and
    # a second one would split the file in two.  __setstate__ keeps _v_
    # attributes; these keep them when the state is dropped.

    def _p_deactivate(self):
        io = self.__dict__.get('_v_io')
        if io is not None and any(not h.closed for h in list(io._handles)):
            return      # with an open handle it stays alive (as wendelin.core's)
        keep = {k: v for k, v in self.__dict__.items() if k.startswith('_v_')}
        super()._p_deactivate()
        self.__dict__.update(keep)

    def _p_invalidate(self):
        keep = {k: v for k, v in self.__dict__.items() if k.startswith('_v_')}
        io = keep.get('_v_io')
        if io is not None:
            io._recheck = True
        super()._p_invalidate()
        self.__dict__.update(keep)

    def __getstate__(self):
        # A ZBigFile that got its connection just now (first commit after it
        # was added) may have handles still following the default transaction
        # manager: move them over, and write their pages into this commit.
        io = self.__dict__.get('_v_io')
        if io is not None and self._p_jar is not None:
            for h in list(io._handles):
                h._zfile_being_stored()
        return super().__getstate__()

    def _p_resolveConflict(self, old, saved, new):
        """Concurrent changes of different blocks both bump ``rev``: merge."""
        def norm(s):
            return {k: getattr(v, 'oid', v) for k, v in s.items() if k != 'rev'}
        if norm(old) != norm(saved) or norm(old) != norm(new):
            from ZODB.POSException import ConflictError
            raise ConflictError
        merged = dict(new)
        merged['rev'] = max(saved.get('rev', 0), new.get('rev', 0)) + 1
        return merged

    def __repr__(self):
        oid = self._p_oid
        return '<%s oid=%s blksize=%s>' % (
            type(self).__name__, oid.hex() if oid else None,
            self.__dict__.get('blksize', '?'))

