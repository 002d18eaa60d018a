"""The process-wide RAM budget of the pager, and its statistics.

The budget bounds the bytes of block data the pager keeps in RAM (resident
blocks, clean or dirty, plus at most two recycled staging blocks).  Before a new
block would exceed it, the CLOCK reclaim evicts least-recently-used clean blocks;
when dirty blocks alone exceed it, the coldest are spilled to a private scratch
file (in ``$WENDELIN_CY_SCRATCH_DIR`` or the temp dir) and read back on access or
at writeout, so one transaction may change more data than RAM.

Default: ``WENDELIN_CY_RAM_BUDGET`` if set (``512M``, ``2G``, ``1.5G``, ``65536``),
else half of the memory available to this process: the smaller of the machine's
``MemAvailable`` and the memory cgroup's limit minus its current usage.
"""
import os
import tempfile

from ._pager import virtmem as _vm
from ._units import parse_size

__all__ = ["set_ram_budget", "get_ram_budget", "pager_stats", "parse_size",
           "default_ram_budget"]

MIN_BUDGET = 1 << 20       # below one MiB the pager could not hold a single block


def _read_int(path):
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        return None
    if v in ("max", ""):
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _cgroup_available():
    """Bytes this process's memory cgroup still allows, or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":          # cgroup v2
            base = "/sys/fs/cgroup" + path
            lim = _read_int(base + "/memory.max")
            use = _read_int(base + "/memory.current")
        elif "memory" in ctrls.split(","):
            base = "/sys/fs/cgroup/memory" + path
            lim = _read_int(base + "/memory.limit_in_bytes")
            use = _read_int(base + "/memory.usage_in_bytes")
        else:
            continue
        if lim is None or lim >= (1 << 60):
            continue
        avail = max(lim - (use or 0), 0)
        best = avail if best is None else min(best, avail)
    return best


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_ram_budget() -> int:
    env = os.environ.get("WENDELIN_CY_RAM_BUDGET")
    if env:
        return _check(parse_size(env), "WENDELIN_CY_RAM_BUDGET")
    avail = [x for x in (_meminfo_available(), _cgroup_available()) if x]
    if not avail:
        return 1 << 30
    return max(min(avail) // 2, 64 << 20)


def _check(nbytes, what="budget"):
    if nbytes < MIN_BUDGET:
        raise ValueError("%s must be at least %d bytes (1 MiB), got %d"
                         % (what, MIN_BUDGET, nbytes))
    return nbytes


def set_ram_budget(nbytes: int | str) -> None:
    """Set the RAM budget for block data, in bytes or as '512M'/'2G'.

    Lowering it reclaims clean blocks (and spills dirty ones) at once."""
    _vm.set_budget(_check(parse_size(nbytes)))


def get_ram_budget() -> int:
    return _vm.get_budget()


def pager_stats() -> dict[str, int]:
    """A dict of the pager's state and counters:

    budget, resident, dirty, spilled, pool, peak_resident: bytes
      (resident: blocks in RAM; dirty: resident blocks with unsaved changes;
      spilled: dirty blocks parked in the scratch file; pool: recycled staging
      memory, counted within the budget)
    faults: page faults taken in pager memory; soft_faults: those served without
      loading (recency marks, write-enables); loads: blocks loaded;
      evictions: blocks dropped from RAM; writeouts: blocks written out;
      spills/unspills: dirty blocks parked/read back; demotions: CLOCK recency
      marks cleared; overshoots: times the budget could not be kept (everything
      pinned or loading); load_errors; regions: open file handles;
      zerocopy_loads: local-file blocks mapped from the page cache without a
      copy; readahead_blocks: blocks handed to readahead (kernel or
      BigFile.prefetch); fresh_slots: staging blocks that needed new memory (the
      rest reuse evicted memory); pool_fail: failed recycling attempts;
      readahead_loads/hits/dropped/inflight/queued: blocks read ahead into RAM;
      warm_slots: new staging blocks faulted in ahead of a scan by the pager's
      thread; small_page_slots: new staging blocks given small pages because
      huge pages had just been slow to fault in (a VM host taking free memory
      back).
    """
    return _vm.stats()


def _keep_handler_first():
    """faulthandler.enable() called after us would put its SIGSEGV handler in
    front of ours and report every first touch of a block as a crash.  Re-assert
    ours after it: faults that are not the pager's still reach faulthandler."""
    import faulthandler
    orig = faulthandler.enable
    if getattr(orig, "_wendelin_cy", False):
        return

    def enable(*args, **kw):
        r = orig(*args, **kw)
        _vm._ensure_handler()
        return r
    enable._wendelin_cy = True
    enable.__doc__ = orig.__doc__
    faulthandler.enable = enable


def _init():
    _keep_handler_first()
    _vm.set_budget(default_ram_budget())
    _vm.set_scratch_dir(os.environ.get("WENDELIN_CY_SCRATCH_DIR") or tempfile.gettempdir())


_init()
