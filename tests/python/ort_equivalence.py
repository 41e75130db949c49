#!/usr/bin/env python3
"""Checks that a model zeropoint rewrote (canonicalized) computes what the original computes.

  ort_equivalence.py ORIGINAL.onnx REWRITTEN.onnx INPUTS.npz

onnx.checker.check_model(REWRITTEN, full_check=True) must pass; ONNX Runtime (graph
optimizations off) runs both on INPUTS; prints "max_rel_err=<max over outputs of
max|a-b| / max|a|> argmax_equal=<True|False>".
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort


def run(path, feeds):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def main(original, rewritten, inputs):
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = dict(np.load(inputs))
    worst, argmax_equal = 0.0, True
    for a, b in zip(run(original, feeds), run(rewritten, feeds)):
        if a.dtype.kind != "f":
            argmax_equal &= bool(np.array_equal(a, b))
            continue
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)))
        if a.ndim >= 1:
            argmax_equal &= bool(np.array_equal(a.argmax(-1), b.argmax(-1)))
    print(f"max_rel_err={worst:.3e} argmax_equal={argmax_equal}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
