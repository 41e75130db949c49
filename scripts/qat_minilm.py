#!/usr/bin/env python3
"""MiniLM-L3 at W4A8: PTQ against QAT distilled on unlabelled sentences (docs/qat.md).

Usage: .venv/bin/python scripts/qat_minilm.py [--zeropoint target/release/zeropoint] [--epochs 3] [--lr 1e-4]
       [--batch 16] [--weights int4] [--activations uint8] [--distill mse] [--output 461]

Training data: the 200 pang_lee_polarity sentences scripts/ptq_compare.py calibrates on (padded with [PAD]);
evaluation: the 50 Lee documents (disjoint), embedding cosine against float and Pearson of the pair similarities
with the human scores, in ONNX Runtime. Needs .cache/shared/minilm-l3 (../shared/assets/fetch-minilm-l3.sh).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from ptq_compare import B2  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--epochs", default="3")
    p.add_argument("--lr", default="1e-4")
    p.add_argument("--batch", default="16")
    p.add_argument("--weights", default="int4")
    p.add_argument("--activations", default="uint8")
    p.add_argument("--distill", default="mse")
    p.add_argument("--output", default="461")
    a = p.parse_args()
    task = B2(os.path.join(ROOT, ".cache", "shared"))
    ref = task.outputs(task.src)
    floatm = task.metrics(ref, ref)
    print(f"float: Pearson {floatm['lee_pearson']:.4f}")
    scheme = ["--weights", a.weights, "--activations", a.activations]
    with tempfile.TemporaryDirectory() as work:
        calib = task.zp_calib(work)
        ptq = os.path.join(work, "ptq.onnx")
        subprocess.run([a.zeropoint, "quantize", task.src, *calib, *scheme, "--weight-range", "mse", "-o", ptq],
                       check=True, capture_output=True)
        m = task.metrics(task.outputs(ptq), ref)
        print(f"PTQ (MSE weight ranges): cosine {m['cos_mean']:.4f} (min {m['cos_min']:.4f}), Pearson {m['lee_pearson']:.4f}")
        qat = os.path.join(work, "qat.onnx")
        t = time.time()
        run = subprocess.run([a.zeropoint, "train", task.src, "--data", calib[1], *scheme, "--weight-range", "mse",
                              "--epochs", a.epochs, "--lr", a.lr, "--batch-size", a.batch, "--distill", a.distill,
                              "--output-name", a.output, "-o", qat], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(run.stderr)
        print(run.stdout.strip())
        m = task.metrics(task.outputs(qat), ref)
        print(f"QAT ({a.epochs} epochs, lr {a.lr}, {time.time() - t:.0f} s): cosine {m['cos_mean']:.4f} "
              f"(min {m['cos_min']:.4f}), Pearson {m['lee_pearson']:.4f}")


if __name__ == "__main__":
    main()
