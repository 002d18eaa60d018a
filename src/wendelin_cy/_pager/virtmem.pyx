# cython: language_level=3
"""The pager core: userspace virtual memory over fixed-size blocks of a BigFile.

One translation unit; each concept lives in an included file:

  state.pxi      data structures (Region, Page), global state, the lock;
                 the invariants and the lock order
  blocks.pxi     block states (the table of transitions), dirty tracking,
                 writeout of dirty blocks
  mappings.pxi   the address space: regions, staging slots and their pool
  scratch.pxi    the scratch file that spilled dirty blocks are parked in
  reclaim.pxi    the RAM budget: CLOCK over resident blocks, reclaim
  load.pxi       loading a block: staging, loadblk, HOLE, MapFile, mapping
                 local files from the page cache
  readahead.pxi  sequential scans: prefetch(), the readahead thread
  fault.pxi      the SIGSEGV handler and pager_access, the fault path
  memutil.pxi    GIL-free byte helpers for the storage layers
  api.pxi        BigFile, BigFileH, VMA
  control.pxi    the budget and other knobs, stats()

The fault path (fault.pxi, then load.pxi):
  on_sigsegv     address -> region, else chain to the previous handler
  pager_access   by block state: LOADED -> access_loaded (protection, dirty);
                 LOADING -> wait for its loader; absent or SPILLED -> load:
  load_begin     (locked) become the loader, take a staging slot
  load_fill      (unlocked) fill it;  load_finish (locked) mremap it into place
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
import logging as _logging
import traceback as _traceback

cdef extern from "Python.h":
    ctypedef struct PyThreadState:
        pass
    int PyGILState_Check() nogil
    PyThreadState* PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState*) nogil
    void PyErr_SetInterrupt()

include "state.pxi"
include "blocks.pxi"
include "mappings.pxi"
include "scratch.pxi"
include "reclaim.pxi"
include "load.pxi"
include "readahead.pxi"
include "fault.pxi"
include "memutil.pxi"
include "api.pxi"
include "control.pxi"

# module init: the lock, fork safety, the handler
pthread_mutex_init(&g_lock, NULL)
pthread_cond_init(&g_cond, NULL)
pthread_cond_init(&g_ra_cond, NULL)
pthread_atfork(atfork_prepare, atfork_parent, atfork_child)
install_handler()
