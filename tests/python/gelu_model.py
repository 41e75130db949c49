"""Writes a small CNN whose GELU is written out as PyTorch exports it before opset 20, and data.

Usage: gelu_model.py DIR

DIR/gelu.onnx (opset 17): x [N, 3, 12, 12] → Conv 3×3 (8 channels) → x · 0.5 · (1 + erf(x / √2))
→ Conv 1×1 (4 channels) → y; DIR/inputs.npz: 16 samples of x, normal with mean 0.3.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(20)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(1.4142135381698608, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Div", ["c", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["gate"], name="add"),
        helper.make_node("Mul", ["c", "gate"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "half"], ["g"], name="half_mul"),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes, "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / "gelu.onnx")
    x = rng.normal(0.3, 1.0, (16, 3, 12, 12)).astype(np.float32)
    np.savez(out / "inputs.npz", x=x)
    print("gelu model written")


if __name__ == "__main__":
    main()
