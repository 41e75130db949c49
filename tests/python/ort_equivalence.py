#!/usr/bin/env python3
"""Checks that a model zeropoint rewrote (canonicalized, upgraded to a newer opset) computes what
the original computes.

  ort_equivalence.py ORIGINAL.onnx REWRITTEN.onnx INPUTS.npz
  ort_equivalence.py --batch LIST.json

onnx.checker.check_model(REWRITTEN, full_check=True) must pass; ONNX Runtime (graph
optimizations off) runs both on INPUTS; prints "max_rel_err=<max over outputs of
max|a-b| / max|a|> argmax_equal=<True|False>".

With --batch, LIST.json holds [{"original", "rewritten", "inputs", "skip": [output names]}, ...];
prints one JSON line: a list of {"rewritten", "max_rel_err", "exact" (non-float outputs equal),
"error"} in the same order.
"""

import json

import sys

import numpy as np
import onnx
import onnxruntime as ort


def run(path, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def compare(original, rewritten, inputs, skip=()):
    """(max relative error of float outputs, non-float outputs equal, argmax of floats equal)"""
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = dict(np.load(inputs))
    names = [o.name for o in onnx.load(original, load_external_data=False).graph.output]
    worst, exact, argmax_equal = 0.0, True, True
    for name, a, b in zip(names, run(original, feeds), run(rewritten, feeds)):
        if name in skip:
            continue
        if a.dtype != b.dtype or a.shape != b.shape:
            raise ValueError(f"output {name}: {a.dtype}{a.shape} became {b.dtype}{b.shape}")
        if a.dtype.kind != "f":
            exact &= bool(np.array_equal(a, b))
            continue
        if a.size:
            same_nan = np.isnan(a) == np.isnan(b)
            d = np.where(np.isnan(a) & np.isnan(b), 0, np.abs(a.astype(np.float64) - b))
            worst = max(worst, float(d.max() / max(np.nanmax(np.abs(a)), 1e-30)), 0.0 if same_nan.all() else np.inf)
        if a.ndim >= 1 and a.size:
            argmax_equal &= bool(np.array_equal(a.argmax(-1), b.argmax(-1)))
    return worst, exact, argmax_equal


def main(original, rewritten, inputs):
    worst, exact, argmax_equal = compare(original, rewritten, inputs)
    print(f"max_rel_err={worst:.3e} argmax_equal={argmax_equal and exact}")


def batch(path):
    results = []
    for e in json.load(open(path)):
        r = dict(rewritten=e["rewritten"])
        try:
            r["max_rel_err"], r["exact"], _ = compare(e["original"], e["rewritten"], e["inputs"], e.get("skip", ()))
        except Exception as ex:  # reported per model; the Rust test names it
            r["error"] = f"{type(ex).__name__}: {ex}".splitlines()[0]
        results.append(r)
    print(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1] == "--batch":
        batch(sys.argv[2])
    else:
        main(*sys.argv[1:4])
