"""Exceptions of wendelin_cy.

Errors keep the builtin class a Python user would expect (ValueError for a bad
value, TypeError for a bad type, MemoryError when RAM or address space runs out,
OSError for the system) and add the library base class, so both
``except ValueError`` and ``except wendelin_cy.WendelinError`` work.
"""


class WendelinError(Exception):
    """Base class of the errors raised by wendelin_cy itself."""


class LoadError(WendelinError, OSError):
    """A block could not be loaded from its storage (corrupt or missing record,
    wrong size, a storage that raised)."""


class CorruptBlockError(LoadError):
    """The stored bytes of a block do not match the size or checksum recorded
    when it was committed (a damaged or truncated file, a record of the
    wrong length).  ``array`` (the array's file), ``blk``, ``oid`` (hex of
    the record at fault), ``file`` (the storage file or blob file) and
    ``detail`` say where and what; any of them may be None where unknown."""

    def __init__(self, detail, oid=None, file=None, blk=None, array=None):
        self.detail, self.oid, self.file = detail, oid, file
        self.blk, self.array = blk, array
        super().__init__(self._text())

    def _text(self):
        where = []
        if self.array is not None:
            where.append('array file %s' % (self.array,))
        if self.blk is not None:
            where.append('block %d' % self.blk)
        if self.oid is not None:
            where.append('oid %s' % self.oid)
        if self.file is not None:
            where.append('file %s' % self.file)
        return 'corrupt block (%s): %s' % (', '.join(where) or '?', self.detail)

    def locate(self, blk, array):
        """Fill in the block and the array's file where they were unknown."""
        if self.blk is None:
            self.blk = blk
        if self.array is None:
            self.array = array
        self.args = (self._text(),)
        return self

    def __reduce__(self):
        return (type(self), (self.detail, self.oid, self.file, self.blk, self.array))

    def __str__(self):
        return self._text()
