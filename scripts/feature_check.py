#!/usr/bin/env python3
"""Checks that the Python package alone resolves every crate's features as the workspace's tests do.

scripts/test builds the wheel with maturin after `cargo test --workspace`, meaning to reuse the
test build's artifacts. maturin builds crates/zeropoint-py alone, and cargo resolves features
for that package's tree only, while `cargo test --workspace` also takes the features that other
packages' dev-dependencies turn on. Where a crate's features differ, it and every crate above
it (candle-core, the zeropoint crates) are compiled a second time: about 5 minutes of CI.
zeropoint-py's Cargo.toml names such crates with the workspace's features; this check says when
a dependency change has made another one differ, and which features to name.

Compares `cargo tree -f '{p} [{f}]'` of both builds: every feature set a crate has in the
package's tree must be one it has in the workspace's. pyo3's `extension-module`, which only
maturin sets, is left out (it touches pyo3 and the module alone). cargo tree does not say which
sets are the build scripts' and which the code's, so a set matched across the two is not caught.

Usage: feature_check.py [REPO]   Prints each crate that differs; exits 1 if any does.
"""

import os
import re
import subprocess
import sys

LINE = re.compile(r"(\S+) (v\S+)(?: \([^)]*\))? \[(.*)\]")
PACKAGE = "zeropoint-py"
MATURIN_ONLY = "extension-module"


def feature_sets(repo, args):
    """{(crate, version): {feature set, ...}} of `cargo tree` with `args`."""
    out = subprocess.run(["cargo", "tree", "--locked", "--prefix", "none", "-f", "{p} [{f}]"] + args,
                         cwd=repo, check=True, capture_output=True, text=True).stdout
    sets = {}
    for line in out.splitlines():
        m = LINE.match(line.replace(" (*)", "").replace(" (proc-macro)", "").strip())
        if m:
            sets.setdefault((m[1], m[2]), set()).add(m[3])
    return sets


def main():
    repo = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workspace = feature_sets(repo, ["--workspace", "-e", "normal,build,dev"])
    package = feature_sets(repo, ["-p", PACKAGE, "-e", "normal,build", "-F", f"{PACKAGE}/{MATURIN_ONLY}"])
    differ = []
    for (crate, version), sets in sorted(package.items()):
        theirs = workspace.get((crate, version), set())
        for features in sorted(sets - theirs):
            if MATURIN_ONLY in features.split(","):
                continue
            differ.append(f"{crate} {version}: [{features}] alone, the workspace's tests have "
                          + " or ".join(f"[{t}]" for t in sorted(theirs)))
    for d in differ:
        print(d)
    if differ:
        print(f"{len(differ)} crates resolve other features in {PACKAGE} alone than in the workspace's tests: "
              f"name them in crates/{PACKAGE}/Cargo.toml with the workspace's features, or the wheel's build "
              "in scripts/test compiles the library a second time")
        sys.exit(1)
    print(f"{len(package)} crates of {PACKAGE} resolve as in the workspace's tests")


if __name__ == "__main__":
    main()
