"""``wendelin.lib.utils`` names."""
import numbers
from collections.abc import Sequence

import numpy as np

__all__ = ['inttuple']


def _int(x):
    if not isinstance(x, numbers.Integral):
        raise TypeError("'%s' cannot be interpreted as integer" % type(x))
    return x


def inttuple(x):
    """An int, or a sequence (or ndarray) of ints, as a tuple of ints, as
    numpy takes shapes; TypeError "... cannot be interpreted as integer"
    for anything else."""
    if isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, (str, bytes)):
        return tuple(_int(v) for v in x)
    return (_int(x),)
