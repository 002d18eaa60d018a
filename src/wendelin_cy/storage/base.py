"""What the ZODB binding (wendelin_cy.bigfile.file_zodb) asks of a storage.

One backend object serves every storage of a kind; ``backend_of(conn)``
picks it from the connection's (base) storage.  Every method has a safe
answer that means "not here": the binding then goes through ZODB's public
API, which is what the generic backend answers to everything.

A block record is a ZBlk0 or a ZData: a Persistent whose state is a bytes
object.  The methods that read one are given a *ghost* of an *open*
connection and must leave it a ghost.
"""

__all__ = ['Backend']


class Backend:
    """The interface.  Subclasses: generic.Generic (public API only), and the
    fast backends over it, one module each."""

    #: name, for messages and the warn-once state
    kind = 'abstract'
    #: prefetch() is answered with extent() of each block: the pager's own
    #: thread reads them
    reads_extents = False

    # -- choosing the backend

    def serves(self, storage):
        """Is `storage` (a base storage: ``conn.db().storage``) of this kind?"""
        raise NotImplementedError

    def check_shape(self, storage):
        """None if the internals this backend relies on are as expected (checked
        once per storage class), else why not (it then falls back to generic)."""
        raise NotImplementedError

    # -- loading a block record at the connection's snapshot

    def payload(self, obj):
        """The payload of ghost record `obj` as a bytes-like object, without
        activating it; None: load it through the object."""
        raise NotImplementedError

    def readinto(self, obj, buf):
        """Read ghost record `obj`'s payload straight into `buf` (zeros after
        it) -> its length; None if not done (nothing was written)."""
        raise NotImplementedError

    def extent(self, obj):
        """(fd, offset, nbytes, digest): where ghost record `obj`'s payload
        lies in a file that stays readable, and its recorded digest (None
        for an older record), or None."""
        raise NotImplementedError

    def record_size(self, storage, oid):
        """(nbytes, tid) of the current record of `oid` in (base) storage
        `storage`, read without loading its data; None: not known here (the
        caller loads the record)."""
        raise NotImplementedError

    # -- reading ahead

    def prefetch(self, conn, oids):
        """The records `oids` are about to be loaded through `conn`: start
        loading them.  -> futures of their payloads (for the first of them,
        in order; maybe none)."""
        raise NotImplementedError

    def max_ahead(self, storage, blksize):
        """How many blocks may be asked for ahead at once (None: no limit)."""
        raise NotImplementedError

    # -- blobs

    def blobs_local(self, conn):
        """Does conn's storage keep committed blobs in local files that the
        pager may map?"""
        raise NotImplementedError

    def blob_dir(self, conn):
        """The directory where new blob files for conn's storage are made (the
        commit renames them into place); None: the storage has no blobs."""
        raise NotImplementedError

    def blob_path(self, blob):
        """Filename of Blob `blob`'s data at its connection's snapshot (or of
        its data not committed yet); a ghost stays a ghost.  Never written
        again."""
        raise NotImplementedError

    def new_blob(self, path):
        """A new Blob whose data is the file `path` (made in blob_dir(), filled
        before the commit ends); None if this cannot be done here."""
        raise NotImplementedError
