"""Reading databases written by other packages.

``install(db)`` makes a ZODB database give wendelin_cy's classes for the
persistent objects of wendelin.core (``wendelin.bigfile.file_zodb.ZBigFile``,
``ZBlk0`` (and its early name ``ZBlk``), ``ZBlk1``, ``ZData``,
``wendelin.bigarray.array_zodb.ZBigArray``): those of
``wendelin_cy.compat.wendelin_core``, which keep wendelin.core's record
names and state layouts (see its docstring, and docs/compat.md "Databases
written by wendelin.core").  ``wendelin_cy.lib.zodb.dbopen`` does it for
every database it opens; a database opened otherwise (``ZODB.DB(...)``)
needs ``install(db)`` before its first ``db.open()``.

It is the database's class factory that is changed, nothing global: the
same process may open the same database with wendelin.core's ``dbopen`` (or
plain ZODB) and get wendelin.core's classes there.

The class factory is a table of names (as ZODB's own rename of classes):
the classes are imported by name when a record names one, so this module
imports nothing of wendelin_cy.
"""

import importlib

__all__ = ['install', 'WENDELIN_CORE_CLASSES']

# (module, class) as wendelin.core records them -> class of
# wendelin_cy.compat.wendelin_core
WENDELIN_CORE_CLASSES = {
    ('wendelin.bigfile.file_zodb', 'ZBigFile'): 'ZBigFile',
    ('wendelin.bigfile.file_zodb', 'ZBlk0'): 'ZBlk0',
    ('wendelin.bigfile.file_zodb', 'ZBlk'): 'ZBlk0',      # wendelin.core's early name
    ('wendelin.bigfile.file_zodb', 'ZBlk1'): 'ZBlk1',
    ('wendelin.bigfile.file_zodb', 'ZData'): 'ZData',
    ('wendelin.bigarray.array_zodb', 'ZBigArray'): 'ZBigArray',
}
_TARGET = 'wendelin_cy.compat.wendelin_core'


def install(db):
    """Give `db` wendelin_cy's classes for wendelin.core's records (before its
    first ``db.open()``: a connection keeps the class factory it was made
    with).  Idempotent; other names go to the factory db had."""
    prev = db.classFactory
    if getattr(prev, '_wendelin_cy_compat', False):
        return

    def classFactory(connection, modulename, globalname):
        name = WENDELIN_CORE_CLASSES.get((modulename, globalname))
        if name is not None:
            return getattr(importlib.import_module(_TARGET), name)
        return prev(connection, modulename, globalname)

    classFactory._wendelin_cy_compat = True
    db.classFactory = classFactory
    # ZODB.DB() made a connection to create the root, which waits in the
    # pool with a reader on the old factory (ZODB >= 6.3 could take
    # class_factory=, ZODB 5.8 cannot): point it to this one
    for conn in list(getattr(getattr(db, 'pool', None), 'all', ())):
        reader = getattr(conn, '_reader', None)
        if reader is not None and getattr(reader, '_factory', None) is not None:
            reader._factory = classFactory
