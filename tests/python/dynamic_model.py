#!/usr/bin/env python3
"""A model whose free dimensions cannot be tiny, with a stale declared output shape, as exporters
write them (issue: shapes never depend on a guess).

  dynamic_model.py DIR          writes DIR/dyn.onnx, DIR/calib.npy (4 samples of 1x40x56), and
                                DIR/widths/{a,b,c}.npz: 1, 2 and 1 samples of widths 56, 72, 33
                                (and DIR/bad/ with a file of 2 channels)
                                and DIR/seq.onnx, a model without a batch axis, with
                                DIR/seq.npy (one sequence), DIR/seq_short.npy (one too short
                                for it) and DIR/seq_stacked.npy
  dynamic_model.py check Q.onnx prints JSON: the declared output shape of Q and the output shape
                                ONNX Runtime gives on one calibration sample

x [N, 1, H, W] -> Conv 7x7 stride 2 -> Relu -> MaxPool 4x4 -> GlobalAveragePool -> Flatten -> Gemm
-> y [N, 5], declared [1, "seqlen", 5]: rank 3 for a rank-2 output. The 7x7 kernel and the pool
need H, W >= 14: a probe at 2 or 3 pixels cannot run.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write(folder):
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 7, 7)).astype(np.float32) * 0.2, "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[4, 4]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen", 5])
    graph = helper.make_graph(nodes, "dyn", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, os.path.join(folder, "dyn.onnx"))
    np.save(os.path.join(folder, "calib.npy"), rng.uniform(0, 1, (4, 1, 40, 56)).astype(np.float32))
    for sub, files in (("widths", {"a": (1, 1, 56), "b": (2, 1, 72), "c": (1, 1, 33)}),
                       ("bad", {"a": (1, 1, 56), "b": (1, 2, 56)})):
        os.makedirs(os.path.join(folder, sub))
        for name, (n, c, w) in files.items():
            x = rng.uniform(0, 1, (n, c, 40, w)).astype(np.float32)
            np.savez(os.path.join(folder, sub, f"{name}.npz"), x=x)
    sequence_model(folder)


def sequence_model(folder):
    """seq.onnx: x [T, 4] (no batch axis) -> Unsqueeze -> Transpose -> Conv 1-D kernel 3 -> y, which
    needs T >= 3; seq.npy is one sequence [6, 4], seq_stacked.npy the same as [1, 6, 4],
    seq_short.npy a sequence [1, 4]."""
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
             helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["t", "w"], ["y"])]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 3)).astype(np.float32), "w")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, "T2"])
    model = helper.make_model(helper.make_graph(nodes, "seq", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, os.path.join(folder, "seq.onnx"))
    seq = rng.standard_normal((6, 4)).astype(np.float32)
    np.save(os.path.join(folder, "seq.npy"), seq)
    np.save(os.path.join(folder, "seq_stacked.npy"), seq[None])
    np.save(os.path.join(folder, "seq_short.npy"), seq[:1])


def check(path):
    import onnxruntime as ort

    model = onnx.load(path)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    declared = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]
    x = np.load(os.path.join(os.path.dirname(path), "calib.npy"))[:1]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    print(json.dumps({"declared": declared, "shape": list(y.shape)}))


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        write(sys.argv[1])
