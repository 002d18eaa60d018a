"""wendelin_cy: out-of-core NumPy arrays, persisted in ZODB, paged in userspace.

    from wendelin_cy.bigarray.array_zodb import ZBigArray
    from wendelin_cy.lib.zodb import dbopen, dbclose
"""
from .ram import set_ram_budget, get_ram_budget, pager_stats
from .errors import WendelinError, LoadError

__version__ = "0.1.0.dev0"

__all__ = ["set_ram_budget", "get_ram_budget", "pager_stats", "WendelinError",
           "LoadError", "BigArray", "ZBigArray", "ZBigFile", "dbopen", "dbclose",
           "from_npy", "from_hdf5", "from_zarr", "to_npy", "to_hdf5", "to_zarr", "share"]

_IO = ("from_npy", "from_hdf5", "from_zarr", "to_npy", "to_hdf5", "to_zarr")


def __getattr__(name):       # heavy layers (numpy, ZODB) imported on first use
    if name == "BigArray":
        from .bigarray import BigArray
        return BigArray
    if name == "ZBigArray":
        from .bigarray.array_zodb import ZBigArray
        return ZBigArray
    if name == "ZBigFile":
        from .bigfile.file_zodb import ZBigFile
        return ZBigFile
    if name in ("dbopen", "dbclose"):
        from .lib import zodb
        return getattr(zodb, name)
    if name == "share":         # a view by reference: unpickles to the view
        from .bigarray._viewref import share_view
        return share_view
    if name in _IO:             # wendelin_cy.io: .npy, HDF5, zarr
        from . import io
        return getattr(io, name)
    raise AttributeError("module 'wendelin_cy' has no attribute %r" % name)
