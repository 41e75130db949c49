#!/usr/bin/env python3
"""A model that 8-bit activations cannot follow, for the CLI's warning.

Usage: far_model.py DIR  writes DIR/far.onnx, y = sin(400 x) for x [N, 4], and DIR/far.npy, 16
samples of x. x's 8-bit step (about 0.03) is 12 radians of the sine's argument: the quantized
model's output has nothing to do with the float one's.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def main(folder):
    w = numpy_helper.from_array(np.diag(np.full(4, 400.0, np.float32)), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Sin", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "far", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(folder, "far.onnx"))
    x = np.random.default_rng(3).standard_normal((16, 4)).astype(np.float32)
    np.save(os.path.join(folder, "far.npy"), x)


if __name__ == "__main__":
    main(sys.argv[1])
