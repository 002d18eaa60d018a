"""Helpers shared by the tests of the ZODB binding (tests/test_zodb_*.py)."""

import os
import subprocess
import sys
import textwrap

import transaction
import ZODB

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')


def env_with_src(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = SRC + (os.pathsep + env['PYTHONPATH']
                               if env.get('PYTHONPATH') else '')
    env.update(extra)
    return env


def run_py(code, cwd, timeout=300, **extra_env):
    """Run `code` in a fresh python process; return its stdout (checked)."""
    p = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd,
                       env=env_with_src(**extra_env), capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError('subprocess failed (rc=%d)\n--- stdout\n%s\n--- stderr\n%s'
                             % (p.returncode, p.stdout, p.stderr))
    return p.stdout


class Conn:
    """One connection with its own transaction manager."""

    def __init__(self, db):
        self.tm = transaction.TransactionManager()
        self.conn = db.open(self.tm)
        self.root = self.conn.root()

    def commit(self):
        self.tm.commit()

    def abort(self):
        self.tm.abort()

    def close(self):
        from wendelin_cy.bigfile.file_zodb import _close_handles_of
        _close_handles_of(self.conn)
        self.tm.abort()
        self.conn.close()


def mapping_db(blob_dir=None):
    from ZODB.MappingStorage import MappingStorage
    st = MappingStorage()
    if blob_dir is not None:
        from ZODB.blob import BlobStorage
        st = BlobStorage(blob_dir, st)
    return ZODB.DB(st)


def file_db(path, blobs=False):
    """A FileStorage; blobs=True: with its blob directory, as dbopen opens it."""
    from ZODB.FileStorage import FileStorage
    return ZODB.DB(FileStorage(path, blob_dir=path + '.blobs' if blobs else None))
