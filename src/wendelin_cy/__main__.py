"""python -m wendelin_cy: the command line (``wendelin_cy.cli``)."""
import sys

from wendelin_cy.cli import main

sys.exit(main())
