import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
# a development tree built with `python setup.py build_ext --inplace` is tested
# in place; otherwise the installed package (pip install -e .) is used
_PAGER = os.path.join(SRC, "wendelin_cy", "_pager")
if os.path.isdir(_PAGER) and any(n.startswith("virtmem") and n.endswith(".so")
                                 for n in os.listdir(_PAGER)) and SRC not in sys.path:
    sys.path.insert(0, SRC)


@pytest.fixture(autouse=True)
def _fresh_transaction():
    """Each test starts and ends with no transaction of its thread open: a
    test that fails half way through does not leave its changes to the next."""
    import transaction
    transaction.abort()
    yield
    transaction.abort()


@pytest.fixture
def budget():
    """Set the RAM budget for one test; the old one comes back afterwards."""
    import wendelin_cy
    old = wendelin_cy.get_ram_budget()
    yield wendelin_cy.set_ram_budget
    wendelin_cy.set_ram_budget(old)


# NEO's slow tests (tests/test_net_neo.py, the fault tests): run by .ci/run
# ($WENDELIN_CY_NEO_SLOW=1), skipped with the reason by a plain run
NEO_SLOW_ENV = 'WENDELIN_CY_NEO_SLOW'


def pytest_configure(config):
    config.addinivalue_line('markers', 'neo_slow: slow NEO tests, run when '
                            '$WENDELIN_CY_NEO_SLOW=1 (as .ci/run does)')


def pytest_collection_modifyitems(config, items):
    if os.environ.get(NEO_SLOW_ENV, '') not in ('', '0'):
        return
    skip = pytest.mark.skip(reason='slow NEO test: set %s=1 to run it (.ci/run does)'
                            % NEO_SLOW_ENV)
    for item in items:
        if 'neo_slow' in item.keywords:
            item.add_marker(skip)
