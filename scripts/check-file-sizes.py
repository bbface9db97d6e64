#!/usr/bin/env python3
"""Check that no Rust source file is longer than 600 lines.

Why: the developer guide caps a source file at about 600 lines (issue 26);
past that a file usually holds more than one responsibility, is hard to
review and collides in every parallel change. A cap only holds if CI
enforces it, so `.ci/run` calls this right after the layer check.

What it reads: every `*.rs` file under `src/`, `tests/`, `pbx-sim/` and
`benches/` (those that exist), skipping `target/` directories. Lines are
counted as `wc -l` does, plus a last line without a newline.

It fails (exit 1) naming each file over the limit with its count and the
way out (split it by responsibility), and each ALLOWED entry that no
longer needs its exception (so the list cannot go stale). `--root DIR`
checks another tree; `--self-test` checks the rules on a throw-away tree. Python 3 standard library only.
"""

import os
import sys

MAX_LINES = 600

# Files that truly must be longer, relative to the root, with the reason.
# Keep it empty; an entry here needs a reason a reviewer accepts.
ALLOWED = {}

DIRS = ["src", "tests", "pbx-sim", "benches"]


def line_count(path):
    with open(path, "rb") as f:
        data = f.read()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def rust_files(root):
    for top in DIRS:
        base = os.path.join(root, top)
        if not os.path.isdir(base):
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "target")
            for name in sorted(filenames):
                if name.endswith(".rs"):
                    yield os.path.join(dirpath, name)


def check(root, allowed):
    """(files checked, problems) for the tree at `root`."""
    problems = []
    checked = 0
    over_allowed = set()
    for path in sorted(rust_files(root)):
        checked += 1
        rel = os.path.relpath(path, root)
        n = line_count(path)
        if n <= MAX_LINES:
            continue
        if rel in allowed:
            over_allowed.add(rel)
            continue
        problems.append(
            f"{rel}: {n} lines, over the limit of {MAX_LINES}; split it by "
            f"responsibility into files of at most {MAX_LINES} lines"
        )
    for rel in sorted(set(allowed) - over_allowed):
        problems.append(
            f"{rel}: in ALLOWED of scripts/check-file-sizes.py but missing or "
            f"within {MAX_LINES} lines; remove the entry"
        )
    return checked, problems


def self_test():
    """The rules on a throw-away tree: the limit itself, the last line
    without a newline, skipped places, and a stale allow-list entry."""
    import tempfile

    def write(root, rel, text):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    with tempfile.TemporaryDirectory() as root:
        write(root, "src/at_limit.rs", "x\n" * MAX_LINES)
        write(root, "pbx-sim/src/over.rs", "x\n" * MAX_LINES + "y")
        write(root, "tests/e2e/long.rs", "x\n" * (MAX_LINES + 5))
        write(root, "src/target/skipped.rs", "x\n" * 1000)
        write(root, "fuzz/not_scanned.rs", "x\n" * 1000)
        write(root, "src/notes.txt", "x\n" * 1000)
        checked, problems = check(root, {})
        assert checked == 3, checked
        assert len(problems) == 2, problems
        assert problems[0].startswith("pbx-sim/src/over.rs: 601 lines"), problems
        assert problems[1].startswith("tests/e2e/long.rs: 605 lines"), problems
        _, problems = check(root, {"pbx-sim/src/over.rs": "r", "tests/e2e/long.rs": "r"})
        assert problems == [], problems
        _, problems = check(root, {"src/at_limit.rs": "r", "pbx-sim/src/over.rs": "r",
                                   "tests/e2e/long.rs": "r"})
        assert len(problems) == 1 and problems[0].startswith("src/at_limit.rs: in ALLOWED"), problems
    print("check-file-sizes: self-test ok")


def main(argv):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if len(argv) == 2 and argv[1] == "--self-test":
        self_test()
        return 0
    if len(argv) == 3 and argv[1] == "--root":
        root = argv[2]
    elif len(argv) != 1:
        print(f"usage: {argv[0]} [--root DIR | --self-test]", file=sys.stderr)
        return 2
    checked, problems = check(os.path.normpath(root), ALLOWED)
    if problems:
        for p in problems:
            print(f"check-file-sizes: {p}")
        print("check-file-sizes: FAILED")
        return 1
    print(f"check-file-sizes: ok ({checked} .rs files, none over {MAX_LINES} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
