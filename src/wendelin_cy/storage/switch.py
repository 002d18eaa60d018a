"""The fast-path switch and the one log warning of the storage backends.

Every fast path (a read that goes past the storage's public API) can be
turned off for the whole process, with ``set_fast_paths(False)`` or, before
the first use, the environment variable ``WENDELIN_CY_STORAGE_FAST_PATHS=0``:
then every storage is served by the generic backend, which uses ZODB's
public API only.

A backend checks once the shape of the internals it relies on (attributes
present and callable, a class where it expects one).  When they are not what
it was written for, ``shape_mismatch`` logs one warning on the
``wendelin_cy.storage`` logger and that backend is replaced by the generic one for the rest of the process:
slower, never wrong.
"""

import logging
import os

__all__ = ['fast_paths', 'set_fast_paths', 'StorageFastPathWarning',
           'shape_mismatch', 'fell_back', 'FAST_PATHS_ENV']

FAST_PATHS_ENV = 'WENDELIN_CY_STORAGE_FAST_PATHS'

_on = os.environ.get(FAST_PATHS_ENV, '1').strip().lower() not in ('0', 'no', 'off', 'false')
_fallen = {}        # backend kind -> why it fell back to the generic path
_log = logging.getLogger('wendelin_cy.storage')


class StorageFastPathWarning(RuntimeWarning):
    """No longer emitted: a fast path that falls back is logged on the
    ``wendelin_cy.storage`` logger (nothing for the user's code to change).
    Kept so that code filtering it still imports."""


def fast_paths():
    """Are the fast paths on (the default)?"""
    return _on


def set_fast_paths(on):
    """Turn every fast path on or off (off: the generic backend only)."""
    global _on
    _on = bool(on)


def shape_mismatch(kind, why):
    """Backend `kind` (its name) cannot run on what is installed, because of
    `why`: log it once, and serve its storages generically from now on."""
    if kind in _fallen:
        return
    _fallen[kind] = why
    _log.warning('the %s fast path is off: %s; using ZODB\'s public API instead '
                 '(slower, same results)', kind, why)


def fell_back(kind):
    """Has backend `kind` fallen back to the generic path?"""
    return kind in _fallen
