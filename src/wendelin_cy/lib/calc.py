"""``wendelin.lib.calc`` names: exact integer arithmetic helpers."""

__all__ = ['mul']


def mul(args, start=1):
    """Product of `args` times `start`, with Python ints (no overflow)."""
    v = start
    for x in args:
        v = v * x
    return v
