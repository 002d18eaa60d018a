"""The layout of the package (docs/design.md, "The layout"): modules small
enough to read, no import cycle, and each layer importing only the layers
below it.  Read from the sources (Python with ast, Cython's ``cimport`` /
``import`` / ``include`` lines with a regular expression), imports inside
functions included: a cycle hidden in a function is still a cycle."""

import ast
import pathlib
import re

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / 'src' / 'wendelin_cy'
ROOT = 'wendelin_cy'
MAX_LINES = 900

# layer (a module prefix) -> prefixes it must not import
FORBIDDEN = {
    'wendelin_cy._pager': ('ZODB', 'ZEO', 'persistent', 'transaction', 'relstorage',
                           'neo', 'wendelin_cy.bigfile', 'wendelin_cy.bigarray',
                           'wendelin_cy.storage', 'wendelin_cy.lib', 'wendelin_cy.ml'),
    'wendelin_cy.storage': ('wendelin_cy.bigfile', 'wendelin_cy.bigarray',
                            'wendelin_cy.ml', 'wendelin_cy.demo', 'wendelin_cy.cli'),
    'wendelin_cy.bigfile': ('wendelin_cy.bigarray', 'wendelin_cy.ml',
                            'wendelin_cy.demo', 'wendelin_cy.cli'),
    'wendelin_cy.bigarray': ('wendelin_cy.ml', 'wendelin_cy.demo', 'wendelin_cy.cli'),
    'wendelin_cy.ml': ('wendelin_cy.demo', 'wendelin_cy.cli'),
}


def _sources():
    return sorted(p for p in PKG.rglob('*')
                  if p.suffix in ('.py', '.pyx', '.pxi', '.pxd') and p.is_file())


def _modname(path):
    rel = path.relative_to(PKG.parent).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _is_module(name):
    if not name.startswith(ROOT):
        return False
    p = PKG.parent.joinpath(*name.split('.'))
    return (p / '__init__.py').exists() or any(
        p.with_suffix(s).exists() for s in ('.py', '.pyx'))


def _resolve(mod, is_pkg, level, name):
    if not level:
        return name
    base = mod.split('.')
    if not is_pkg:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return '.'.join(base + ([name] if name else []))


def _py_imports(path, mod):
    is_pkg = path.name == '__init__.py'
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_pkg, node.level, node.module)
            subs = {base + '.' + a.name for a in node.names}
            mods = {s for s in subs if _is_module(s)}
            out.update(mods)        # `from pkg import module`: that module
            if len(mods) < len(subs):
                out.add(base)       # names defined by base itself
    return out


_CY = re.compile(r'^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s|c?import\s+([\w.]+))', re.M)


def _cy_imports(path, mod):
    out = set()
    for m in _CY.finditer(path.read_text()):
        name = m.group(1) or m.group(2)
        level = len(name) - len(name.lstrip('.'))
        out.add(_resolve(mod, False, level, name.lstrip('.')) if level else name)
    return out


def _graph():
    g = {}
    for p in _sources():
        if p.suffix == '.py':
            mod = _modname(p)
            g.setdefault(mod, set()).update(_py_imports(p, mod))
        else:   # .pxi / .pxd / .pyx: one translation unit, virtmem
            mod = _modname(p.parent / 'virtmem.pyx') if p.suffix == '.pxi' else _modname(p)
            g.setdefault(mod, set()).update(_cy_imports(p, mod))
    return g


def _internal(g):
    """The graph between modules of the package (an import of a module also
    counts for the package that holds it only through that module)."""
    return {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}


def test_no_module_over_max_lines():
    big = {str(p.relative_to(PKG)): n for p in _sources()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, 'modules over %d lines: %s' % (MAX_LINES, big)


def _cycles(g):
    """Every strongly connected component with more than one module."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(_internal(_graph())) == []


def test_cycle_finder_finds_a_cycle():
    # the finder itself: a cycle through a function-level import is found
    g = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert _cycles(g) == [['a', 'b', 'c']]


@pytest.mark.parametrize('layer', sorted(FORBIDDEN))
def test_layer_imports_only_layers_below(layer):
    bad = []
    for mod, deps in _graph().items():
        if mod != layer and not mod.startswith(layer + '.'):
            continue
        for d in sorted(deps):
            if any(d == f or d.startswith(f + '.') for f in FORBIDDEN[layer]):
                bad.append('%s imports %s' % (mod, d))
    assert not bad, bad


def test_graph_sees_function_level_and_cython_imports():
    g = _graph()
    # ml imports the sharing module at module level, array_zodb the ZBigFile
    assert 'wendelin_cy.bigarray._viewref' in g['wendelin_cy.ml']
    assert 'wendelin_cy.bigfile.file_zodb' in g['wendelin_cy.bigarray.array_zodb']
    # Cython: virtmem (with its .pxi files) cimports libc / posix
    assert any(d.startswith('libc') or d.startswith('posix') for d in g['wendelin_cy._pager.virtmem'])
    # a function-level import: ml's batch sizes ask the RAM budget
    assert 'wendelin_cy.ram' in g['wendelin_cy.ml']
    # `from . import mvcc` is an import of the module, not of the package
    assert 'wendelin_cy.storage.mvcc' in g['wendelin_cy.storage.zeo']
    assert 'wendelin_cy.storage' not in g['wendelin_cy.storage.zeo']
