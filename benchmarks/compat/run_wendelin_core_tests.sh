#!/usr/bin/env bash
# Run wendelin.core's own test suite against wendelin_cy (issue 17, part 2).
#
#   benchmarks/compat/run_wendelin_core_tests.sh WENDELIN_CORE_CHECKOUT [pytest args...]
#
# WENDELIN_CORE_CHECKOUT is a checkout of wendelin.core or a bare git dir of
# it (its HEAD is used; WENDELIN_CORE_REV=<rev> picks another commit).  Its
# bigarray/tests/, bigfile/tests/, lib/tests/ and the test helper
# lib/testing.py are copied to a temporary directory (never into this
# project: wendelin.core is GPL), "wendelin." is renamed "wendelin_cy." in
# them, and they are run with pytest against the installed wendelin_cy.
# The copied files are made importable as wendelin_cy.<pkg>.tests.<mod>
# (their cross-imports need that) by a pytest plugin that adds the temporary
# directories to the __path__ of wendelin_cy.bigarray / .bigfile / .lib; the
# project's own package is not modified.
#
# Tests that cannot apply are deselected from deselect.txt beside this
# script (one "file::test  reason" a line; "n/a:" cannot apply, "bug:"
# asserts a wendelin.core bug).  KEEP=1 keeps the temp dir.
# Use --tb=native (pytest's default traceback crashes on these files) and,
# with pytest-timeout, e.g. -p timeout --timeout=120 --timeout-method=thread.
# Needs pygolang (wendelin.core's tests use golang.func/defer/chan) and six.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="${1:?usage: $0 WENDELIN_CORE_CHECKOUT [pytest args...]}"
shift
rev="${WENDELIN_CORE_REV:-HEAD}"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/wendelin-core-tests.XXXXXX")"
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$tmp"' EXIT; else echo "temp dir: $tmp" >&2; fi
tree="$tmp/wendelin_cy"
mkdir -p "$tree"

paths="bigarray/tests bigfile/tests lib/tests lib/testing.py"
if [ -d "$src/.git" ] || [ -f "$src/bigfile/file_zodb.py" ]; then
    # a checkout (work tree): copy the files as they are
    for p in $paths; do
        mkdir -p "$tree/$(dirname "$p")"
        cp -r "$src/$p" "$tree/$p"
    done
    commit="$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)"
else
    # a bare git dir
    git --git-dir="$src" archive "$rev" $paths | tar -x -C "$tree"
    commit="$(git --git-dir="$src" rev-parse "$rev")"
fi
echo "wendelin.core commit: $commit" >&2

# the packages exist in wendelin_cy: these files are never imported, they
# only let pytest name the test modules wendelin_cy.<pkg>.tests.<mod>
touch "$tree/__init__.py" "$tree/bigarray/__init__.py" "$tree/bigfile/__init__.py" "$tree/lib/__init__.py"
find "$tree" -name '*.py' -print0 | xargs -0 sed -i -E 's/\bwendelin\.(bigarray|bigfile|lib)\b/wendelin_cy.\1/g'
# wendelin.core's lib/testing.py imports pkg_resources (setuptools, gone from
# recent ones) only to tell the ZEO version: without it, a stand-in from
# importlib.metadata (the plugin below) answers working_set.find / parse_version
sed -i -E 's/^import pkg_resources$/try: import pkg_resources\nexcept ImportError: from wct_plugin import pkg_resources_shim as pkg_resources/' \
    "$tree/lib/testing.py"

# numpy 2 moved DummyArray (lib/tests/test_xnumpy.py imports it) out of
# numpy.lib.stride_tricks: the only numpy-1 spelling rewritten (docs/compat.md)
sed -i -E 's/^from numpy\.lib\.stride_tricks import DummyArray$/try: from numpy.lib.stride_tricks import DummyArray\nexcept ImportError: from numpy.lib._stride_tricks_impl import DummyArray/' \
    "$tree/lib/tests/test_xnumpy.py"

# the lines that assert wendelin.core bugs (docs/compat.md) are replaced by
# what wendelin_cy does, so the rest of their tests runs (rewrites.py)
python "$here/rewrites.py" "$tree"

mkdir -p "$tmp/plugin"
cat > "$tmp/plugin/wct_plugin.py" <<PY
# loaded with -p before collection: makes the copied tests importable as
# wendelin_cy.<pkg>.tests and resets transaction synchronizers per test
# (as wendelin.core's own conftest.py does)
import pytest, transaction
import wendelin_cy.bigarray, wendelin_cy.bigfile, wendelin_cy.lib
for _m, _d in ((wendelin_cy.bigarray, "bigarray"), (wendelin_cy.bigfile, "bigfile"), (wendelin_cy.lib, "lib")):
    _m.__path__.append("$tree/" + _d)

class pkg_resources_shim:
    class _Dist:
        def __init__(self, v):
            from packaging.version import Version
            self.parsed_version = Version(v)
    class Requirement:
        @staticmethod
        def parse(name):
            return name
    class working_set:
        @staticmethod
        def find(name):
            from importlib import metadata
            try:
                return pkg_resources_shim._Dist(metadata.version(name))
            except metadata.PackageNotFoundError:
                return None
    @staticmethod
    def parse_version(v):
        from packaging.version import Version
        return Version(v)

@pytest.fixture(autouse=True)
def transaction_reset():
    transaction.manager.clearSynchs()
    yield
PY
printf '[pytest]\naddopts = -p no:cacheprovider\n' > "$tmp/pytest.ini"

deselect=()
while read -r t _; do
    case "$t" in ''|'#'*) continue ;; esac
    deselect+=(--deselect "wendelin_cy/$t")   # node ids are relative to --rootdir $tmp
done < "$here/deselect.txt"

# run from an empty directory: "python -m pytest" puts its cwd first on
# sys.path, and $tmp/wendelin_cy must not shadow the real package
mkdir -p "$tmp/run" && cd "$tmp/run"
PYTHONPATH="$tmp/plugin${PYTHONPATH:+:$PYTHONPATH}" \
    python -m pytest -c "$tmp/pytest.ini" --rootdir "$tmp" -p wct_plugin --continue-on-collection-errors -rfE "${deselect[@]}" \
    "$tree/bigarray/tests" "$tree/bigfile/tests" "$tree/lib/tests" "$@"
