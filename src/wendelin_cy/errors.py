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
