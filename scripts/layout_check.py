#!/usr/bin/env python3
"""The layout rules of docs/architecture.md, checked on the sources (a text scan, not a parser):

  - no module cycle inside a crate (`crate::x` references between a crate's top-level modules,
    comments and #[cfg(test)] code left out);
  - no crate depends on a zeropoint crate above it (the order of CRATES);
  - no non-test function longer than 100 lines (src/ only; tests and benches are not counted).

Usage: layout_check.py [REPO]   Prints what breaks a rule; exits 1 if anything does.
"""

import os
import re
import sys

CRATES = ["zeropoint-core", "zeropoint-onnx", "zeropoint-gguf", "zeropoint-graph", "zeropoint-engine",
          "zeropoint-quant", "zeropoint-cli", "zeropoint-py"]
MAX_LINES = 100
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def sources(src):
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if f.endswith(".rs"):
                yield os.path.join(dirpath, f)


def non_test(text):
    return text.split("#[cfg(test)]")[0]


def module_cycles(src):
    deps = {}
    for p in sources(src):
        parts = os.path.relpath(p, src)[:-3].split(os.sep)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        top = parts[0] if parts else ""
        code = "\n".join(line.split("//")[0] for line in non_test(open(p).read()).split("\n"))
        deps.setdefault(top, set()).update(m for m in re.findall(r"crate::(\w+)", code) if m != top)
    cycles = set()

    def walk(node, path):
        for d in deps.get(node, ()):
            if d in path:
                cycles.add(" -> ".join(path[path.index(d):] + [d]))
            elif d in deps:
                walk(d, path + [d])

    for m in deps:
        walk(m, [m])
    return sorted(cycles)


def long_functions(src):
    for p in sources(src):
        lines = non_test(open(p).read()).split("\n")
        i = 0
        while i < len(lines):
            m = FN.match(lines[i])
            if not m:
                i += 1
                continue
            depth, started, j = 0, False, i
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                started = started or "{" in lines[j]
                if (started and depth <= 0) or (not started and lines[j].rstrip().endswith(";")):
                    break
                j += 1
            if started and j - i + 1 > MAX_LINES:
                yield f"{p}:{i + 1}: fn {m.group(6)} is {j - i + 1} lines"
            i = j + 1 if started else i + 1


def upward_deps(repo, crate):
    manifest = open(os.path.join(repo, "crates", crate, "Cargo.toml")).read()
    deps = manifest.split("[dependencies]")[1].split("\n[")[0]
    rank = CRATES.index(crate)
    return [d for d in CRATES[rank:] if re.search(rf"^{d}\b", deps, re.M)]


def main(repo):
    problems = []
    for crate in CRATES:
        src = os.path.join(repo, "crates", crate, "src")
        problems += [f"{crate}: module cycle {c}" for c in module_cycles(src)]
        problems += [f"{crate}: depends on {d}, which is not below it" for d in upward_deps(repo, crate)]
        problems += list(long_functions(src))
    for p in problems:
        print(p)
    print(f"{len(CRATES)} crates checked: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
