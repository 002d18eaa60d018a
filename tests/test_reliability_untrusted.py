"""Reliability 2 (issue 19): dbopen(uri, trusted=False) for databases from
elsewhere.  Records may only name allow-listed classes: a record whose
pickle would call os.system is refused before anything runs; the database
is read-only; a normal wendelin_cy database reads as usual."""
import os

import numpy as np
import pytest
import transaction
from persistent import Persistent
from persistent.mapping import PersistentMapping

from wendelin_cy.bigarray.array_zodb import ZBigArray
from wendelin_cy.lib.untrusted import UntrustedClassError
from wendelin_cy.lib.zodb import dbclose, dbopen


class _System:
    """Pickles as a call of os.system(cmd)."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class Holder(Persistent):
    """A persistent object whose state holds such a call."""

    def __init__(self, cmd):
        self.payload = _System(cmd)


def _evil_db(tmp_path, where):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'data.fs')
    root = dbopen(path)
    root['A'] = A = ZBigArray((1000,), np.int64)
    A[:] = np.arange(1000)
    root['m'] = PersistentMapping(x=1)
    if where == 'state':
        root['sub'] = PersistentMapping(evil=Holder('touch %s' % marker))
    else:                       # in the root mapping's own state
        root['evil'] = _System('touch %s' % marker)
    transaction.commit()
    dbclose(root)
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize('where', ['state', 'root'])
def test_os_system_in_a_record_is_refused_before_it_runs(tmp_path, where):
    path, marker = _evil_db(tmp_path, where)
    allow = ['%s.Holder' % __name__]        # even with the holder's class allowed
    with pytest.raises(UntrustedClassError) as ei:
        root = dbopen(path, trusted=False, allow=allow)
        try:
            root['sub']['evil'].payload
        finally:
            dbclose(root)
    assert 'system' in str(ei.value) and 'allow-list' in str(ei.value)
    assert not marker.exists()
    # the control: trusted, the same record does run os.system
    root = dbopen(path)
    try:
        root['evil'] if where == 'root' else root['sub']['evil'].payload
    finally:
        transaction.abort()
        dbclose(root)
    assert marker.exists()


def test_class_not_on_the_list_is_refused(tmp_path):
    path, marker = _evil_db(tmp_path, 'state')
    root = dbopen(path, trusted=False)
    try:
        assert (root['A'][:] == np.arange(1000)).all()
        assert root['m']['x'] == 1
        with pytest.raises(UntrustedClassError) as ei:
            root['sub']['evil']
        assert 'Holder' in str(ei.value)
    finally:
        transaction.abort()
        dbclose(root)
    assert not marker.exists()


def test_untrusted_is_read_only(tmp_path):
    from ZODB.POSException import ReadOnlyError
    path, _ = _evil_db(tmp_path, 'state')
    root = dbopen(path, trusted=False)
    try:
        root['A'][:10] = 7
        with pytest.raises(ReadOnlyError):
            transaction.commit()
    finally:
        transaction.abort()
        dbclose(root)
    root = dbopen(path)
    try:
        assert root['A'][:10].tolist() == list(range(10))
    finally:
        dbclose(root)


def test_untrusted_needs_an_existing_database(tmp_path):
    with pytest.raises(ValueError):
        dbopen(str(tmp_path / 'missing.fs'), trusted=False)
    with pytest.raises(ValueError):
        dbopen(str(tmp_path / 'x.fs'), allow=['a.b'])
