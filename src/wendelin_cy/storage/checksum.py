"""Checksums of block content: made at commit, checked on load.

Every block record wendelin_cy writes carries the size and the xxh3-64
digest (xxHash, 8 bytes) of the bytes it stores (see bigfile._zblk).  Sizes
are always checked on load; digests when content checks are on for the
database: ``dbopen(uri, verify=True)`` (or ``False``), else
``$WENDELIN_CY_VERIFY`` (``1`` / ``0``), else ``DEFAULT``.  ``python -m
wendelin_cy verify`` always checks them.

xxh3-64 was measured against CRC32C (crc32c, google-crc32c) and zlib.crc32
on 2 MiB blocks here: 62 GB/s (in cache), against 28 and under 2; see
docs/guarantees.md.
"""

import os

import xxhash

__all__ = ['DIGEST_SIZE', 'digest', 'checks_on', 'VERIFY_ENV', 'DEFAULT', 'ALGO']

ALGO = 'xxh3_64'
DIGEST_SIZE = 8
VERIFY_ENV = 'WENDELIN_CY_VERIFY'
DEFAULT = False     # content checks by the switch: -46% on a warm scan (docs/guarantees.md)

digest = xxhash.xxh3_64_digest      # bytes-like -> 8 bytes


def _env_default():
    v = os.environ.get(VERIFY_ENV, '').strip().lower()
    if v in ('1', 'true', 'yes', 'on'):
        return True
    if v in ('0', 'false', 'no', 'off'):
        return False
    return DEFAULT


def checks_on(storage):
    """Are content checks on for loads from `storage` (None: the default)?"""
    v = getattr(storage, '_wendelin_cy_verify', None)
    if v is None:
        return _env_default()
    return v


def set_checks(storage, on):
    """dbopen(verify=...): content checks on or off for one storage."""
    try:
        storage._wendelin_cy_verify = None if on is None else bool(on)
    except AttributeError:          # (a storage refusing new attributes)
        pass
