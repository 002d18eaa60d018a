"""Sphinx configuration: the API reference (autodoc) and the user guide
(the Markdown pages of this folder, through myst-parser).

    pip install -e '.[docs]'
    sphinx-build -W -b html docs docs/_build/html
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), 'src')
# a tree built in place (python setup.py build_ext --inplace) is documented
# from src/; otherwise the installed package (pip install -e .) is imported
_PAGER = os.path.join(SRC, 'wendelin_cy', '_pager')
if any(n.startswith('virtmem') and n.endswith('.so') for n in os.listdir(_PAGER)):
    sys.path.insert(0, SRC)

import wendelin_cy  # noqa: E402

project = 'wendelin_cy'
author = 'wendelin_cy developers'
copyright = 'wendelin_cy developers'
version = release = wendelin_cy.__version__

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
    'myst_parser',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store']

autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
napoleon_numpy_docstring = True
napoleon_google_docstring = False

myst_heading_anchors = 3
# links of the guide pages to files of the repository (src/..., tests/...)
# are not pages of this site
suppress_warnings = ['myst.xref_missing']

html_theme = 'alabaster'
html_static_path: list = []
autodoc_type_aliases = {'ArrayLike': 'numpy.typing.ArrayLike',
                        'DTypeLike': 'numpy.typing.DTypeLike'}
