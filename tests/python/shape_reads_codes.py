"""A Shape of a quantized activation reads its integer codes in the QDQ export, so that ONNX Runtime
still fuses the activation's producer.

Usage: shape_reads_codes.py ZEROPOINT DIR

The model is the pattern of a GRU decoder step: x -> Gemm (transB, bias) -> h -> Gemm -> y, and a
Shape of h as a second output (the decoder read h's shape to size its next step), with a free batch
dimension so that ONNX Runtime cannot fold the Shape into a constant. After
`zeropoint quantize` (W8A8, static):

- the Shape reads the output of h's QuantizeLinear, and h's float value has no reader but that
  QuantizeLinear (a Shape on the float h kept ONNX Runtime from fusing the first Gemm: it stayed a
  float Gemm whose weights were dequantized on every run);
- ONNX Runtime's optimized graph (all optimizations, CPU) has two QGemm nodes and no Gemm;
- the model passes onnx.checker's full check, its Shape output is h's shape, and y is within
  cosine 0.999 of the float model's in ONNX Runtime.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ort_kernels import LIMIT_PAIRS

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def build(d):
    rng = np.random.default_rng(3)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(v, n) for n, v in
             dict(w1=f(32, 16), b1=f(32), w2=f(8, 32), b2=f(8)).items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="step", transB=1),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="head", transB=1),
             helper.make_node("Shape", ["h"], ["s"], name="size")]
    graph = helper.make_graph(nodes, "shape_of_quantized",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = d / "model.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((16, 16)).astype(np.float32)
    np.save(d / "calib.npy", x)
    return path, x


def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    path, x = build(d)
    out = d / "model.int8.onnx"
    run = subprocess.run([str(exe), "quantize", str(path), "--calib", str(d / "calib.npy"), "--preset", "w8a8",
                          "--batch", "1", "-o", str(out)] + LIMIT_PAIRS, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {run.stderr}")
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = {}
    for n in m.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    shape = next(n for n in m.graph.node if n.op_type == "Shape")
    src = producer.get(shape.input[0])
    check(src is not None and src.op_type == "QuantizeLinear" and src.input[0] == "h",
          f"the Shape reads h's codes: {shape.input[0]} from {src.op_type if src else 'nowhere'}")
    check([n.op_type for n in readers.get("h", [])] == ["QuantizeLinear"],
          f"h's float value is read by its QuantizeLinear alone: {[n.op_type for n in readers.get('h', [])]}")

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(d / "optimized.onnx")
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(d / "optimized.onnx").graph.node]
    check(ops.count("QGemm") == 2 and "Gemm" not in ops, f"ONNX Runtime fuses both Gemms into QGemm: {sorted(ops)}")

    fl = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y_q, s_q = s.run(None, {"x": x[:1]})
    y_f, _ = fl.run(None, {"x": x[:1]})
    check(s_q.tolist() == [1, 32], f"the Shape output is h's shape: {s_q.tolist()}")
    cos = float(np.dot(y_q.ravel(), y_f.ravel()) / np.linalg.norm(y_q) / np.linalg.norm(y_f))
    check(cos > 0.999, f"y within cosine 0.999 of float: {cos:.5f}")
    if FAILED:
        sys.exit(f"shape reads codes: {len(FAILED)} checks failed")
    print("shape reads codes: all checks passed")


if __name__ == "__main__":
    main()
