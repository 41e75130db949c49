#!/usr/bin/env python3
"""Writes the hand-built seed of `graph_mutations` that the operator cases do not cover: the
graph patterns canonicalization and placement rewrite (docs/engine.md, docs/ptq.md), for the
fuzzer's edits to break.

Usage: .venv/bin/python fuzz/graph_seeds.py DIR   (then copy DIR/*.onnx into fuzz/models/)

folds_and_fusions.onnx: Conv (padded) -> Mul(per-channel) -> Add(per-channel) -> Relu, an
exported inference BatchNorm that folds into the Conv; Flatten -> MatMul -> Clip(1e-10, no max)
-> Log, a layer whose output placement quantizes before the Clip; Gemm -> Relu -> Identity into
the graph output, whose Relu stays float.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def folds_and_fusions():
    rng = np.random.default_rng(0)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    weights = dict(w=f(4, 3, 3, 3), s=np.abs(f(1, 4, 1, 1)) + 0.5, t=f(4, 1, 1), w1=np.abs(f(64, 8)),
                   lo=np.array(1e-10, np.float32), w2=f(5, 8), b2=f(5))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["fl"], name="flat"),
             helper.make_node("MatMul", ["fl", "w1"], ["mm"], name="spectrum"),
             helper.make_node("Clip", ["mm", "lo", ""], ["cl"], name="floor"),
             helper.make_node("Log", ["cl"], ["lg"], name="log"),
             helper.make_node("Gemm", ["lg", "w2", "b2"], ["g"], name="dense", transB=1),
             helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
             helper.make_node("Identity", ["gr"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "folds_and_fusions",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(folds_and_fusions(), out / "folds_and_fusions.onnx")


if __name__ == "__main__":
    main()
