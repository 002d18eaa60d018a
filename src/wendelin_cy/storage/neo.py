"""NEO (``neo.client.Storage``).

Nothing NEO-specific: records are loaded at the connection's snapshot and
cut out of their pickles (mvcc.Records), as for every fast backend.  NEO's
client has no ``prefetch``, so nothing is asked for ahead (the pager's
readahead still maps blocks as faults reach them).
"""

from . import mvcc

__all__ = ['NEOBackend']


class NEOBackend(mvcc.Records):
    kind = 'NEO'

    def serves(self, storage):
        return (type(storage).__module__ or '').startswith('neo.client')
