"""Build wendelin_cy: the Cython pager core plus the pure-Python layers."""
import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # sdist without Cython: build the shipped C file
    cythonize = None

here = os.path.dirname(os.path.abspath(__file__))
pager = os.path.join("src", "wendelin_cy", "_pager")

ext = Extension(
    "wendelin_cy._pager.virtmem",
    sources=[os.path.join(pager, "virtmem.pyx" if cythonize else "virtmem.c")],
    # virtmem.pyx is one translation unit made of the .pxi files it includes:
    # editing any of them rebuilds it
    depends=[os.path.join(pager, "wcy.h"), os.path.join(pager, "posix.pxd")]
    + sorted(glob.glob(os.path.join(pager, "*.pxi"))),
    include_dirs=[pager],
    define_macros=[("_GNU_SOURCE", "1")],
    extra_compile_args=["-O2", "-Wno-unused-function"],
)

ext_modules = [ext]
if cythonize is not None:
    ext_modules = cythonize(
        ext_modules,
        compiler_directives={"language_level": 3, "boundscheck": False,
                             "wraparound": False, "cdivision": True},
        annotate=bool(os.environ.get("WENDELIN_CY_ANNOTATE")),
    )

setup(ext_modules=ext_modules)
