"""A pytest plugin (``-p _fail_on_fallback``): the run fails if a storage
fast path fell back to the generic backend (a warning on the
``wendelin_cy.storage`` logger), e.g. in a run with every fast path off,
where none may be tried."""

import logging

import pytest

_seen = []


class _Catch(logging.Handler):
    def emit(self, record):
        if 'fast path is off' in record.getMessage():
            _seen.append(record.getMessage())


def pytest_configure(config):
    logging.getLogger('wendelin_cy.storage').addHandler(_Catch(logging.WARNING))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if _seen:
        print('\n_fail_on_fallback: a fast path fell back: %s' % '; '.join(_seen))
        session.exitstatus = 1
