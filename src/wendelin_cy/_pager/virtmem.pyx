# cython: language_level=3
"""The pager core: userspace virtual memory over fixed-size blocks of a BigFile.

Invariants (all under ``g_lock`` unless said otherwise)
-------------------------------------------------------
* Every open file handle (BigFileH) owns one *region*: an anonymous address range
  reserved PROT_NONE, 2 MiB aligned, big enough that the file can grow in place.
  Block ``blk`` of a handle lives at ``base + blk*blksize`` and nowhere else, so all
  windows (VMA objects, ndarray views) of one handle share memory.
* A block has at most one ``Page``.  Its state is LOADING (a thread is filling a
  private staging mapping), LOADED (mapped at its address) or SPILLED (dirty data
  parked in the scratch file to respect the budget).  No Page means "not in RAM".
* A LOADED page's protection says what the next access costs: PROT_NONE after the
  CLOCK hand demoted it (one soft fault marks it referenced again), PROT_READ when
  clean (or dirty while being written out), PROT_READ|PROT_WRITE when dirty.
* Blocks appear at their address only complete: they are loaded into a staging
  mapping and moved into place with one ``mremap(MREMAP_FIXED)``, so no thread can
  observe a half-loaded block.
* ``g_resident + g_pool_bytes`` stays within ``g_budget`` except when everything
  resident is pinned or loading; then the overshoot is counted in the stats.

Lock order: the GIL before ``g_lock``, everywhere.  Python code is never run while
``g_lock`` is held: a Python callback could fault on mapped memory and re-enter.
A fault that happens while this thread holds ``g_lock`` is a bug of the pager and
is passed on to the previous handler (it crashes with a traceback, never hangs).
"""

from libc.stdint cimport uintptr_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free, qsort, abort
from libc.string cimport memset, memcpy
from libc.stdio cimport fprintf, stderr, fflush
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.exc cimport PyErr_Fetch, PyErr_Restore
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from .posix cimport *
cimport cython

import os as _os
import weakref as _weakref
import sys as _sys
import time as _time
import traceback as _traceback

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    int PyGILState_Check() nogil
    PyThreadState* PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState*) nogil
    void PyErr_SetInterrupt()

include "state.pxi"
include "mappings.pxi"
include "blocks.pxi"
include "scratch.pxi"
include "reclaim.pxi"
include "load.pxi"
include "readahead.pxi"
include "fault.pxi"
include "api.pxi"
include "control.pxi"


pthread_mutex_init(&g_lock, NULL)
pthread_cond_init(&g_cond, NULL)
pthread_cond_init(&g_ra_cond, NULL)
pthread_atfork(atfork_prepare, atfork_parent, atfork_child)
install_handler()
