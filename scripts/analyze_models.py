#!/usr/bin/env python3
"""`zeropoint analyze` on the shared models and zoo models: the HTML report of each, and a table of what the debugging
flow found (docs/algorithms.md, "Debugging flow"), with wall time and peak memory of each run.

Usage: .venv/bin/python scripts/analyze_models.py [--zeropoint target/release/zeropoint] [--out DIR]
       [--models a1,a3,a4,a5,b2,ppocr-v3-det,malviz] [--zoo .cache/zoo] [--preset w8a8] [--samples 16]

Data as in scripts/algorithms_compare.py (A1 MNIST, A3 CIFAR, A4 PP-LCNet crops, A5 SVHN digits, zoo models on
scripts/zoo_inputs.py's synthetic inputs) and scripts/ptq_compare.py (B2 MiniLM-L3: 200 padded sentences, needs
.cache/shared/minilm-l3 from ../shared/assets/fetch-minilm-l3.sh).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from algorithms_compare import shared_data, zoo_data  # noqa: E402


def minilm(work):
    from ptq_compare import B2
    task = B2(os.path.join(ROOT, ".cache", "shared"))
    ids, mask = task.padded()
    return task.src, {"input_ids": ids, "attention_mask": mask}


def data(name, zoo, work):
    if name == "b2":
        return minilm(work)
    if re.fullmatch(r"a\d", name):
        model, calib, _ = shared_data(name, work)
    else:
        model, calib, _ = zoo_data(name, zoo, work)
    return model, calib


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--out", default=os.path.join(ROOT, ".cache", "analysis"))
    p.add_argument("--models", default="a1,a3,a4,a5,b2")
    p.add_argument("--zoo", default=os.path.join(ROOT, ".cache", "zoo"))
    p.add_argument("--preset", default="w8a8")
    p.add_argument("--samples", type=int, default=16)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in a.models.split(","):
            model, calib = data(name, a.zoo, work)
            calib_path = os.path.join(work, f"{name}.calib.npz")
            np.savez(calib_path, **calib)
            html = os.path.join(a.out, f"{name}.{a.preset}.html")
            cmd = ["/usr/bin/time", "-f", "%M", a.zeropoint, "analyze", model, "--calib", calib_path, "--preset",
                   a.preset, "--analysis-samples", str(a.samples), "--batch", "1", "--json", "--html", html]
            t = time.time()
            run = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.time() - t
            if run.returncode != 0:
                print(f"{name}: failed: {run.stderr.strip()}", flush=True)
                continue
            peak_mb = int(run.stderr.strip().splitlines()[-1]) / 1024
            r = json.loads(run.stdout)
            with open(os.path.join(a.out, f"{name}.{a.preset}.json"), "w") as f:
                json.dump(r, f, indent=1)
            rows.append((name, r, seconds, peak_mb))
            print(row(name, r, seconds, peak_mb), flush=True)
    print("\n| model | 16-bit check | quantized | weights only | activations only | worst quantizer (alone) | best fix "
          "(measured) | quantizers | time | peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r, seconds, peak_mb in rows:
        print(row(name, r, seconds, peak_mb))


def db(s):
    return f"{s['sqnr_db']:.1f}" if s["sqnr_db"] is not None else "inf"


def row(name, r, seconds, peak_mb):
    worst = r["sensitivities"][0] if r["sensitivities"] else None
    worst_s = f"{worst['quantizer']['kind']} {worst['quantizer']['name']} ({db(worst['alone'])})" if worst else "-"
    fixes = sorted(r["suggestions"], key=lambda s: -s["gain_db"])
    fix = f"`{fixes[0]['options']}` {fixes[0]['gain_db']:+.1f} dB" if fixes else "-"
    return (f"| {name} | {db(r['check_16_bits'])} | {db(r['quantized'])} | {db(r['weights_only'])} | "
            f"{db(r['activations_only'])} | {worst_s} | {fix} | {len(r['sensitivities'])} | {seconds:.0f} s | "
            f"{peak_mb:.0f} MB |")


if __name__ == "__main__":
    main()
