"""Assertions of wendelin.core's tests that state a wendelin.core bug.

run_wendelin_core_tests.sh replaces each of these lines (matched exactly,
indentation aside) in the temporary copy of the tests by the assertion of
what wendelin_cy does instead, so that the rest of the test still runs and
must pass.  A line that is not found fails the run: a new wendelin.core
revision that changed it must be looked at again.  Each one is explained in
docs/compat.md ("wendelin.core bugs"), with the test's name.

    python rewrites.py TREE      rewrite the copies under TREE
"""
import sys

# (file, line in wendelin.core's test, line asserting wendelin_cy's behaviour,
#  why wendelin.core's is a bug)
REWRITES = [
    ('bigarray/tests/test_basic.py',
     'assert len(B)       == 3',
     'assert len(B) == 10 == len(B[...]) == len(list(B))',
     "len() of an F-order BigArray is the length of its last axis in "
     "wendelin.core, while indexing and iteration (B[i], list(B)) and every "
     "view (len(B[...]) == 10) go along axis 0: len() disagrees with the "
     "array's own items; numpy's len() is shape[0] whatever the order"),
    ('bigarray/tests/test_basic.py',
     'with raises(TypeError): A[[0,1,2,3,4]]',
     'assert array_equal(A[[0,1,2,3,4]], A[0:5]) and A[[0,1,2,3,4]].base is None',
     "an integer list is a valid numpy index (advanced indexing, a copy); "
     "wendelin.core refuses it with TypeError although a numpy array index "
     "of the same values is numpy semantics; wendelin_cy returns numpy's "
     "copy, mapping only the blocks the items are in"),
]


def main(tree):
    for path, old, new, _why in REWRITES:
        fn = '%s/%s' % (tree, path)
        with open(fn) as f:
            lines = f.read().split('\n')
        hits = [i for i, l in enumerate(lines) if l.strip() == old]
        if len(hits) != 1:
            sys.exit('rewrites.py: %s: expected the line %r once, found it %d times'
                     % (path, old, len(hits)))
        i = hits[0]
        indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = indent + new + '   # wendelin_cy: see docs/compat.md'
        with open(fn, 'w') as f:
            f.write('\n'.join(lines))


if __name__ == '__main__':
    main(sys.argv[1])
