"""Run a pytest test in a child process.

For tests whose failure mode is a crash or a hang: a missed prefault turns a
loadblk error into SIGBUS, and a pager livelock never returns.  In a child,
either becomes an ordinary test failure with the child's output, and the rest
of the session goes on.

    @isolated()
    def test_something():
        ...                         # runs only in the child

The decorated test, in the parent, starts ``python -m pytest FILE::NAME`` with
WENDELIN_CY_TEST_CHILD=1 and fails if the child fails, dies or times out.
Fixtures are given to the test in the child only.
"""
import functools
import inspect
import os
import subprocess
import sys

__all__ = ['IN_CHILD', 'isolated']

IN_CHILD = os.environ.get('WENDELIN_CY_TEST_CHILD') == '1'


def _src_dir():
    # src/wendelin_cy/testing/isolate.py -> src
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(path, name, timeout):
    import pytest
    env = dict(os.environ, WENDELIN_CY_TEST_CHILD='1')
    env['PYTHONPATH'] = _src_dir() + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider',
           '%s::%s' % (path, name)]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ''
        if isinstance(out, bytes):
            out = out.decode(errors='replace')
        pytest.fail('%s did not finish in %d s (hang? livelock?)\n%s'
                    % (name, timeout, out[-4000:]), pytrace=False)
    if r.returncode != 0:
        how = ('killed by signal %d' % -r.returncode if r.returncode < 0
               else 'exit status %d' % r.returncode)
        pytest.fail('%s failed in a child process (%s)\n%s\n%s'
                    % (name, how, r.stdout[-8000:], r.stderr[-4000:]), pytrace=False)


def isolated(timeout=600):
    def deco(fn):
        if IN_CHILD:
            return fn
        path = os.path.abspath(inspect.getsourcefile(fn))

        @functools.wraps(fn)
        def parent(*args, **kw):
            run_child(path, fn.__name__, timeout)
        # the parent needs none of the test's fixtures
        parent.__signature__ = inspect.Signature()
        del parent.__wrapped__
        return parent
    return deco
