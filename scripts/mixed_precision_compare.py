#!/usr/bin/env python3
"""Mixed precision to a target (`quantize --target-sqnr`) measured in ONNX Runtime: output SQNR on held-out samples,
model size and latency of the plain quantized model and of each target's, against the float model (docs/algorithms.md,
"Mixed precision").

Usage: .venv/bin/python scripts/mixed_precision_compare.py [--zeropoint target/release/zeropoint]
       [--models a1,a3,a4,a5,fsmn-vad] [--zoo .cache/zoo] [--preset w8a8] [--gains 3,6] [--runs 50]

SQNR: the mean over the model's outputs of each output's SQNR against float, as the targets are measured.
Data as in scripts/algorithms_compare.py (held-out evaluation samples where the model has them; A5 is in-sample).
Targets are the plain model's SQNR on the calibration samples plus each gain. Latency: median of --runs
single-sample runs in ONNX Runtime (CPU, default threads), after 5 warm-up runs.
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
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from algorithms_compare import outputs, shared_data, zoo_data  # noqa: E402


def sqnr(ref, got):
    """The mean over outputs of each output's SQNR, as zeropoint's targets measure it."""
    dbs = []
    for r, g in zip(ref, got):
        r, g = r.astype(np.float64), g.astype(np.float64)
        noise = float(np.sum((r - g) ** 2))
        dbs.append(10 * np.log10(float(np.sum(r * r)) / noise) if noise > 0 else float("inf"))
    return float(np.mean(dbs))


def latency_ms(path, feeds, runs):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    one = {k: v[:1] for k, v in feeds.items()}
    for _ in range(5):
        s.run(None, one)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, one)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def quantize(a, model, calib, out, extra):
    cmd = [a.zeropoint, "quantize", model, "--calib", calib, "--preset", a.preset, "--batch", "1", "--json", "-o",
           out, *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--models", default="a1,a3,a4,a5,fsmn-vad")
    p.add_argument("--zoo", default=os.path.join(ROOT, ".cache", "zoo"))
    p.add_argument("--preset", default="w8a8")
    p.add_argument("--gains", default="3,6")
    p.add_argument("--runs", type=int, default=50)
    a = p.parse_args()
    print("| model | model | SQNR dB (held out) | target met (calibration) | raises (16-bit / float) | size MB | "
          "ORT latency ms |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in a.models.split(","):
            if re.fullmatch(r"a\d", name):
                model, calib, evals = shared_data(name, work)
            else:
                model, calib, evals = zoo_data(name, a.zoo, work)
            calib_path = os.path.join(work, f"{name}.calib.npz")
            np.savez(calib_path, **calib)
            reference = outputs(model, evals)
            size = lambda f: os.path.getsize(f) / 1e6  # noqa: E731
            print(f"| {name} | float | - | - | - | {size(model):.2f} | {latency_ms(model, evals, a.runs):.2f} |",
                  flush=True)
            plain = os.path.join(work, f"{name}.plain.onnx")
            s = quantize(a, model, calib_path, plain, [])
            base = next(l["sqnr_db"] for l in s["layers"] if l["output"])
            print(f"| {name} | {a.preset} | {sqnr(reference, outputs(plain, evals)):.1f} | - | - | "
                  f"{size(plain):.2f} | {latency_ms(plain, evals, a.runs):.2f} |", flush=True)
            for gain in a.gains.split(","):
                target = round(base + float(gain), 1)
                out = os.path.join(work, f"{name}.{gain}.onnx")
                m = quantize(a, model, calib_path, out, ["--target-sqnr", str(target)])["mixed_precision"]
                bits16 = sum(1 for st in m["steps"] if st["change"] == "bits16")
                floats = len(m["steps"]) - bits16
                met = f"{'yes' if m['met'] else 'no'} ({m['after']['sqnr_db']:.1f})"
                print(f"| {name} | --target-sqnr {target} | {sqnr(reference, outputs(out, evals)):.1f} | {met} | "
                      f"{bits16} / {floats} | {size(out):.2f} | {latency_ms(out, evals, a.runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
