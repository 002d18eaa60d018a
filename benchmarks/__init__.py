"""asv benchmark suite of wendelin_cy (see docs/benchmarks.md).

When wendelin_cy is not installed (``asv run --python=same`` from a source
checkout), the suites import it from ``src/`` (build it first:
``python setup.py build_ext --inplace``).
"""
