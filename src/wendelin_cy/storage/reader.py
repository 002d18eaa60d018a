"""Reader threads: records loaded ahead of a sequential scan, at the scanning
connection's snapshot, for the storages whose backend can load from another
thread (``thread_snapshot`` / ``thread_load``: memory and relstorage).

Two threads (``WORKERS``), so that one loads while the other waits for the
database or copies a record into its block (figures: docs/benchmarks.md).
``ask`` returns a Future per record, whose result is the block's payload (a
memoryview into the record) or None.  The pager places each result as the
block's page when it completes, in this thread (see BigFile.prefetch): the
scan then finds the block in RAM, while the next record is loading.  A fault
that comes first ``take``s the future and waits for it instead of loading
the record a second time.  Only requests in flight are kept (at most
``MAX``): a finished one belongs to the pager.
"""

import functools
import os
import threading
from concurrent.futures import wait as _futures_wait

from .record import payload_view
from .switch import fast_paths, fell_back

__all__ = ['READER']


class _Reader:

    MAX = 32
    WORKERS = 2

    def __init__(self):
        self._kinds = []            # backends that load in threads
        self._after_fork_in_child()
        self.hits = 0               # records handed over to a load

    def register(self, backend):
        """`backend` has thread_snapshot(inst) -> snapshot or None and
        thread_load(storage, snapshot, oid) -> record or None."""
        self._kinds.append(backend)

    def _after_fork_in_child(self):
        # the parent's thread and requests are not ours; its lock may have
        # been held by a thread that is gone
        self._lock = threading.Lock()
        self._futures = {}          # (id(inst), snapshot, oid) -> Future, in flight
        self._pool = None

    def _backend(self, base):
        if not fast_paths():
            return None
        for be in self._kinds:
            if be.serves(base):
                return None if fell_back(be.kind) else be
        return None

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.WORKERS, thread_name_prefix='wendelin_cy-readahead')
        return self._pool

    def ask(self, inst, base, oids):
        """Futures for the payloads of records `oids` at the snapshot of
        connection storage instance `inst` (over base storage `base`); fewer
        (maybe none) if this storage is not read in a thread, or enough are
        in flight."""
        be = self._backend(base)
        snap = be.thread_snapshot(inst) if be is not None else None
        if snap is None:
            return []
        out, new = [], []
        with self._lock:
            pool = self._executor()
            for oid in oids:
                key = (id(inst), snap, oid)
                fut = self._futures.get(key)
                if fut is None:
                    if len(self._futures) >= self.MAX:
                        break
                    fut = pool.submit(self._load, be, base, snap, oid)
                    self._futures[key] = fut
                    new.append((key, fut))
                out.append(fut)
        for key, fut in new:        # (called at once if done: not under _lock)
            fut.add_done_callback(functools.partial(self._done, key))
        return out

    def _done(self, key, fut):
        with self._lock:
            if self._futures.get(key) is fut:
                del self._futures[key]

    @staticmethod
    def _load(be, base, snap, oid):
        """(Reader thread.)  The payload of record oid at snapshot snap, or None."""
        try:
            p = be.thread_load(base, snap, oid)
            return None if p is None else payload_view(p, base)
        except Exception:
            return None         # the fault's own load will say what is wrong

    def forget(self, inst):
        """Cancel the reads for `inst` not started yet (its handles closed)."""
        with self._lock:
            keys = [k for k in self._futures if k[0] == id(inst)]
            futs = [self._futures.pop(k) for k in keys]
        for fut in futs:
            fut.cancel()

    def take(self, inst, base, oid):
        """The payload of record oid if it is being read ahead for `inst`'s
        snapshot (waiting for it, GIL released), else None."""
        if not self._futures:
            return None
        be = self._backend(base)
        if be is None:
            return None
        key = (id(inst), be.thread_snapshot(inst), oid)
        with self._lock:
            fut = self._futures.pop(key, None)
        if fut is None:
            return None
        _futures_wait([fut])            # (GIL released)
        if fut.cancelled() or fut.exception() is not None:
            return None
        r = fut.result()
        if r is not None:
            self.hits += 1
        return r


READER = _Reader()
os.register_at_fork(after_in_child=READER._after_fork_in_child)
