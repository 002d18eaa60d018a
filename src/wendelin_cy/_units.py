"""Sizes written as people write them ('512M', '2GiB'): a leaf module, which
the pager and the layers above it may all import."""

import re

__all__ = ['parse_size']

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text):
    """'512M' -> 536870912; '2G', '1.5g', '64k', '4096', '2GiB', '100MB' are accepted."""
    if isinstance(text, bool):
        raise TypeError("a size must be an int or a string like '512M'")
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        raise TypeError("a size must be an int or a string like '512M', not %s"
                        % type(text).__name__)
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ValueError("cannot parse size %r: use e.g. 512M, 2G or a number of bytes"
                         % text)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
