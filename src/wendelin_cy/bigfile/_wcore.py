"""ZBigFile and its blocks in wendelin.core's formats (databases written by
wendelin.core, docs/compat.md "Databases written by wendelin.core").

wendelin.core records its objects as ``wendelin.bigfile.file_zodb.ZBigFile``
(state ``(blksize, blktab)``, blktab an ``LOBTree`` blk -> block),
``ZBlk0`` (state: the bytes of the block, trailing zeros cut), ``ZBlk1``
(state: an ``IOBTree`` offset -> ``ZData``, no all-zero chunk stored, 4 KiB
chunks when it writes them, any when it reads) and ``ZData`` (state: bytes,
trailing zeros cut); early versions named ZBlk0 ``ZBlk``.  The classes here
read and write exactly those states, under those names, on wendelin_cy's
pager:

* reading: ``wendelin_cy.compat.install(db)`` (done by ``dbopen``) maps
  the names to these classes in the database's class factory; nothing else;
* writing: ZODB pickles a class by its ``__module__`` and name, and its
  pickler checks that importing that module gives the same class.  So the
  first time wendelin_cy writes such an object (a block stored, an array
  created or changed) it puts modules of these names into ``sys.modules``,
  which hold its own classes (``_ensure_names``).  It never replaces
  wendelin.core's own modules: if wendelin.core is imported in the process,
  the write fails with ``WendelinCoreImported``; and once the names are
  wendelin_cy's, importing wendelin.core in the same process fails with an
  ImportError that says why, rather than mixing the two packages.

Blocks are written as ZBlk0 or ZBlk1 only (wendelin.core reads no blob nor a
ZBlk1 over a base): the handle's format ``ZBlk0`` / ``ZBlk1``, or ``auto``:
a block keeps the format it has, a new block is a ZBlk1 when at most half
of its 4 KiB chunks are nonzero, else a ZBlk0.  ``fileh_open(zblk_fmt=None)``
follows ``$WENDELIN_CORE_ZBLK_FMT`` when it is set (as wendelin.core does),
else the usual ZBigFile rules (``blob`` is written as ``auto``).
"""

import importlib.abc
import importlib.machinery
import os
import sys
import types

from BTrees.IOBTree import IOBTree

from wendelin_cy.errors import WendelinError
from wendelin_cy.storage.record import zero as _zero

from ._zblk import ZBlk0 as _ZBlk0, ZData as _ZData, _ZBlkBase, _loaddata
from ._zblk_io import DEFAULT_BLKSIZE, _check_fmt, _iszero, _zero_flags
from ._zio import _ZBigFileIO
from .file_zodb import ZBigFile as _ZBigFile

__all__ = ['ZBigFile', 'ZBlk0', 'ZBlk1', 'ZData', 'WendelinCoreImported',
           'WCORE_CHUNKSIZE', 'WCORE_ZBLK_FMT_ENV']

FILE_MODULE = 'wendelin.bigfile.file_zodb'
ARRAY_MODULE = 'wendelin.bigarray.array_zodb'
WCORE_CHUNKSIZE = 4096          # ZBlk1 chunks as wendelin.core writes them
WCORE_ZBLK_FMT_ENV = 'WENDELIN_CORE_ZBLK_FMT'


class WendelinCoreImported(WendelinError, RuntimeError):
    """wendelin.core's own modules are imported in this process: wendelin_cy
    cannot record its objects under their names (ZODB would pickle
    wendelin.core's classes)."""


# ~~~ the names in sys.modules

# module name -> {class name: class} (the array module is filled by
# wendelin_cy.compat.wendelin_core, above this layer)
_NAMES = {FILE_MODULE: {}, ARRAY_MODULE: {}}
_ALIASES = {}                   # module name -> our module object in sys.modules


def register(module, **classes):
    """Classes to be found under wendelin.core's `module` once writing."""
    _NAMES[module].update(classes)
    m = _ALIASES.get(module)
    if m is not None:
        for k, v in classes.items():
            setattr(m, k, v)


def names_installed():
    """True if wendelin.core's names are wendelin_cy's in this process."""
    return bool(_ALIASES) and all(sys.modules.get(k) is m for k, m in _ALIASES.items())


def _ensure_names():
    """Before an object of these classes is pickled: make their names
    importable as these classes (see the module docstring)."""
    if _ALIASES and all(sys.modules.get(k) is m for k, m in _ALIASES.items()):
        return
    for modname, classes in _NAMES.items():
        if not classes:
            continue
        m = sys.modules.get(modname)
        if m is not None and m is not _ALIASES.get(modname):
            raise WendelinCoreImported(
                "%s is imported in this process (%r): wendelin_cy cannot write "
                "objects recorded under wendelin.core's class names while "
                "wendelin.core's own classes have them.  Read with wendelin_cy "
                "here, but write in a process that does not import wendelin.core "
                "(docs/compat.md, 'Databases written by wendelin.core')."
                % (modname, m))
        if m is None:
            m = types.ModuleType(modname, "wendelin_cy's classes under wendelin.core's "
                                 "name, for the records it writes (wendelin_cy.compat)")
            m.__dict__.update(classes)
            m.__spec__ = importlib.machinery.ModuleSpec(modname, None)
            sys.modules[modname] = m
            _ALIASES[modname] = m
    # the pickler imports the module with __import__(name), which gives the
    # top package, so that must be importable too: a placeholder, unless
    # the process has one (nothing else of wendelin.core is importable
    # through it: _Guard)
    if 'wendelin' not in sys.modules:
        top = types.ModuleType('wendelin', "placeholder of wendelin_cy for wendelin.core's "
                               "class names (wendelin_cy.compat)")
        top.__path__ = []
        top.__spec__ = importlib.machinery.ModuleSpec('wendelin', None, is_package=True)
        sys.modules['wendelin'] = top
        _ALIASES['wendelin'] = top
    if _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)


class _Guard(importlib.abc.MetaPathFinder):
    """Once wendelin.core's names are wendelin_cy's: importing wendelin.core
    itself fails with a clear reason, instead of a mix of both packages."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == 'wendelin' or fullname.startswith('wendelin.'):
            if fullname not in _ALIASES:
                raise ImportError(
                    'cannot import %s: this process wrote wendelin.core-format '
                    'records through wendelin_cy, so %s are wendelin_cy\'s '
                    'classes here; use wendelin.core in another process'
                    % (fullname, ' and '.join(sorted(_NAMES))), name=fullname)
        return None


_GUARD = _Guard()


# ~~~ the classes

def _bytes_state(obj):
    src = obj.__dict__.get('_v_src')
    data = src() if src is not None else obj._data
    return bytes(data)


def _set_bytes_state(obj, state):
    if not isinstance(state, bytes):
        raise TypeError('%s (wendelin.core format): corrupt state of type %s'
                        % (type(obj).__name__, type(state).__name__))
    obj.__dict__['_data'] = state


class _BytesState:
    """wendelin.core's state of a bytes record: the bytes themselves."""

    def __getstate__(self):
        _ensure_names()
        return _bytes_state(self)

    def __setstate__(self, state):
        _set_bytes_state(self, state)


class ZBlk0(_BytesState, _ZBlk0):
    """A block in one record: its bytes, trailing zeros cut."""

    __module__ = FILE_MODULE


class ZData(_BytesState, _ZData):
    """One chunk of a ZBlk1: its bytes, trailing zeros cut."""

    __module__ = FILE_MODULE


class ZBlk1(_ZBlkBase):
    """A block as chunks: the state is the IOBTree offset -> ZData (an
    absent chunk reads as zeros; chunks are of any length, not overlapping)."""

    __module__ = FILE_MODULE
    base = None                     # (never: for the tools that read ZBlk1s,
    chunksize = WCORE_CHUNKSIZE     # verify and info; not in the state)

    def __init__(self):
        self.chunktab = IOBTree()

    def __getstate__(self):
        _ensure_names()
        return self.chunktab

    def __setstate__(self, state):
        if not hasattr(state, 'items') or isinstance(state, dict):
            raise TypeError('ZBlk1 (wendelin.core format): corrupt state of type %s'
                            % type(state).__name__)
        self.__dict__['chunktab'] = state

    def loadblkdata(self, buf):
        n = len(buf)
        pos = 0
        for off, zd in self.chunktab.items():
            data = _loaddata(zd)
            end = off + len(data)
            if off < pos or end > n:
                raise ValueError('%r: corrupt block: chunk at %d (%d bytes) overlaps '
                                 'the one before it or ends past the %d-byte block'
                                 % (self, off, len(data), n))
            if off > pos:
                _zero(buf, pos, off)
            if data:
                buf[off:end] = data
            pos = end
        if pos < n:
            _zero(buf, pos, n)
        if not self._p_changed:
            self._p_deactivate()


class ZBigFile(_ZBigFile):
    """A ZBigFile whose state is wendelin.core's ``(blksize, blktab)``.

    ZBigFile(blksize=2 MiB, zblk_fmt=None): zblk_fmt is not stored (the
    state has no room for it), only used by the handles of this object."""

    __module__ = FILE_MODULE

    def __init__(self, blksize=DEFAULT_BLKSIZE, zblk_fmt=None):
        _ensure_names()
        if zblk_fmt == 'blob':
            raise ValueError("ZBigFile (wendelin.core format): blocks are ZBlk0 or "
                             "ZBlk1, not 'blob' (wendelin.core cannot read blobs)")
        super().__init__(blksize, zblk_fmt=zblk_fmt)

    def fileh_open(self, zblk_fmt=None, reserve=None):
        if zblk_fmt == 'blob':
            raise ValueError("fileh_open: a wendelin.core-format ZBigFile stores "
                             "ZBlk0 or ZBlk1 blocks, not 'blob'")
        if zblk_fmt is None and self.__dict__.get('zblk_fmt') is None:
            env = os.environ.get(WCORE_ZBLK_FMT_ENV)
            if env:
                zblk_fmt = _check_fmt(env, '$' + WCORE_ZBLK_FMT_ENV)
                if zblk_fmt == 'blob':
                    raise ValueError('$%s: wendelin.core has no blob format'
                                     % WCORE_ZBLK_FMT_ENV)
        return super().fileh_open(zblk_fmt=zblk_fmt, reserve=reserve)

    def __getstate__(self):
        _ensure_names()
        super().__getstate__()          # (handles moved to this connection)
        return (self.blksize, self.blktab)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 2):
            raise TypeError('ZBigFile (wendelin.core format): corrupt state %r'
                            % (type(state).__name__,))
        blksize, blktab = state
        if isinstance(blksize, bool) or not isinstance(blksize, int) or blksize <= 0:
            raise ValueError('ZBigFile (wendelin.core format): bad blksize %r' % (blksize,))
        d = self.__dict__
        keep = {k: v for k, v in d.items() if k.startswith('_v_')}
        d.clear()
        d.update(blksize=blksize, blktab=blktab, zblk_fmt=None, rev=0)
        d.update(keep)

    def _p_resolveConflict(self, old, saved, new):
        """Two commits that changed different blocks both rewrote this record
        (unchanged: the same blksize and blktab)."""
        def norm(s):
            return (s[0], getattr(s[1], 'oid', s[1]))
        if not (norm(old) == norm(saved) == norm(new)):
            from ZODB.POSException import ConflictError
            raise ConflictError
        return new


register(FILE_MODULE, ZBigFile=ZBigFile, ZBlk0=ZBlk0, ZBlk1=ZBlk1, ZData=ZData)


# ~~~ writing blocks

def _write_fmt(fmt):
    return fmt if fmt in ('ZBlk0', 'ZBlk1') else 'auto'     # ('blob': as auto)


class _WCoreIO(_ZBigFileIO):
    """_ZBigFileIO whose blocks are written as wendelin.core's ZBlk0 / ZBlk1."""

    def storeblk(self, blk, buf):
        wo = self._wo
        if wo is None:
            raise RuntimeError('%r: storeblk outside of a ZBigFileH writeout' % self)
        _ensure_names()
        zfile = self._zfile
        old = zfile.blktab.get(blk)
        if old is not None and type(old) not in (ZBlk0, ZBlk1):
            old_kind = None     # (not a wendelin.core block: replaced whole)
        else:
            old_kind = type(old) if old is not None else None
        bs = len(buf)
        if _iszero(buf):
            if old is not None:
                self._set(wo, blk, None, old)
            return
        fmt = _write_fmt(wo.fmt)
        if fmt == 'auto':
            if old_kind is not None:
                fmt = old_kind.__name__     # a block keeps its format
            else:
                nch = -(-bs // WCORE_CHUNKSIZE)
                nonzero = nch - sum(_zero_flags(buf, WCORE_CHUNKSIZE))
                fmt = 'ZBlk1' if nonzero <= nch / 2 else 'ZBlk0'
        if fmt == 'ZBlk0':
            self._store0(wo, blk, old, buf, ZBlk0)
        elif old_kind is ZBlk1 and _aligned(old):
            self._update1(wo, blk, old, buf)
        else:
            self._new1(wo, blk, old, buf)

    def _new1(self, wo, blk, old, buf):
        cs = WCORE_CHUNKSIZE
        z1 = ZBlk1()
        for i, zero in enumerate(_zero_flags(buf, cs)):
            if not zero:
                zd = ZData()
                zd._set_src(wo.src(blk, i * cs, cs, buf))
                z1.chunktab[i * cs] = zd
        self._set(wo, blk, z1, old)
        wo.touched.extend(z1.chunktab.values())

    def _update1(self, wo, blk, z1, buf):
        """Only the chunks that differ are stored (and the ZBlk1 record, which
        readers watch)."""
        cs = WCORE_CHUNKSIZE
        tab = z1.chunktab
        changed = False
        for lo in range(0, len(buf), cs):
            new = bytes(buf[lo:lo + cs]).rstrip(b'\0')
            zd = tab.get(lo)
            prev = bytes(_loaddata(zd)) if zd is not None else b''
            if new == prev.rstrip(b'\0'):
                continue
            if not changed:
                self._in_place()
                changed = True
            if not new:
                del tab[lo]
                continue
            if zd is None:
                zd = tab[lo] = ZData()
            zd._set_src(wo.src(blk, lo, cs, buf))
            wo.touched.append(zd)
        if changed:
            z1._p_changed = True
            wo.touched.append(z1)
            wo.written[blk] = z1


ZBigFile._IO = _WCoreIO


def _aligned(z1):
    """Are z1's chunks the ones we write (4 KiB, at multiples of 4 KiB)?  If
    not, the block is written anew (as wendelin.core does)."""
    for off, zd in z1.chunktab.items():
        if off % WCORE_CHUNKSIZE or len(_loaddata(zd)) > WCORE_CHUNKSIZE:
            return False
    return True
