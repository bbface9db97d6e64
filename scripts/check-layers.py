#!/usr/bin/env python3
"""Check that src/'s top-level modules import each other one way only.

Why: the layers in ARCHITECTURE.md (transports -> use cases -> scheduler ->
broker -> store / pbx, shared vocabulary below all) are only real if nothing
imports back up; a cycle between top-level modules means two of them can no
longer be understood, tested or replaced apart.

What it reads: every `*.rs` file under `src/` except `src/bin/`, `lib.rs`,
files whose name contains `tests` and out-of-line modules declared under
`#[cfg(test)]`; inline `#[cfg(test)] mod ... { }` blocks are skipped.
Edges come from `crate::X` paths (including `use crate::{X, Y::z}` groups)
and from `super::` paths that climb out of the file's own top-level module.

It fails (exit 1) listing every cycle (for each import inside a strongly
connected component, the shortest cycle through it), every import
that runs up the layer table below, and every top-level module missing from
the table. `--graph` prints the edges. Python 3 standard library only.
"""

import os
import re
import sys

# Top to bottom. A module may import modules in its own layer or below.
LAYERS = [
    ("wiring", ["daemon", "background", "engine", "rotation", "simulation", "migrate_store"]),
    ("transports", ["api"]),
    ("use cases", ["tenants", "onboarding", "access", "audit", "health", "overview", "events", "cluster"]),
    ("scheduler", ["renewal", "replicas"]),
    ("broker", ["broker"]),
    ("store / pbx", ["store", "pbx", "crypto", "statedir"]),
    (
        "shared vocabulary",
        ["domain", "clock", "secret", "config", "logging", "metrics", "policy"],
    ),
]

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip_comments_and_strings(text):
    """Blank out comments, string and char literals (keeping newlines)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 40]) and not (
            i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # char literal ('a', '\n', '\u{..}') vs lifetime ('a)
            m = re.match(r"'(\\.[^']*|[^'\\])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


CFG_TEST_MOD = re.compile(
    r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*([;{])"
)


def remove_test_blocks(code):
    """Drop inline #[cfg(test)] mod blocks; return (code, out-of-line test mods)."""
    test_mods = []
    while True:
        m = CFG_TEST_MOD.search(code)
        if not m:
            return code, test_mods
        if m.group(2) == ";":
            test_mods.append(m.group(1))
            code = code[: m.start()] + code[m.end():]
            continue
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[: m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def module_path(rel):
    """src-relative file path -> module path list, e.g. broker/mod.rs -> [broker]."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def group_heads(code, start):
    """First identifiers of the items in a `{...}` use group starting at start."""
    depth, j, item_start, heads = 0, start, start + 1, []
    while j < len(code):
        ch = code[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                heads.append(code[item_start:j])
                break
        elif ch == "," and depth == 1:
            heads.append(code[item_start:j])
            item_start = j + 1
        j += 1
    out = []
    for h in heads:
        m = re.match(r"\s*(\w+)", h)
        if m:
            out.append(m.group(1))
    return out


def targets(code, modpath):
    """Top-level modules a file's code refers to (outside its own)."""
    found = set()
    for m in re.finditer(r"(?<![\w:$])crate\s*::\s*(\{|\w+)", code):
        if m.group(1) == "{":
            found.update(group_heads(code, m.start(1)))
        else:
            found.add(m.group(1))
    for m in re.finditer(r"(?<![\w:])((?:super\s*::\s*)+)(\{|\w+)", code):
        ups = m.group(1).count("super")
        # the file's own module is modpath; super climbs from there
        base = modpath[: len(modpath) - ups]
        if len(base) > 0:
            continue  # stays inside the same top-level module
        if m.group(2) == "{":
            found.update(group_heads(code, m.start(2)))
        else:
            found.add(m.group(2))
    return found


def collect():
    files = {}
    excluded = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        if rel_dir.split(os.sep)[0] == "bin":
            dirnames[:] = []
            continue
        for f in filenames:
            if not f.endswith(".rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, f))
            if rel == "lib.rs" or "tests" in f:
                continue
            with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                files[rel] = fh.read()
    parsed = {}
    for rel, text in files.items():
        code, test_mods = remove_test_blocks(strip_comments_and_strings(text))
        mp = module_path(rel)
        for name in test_mods:
            # a child of this module lives in <dir-of-module>/<name>.rs or /mod.rs
            d = os.path.join(*mp) if mp else ""
            excluded.add(os.path.normpath(os.path.join(d, name + ".rs")))
            excluded.add(os.path.normpath(os.path.join(d, name, "mod.rs")))
        parsed[rel] = (code, mp)
    # a test module's own children are test code too
    changed = True
    while changed:
        changed = False
        for rel in parsed:
            if rel in excluded:
                continue
            mp = module_path(rel)
            for i in range(1, len(mp)):
                anc = os.path.join(*mp[:i])
                if anc + ".rs" in excluded or os.path.join(anc, "mod.rs") in excluded:
                    excluded.add(rel)
                    changed = True
                    break
    return {rel: v for rel, v in parsed.items() if rel not in excluded}


def build_graph():
    top = set()
    for name in os.listdir(ROOT):
        if name in ("bin", "lib.rs"):
            continue
        if name.endswith(".rs"):
            top.add(name[:-3])
        elif os.path.isdir(os.path.join(ROOT, name)):
            top.add(name)
    edges = {}  # (from, to) -> example file
    for rel, (code, mp) in sorted(collect().items()):
        src = mp[0]
        for t in sorted(targets(code, mp)):
            if t != src and t in top:
                edges.setdefault((src, t), rel)
    return top, edges


def sccs(nodes, adj):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj.get(v, ())):
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
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def shortest_path(src, dst, members, adj):
    """Shortest path src -> dst inside members (both ends included)."""
    prev, queue = {src: None}, [src]
    while queue:
        v = queue.pop(0)
        if v == dst:
            path = [v]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return list(reversed(path))
        for w in sorted(adj.get(v, ())):
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)
    return None


def cycles_in(comp, adj):
    """For every edge inside a strongly connected component, the shortest
    cycle through it (deduplicated): every import that takes part in a
    circle shows up in at least one listed cycle."""
    members, seen, out = set(comp), set(), []
    for a in comp:
        for b in sorted(adj.get(a, ())):
            if b not in members:
                continue
            back = shortest_path(b, a, members, adj)
            if back is None:
                continue
            cyc = [a] + back  # a -> b ... -> a
            ring = cyc[:-1]
            k = ring.index(min(ring))
            key = tuple(ring[k:] + ring[:k])
            if key not in seen:
                seen.add(key)
                out.append(list(key) + [key[0]])
    return out


def main():
    top, edges = build_graph()
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    if "--graph" in sys.argv:
        for (a, b), rel in sorted(edges.items()):
            print(f"{a} -> {b}    (e.g. src/{rel})")
    layer_of = {}
    for i, (_, mods) in enumerate(LAYERS):
        for m in mods:
            layer_of[m] = i
    problems = []
    for m in sorted(top - set(layer_of)):
        problems.append(f"module `{m}` is in no layer: add it to LAYERS in {sys.argv[0]}")
    for comp in sccs(top, adj):
        if len(comp) > 1:
            for cyc in cycles_in(comp, adj):
                via = ", ".join(
                    f"{a} -> {b} (src/{edges[(a, b)]})" for a, b in zip(cyc, cyc[1:])
                )
                problems.append(f"cycle: {' -> '.join(cyc)}; via {via}")
    for (a, b), rel in sorted(edges.items()):
        if a in layer_of and b in layer_of and layer_of[b] < layer_of[a]:
            problems.append(
                f"upward import: {a} ({LAYERS[layer_of[a]][0]}) -> {b} "
                f"({LAYERS[layer_of[b]][0]}), e.g. src/{rel}"
            )
    if problems:
        print("check-layers: FAILED")
        for p in problems:
            print("  " + p)
        return 1
    print(f"check-layers: ok ({len(top)} top-level modules, {len(edges)} edges, no cycle, no upward import)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
