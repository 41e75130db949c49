#!/usr/bin/env python3
"""ONNX Runtime's calibrators next to zeropoint's observers, on the same arrays, one core.

Usage: bench_observers.py write DATA.f32 | bench_observers.py run DATA.f32 ZEROPOINT_JSONL

`write` stores 32M float32 values (heavy-tailed, like activations) as raw little-endian bytes.
`run` feeds them, in batches of 1M values, to onnxruntime.quantization's calibration code:
  - min-max: what MinMaxCalibrater runs per batch, ReduceMin and ReduceMax in an ORT session
    (its augmented graph), merged with numpy as it merges them;
  - histogram: HistogramCollector.collect for the Percentile (absolute values, its default) and
    Entropy calibrators (2048 bins);
and prints GB/s of f32 input next to zeropoint's (from the JSON lines of the Rust bench).
"""

import contextlib
import io
import json
import os
import sys
import time

import numpy as np

N = 32 << 20
BATCH = 1 << 20


def write(path):
    rng = np.random.default_rng(3)
    x = rng.laplace(0.1, 0.5, N).astype(np.float32)
    x[:: 10007] *= 30  # sparse outliers
    x.astype("<f4").tofile(path)


def best(fn, reps=3):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ort_minmax(x):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMin", ["x"], ["lo"], keepdims=0),
         helper.make_node("ReduceMax", ["x"], ["hi"], keepdims=0)],
        "minmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run():
        lo, hi = np.inf, -np.inf
        for i in range(0, len(x), BATCH):
            a, b = sess.run(None, {"x": x[i:i + BATCH]})
            lo, hi = min(lo, a), max(hi, b)
        return lo, hi

    return run


def ort_histogram(x, method, symmetric):
    from onnxruntime.quantization.calibrate import HistogramCollector

    def run():
        c = HistogramCollector(method=method, symmetric=symmetric, num_bins=2048,
                               num_quantized_bins=128, percentile=99.999, scenario="same")
        with contextlib.redirect_stdout(io.StringIO()):
            for i in range(0, len(x), BATCH):
                c.collect({"t": x[i:i + BATCH]})

    return run


def run(path, zp_file):
    x = np.fromfile(path, dtype="<f4")
    zp = {r["name"]: r for r in map(json.loads, open(zp_file)) if r}
    peers = {
        "minmax": ("ReduceMin/ReduceMax session + numpy merge", ort_minmax(x)),
        "histogram (percentile)": ("HistogramCollector, percentile (|x|, 2048 bins)", ort_histogram(x, "percentile", True)),
        "histogram (mse)": ("HistogramCollector, entropy (2048 bins)", ort_histogram(x, "entropy", False)),
        "histogram (entropy)": ("HistogramCollector, entropy (2048 bins)", ort_histogram(x, "entropy", False)),
    }
    print(f"{'observer update, 1 core':<24} {'zeropoint GB/s':>14} {'ORT GB/s':>9} {'ratio':>7}  ORT code measured")
    for name, (what, fn) in peers.items():
        g = 4 * len(x) / best(fn) / 1e9
        z = zp[name]["gbps"]
        print(f"{name:<24} {z:>14.2f} {g:>9.2f} {z / g:>7.1f}  {what}")
    print("finishing (range from state, zeropoint): " + ", ".join(
        f"{k} {v['finish_s'] * 1e3:.1f} ms" for k, v in zp.items()))
    print(f"{len(x) // (1 << 20)}M values in batches of {BATCH >> 20}M; ORT with 1 intra-op thread.")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3])
