"""A float16 model quantized: computed in float32 behind its float16 interface, checked in ONNX Runtime.

Usage: half_precision_reference.py ZEROPOINT DIR

The model computes in float16 throughout, as GPU exports do: x (float16) -> Conv (+bias) -> Relu ->
Conv -> Add of a float16 Constant node -> Flatten -> Gemm -> y (float16), and a Cast of x to
float16 that a branch reads (a no-op cast, as converters leave them). After
`zeropoint quantize` (W8A8, static):

- the model passes onnx.checker's full check; its input and output are float16 as before;
- both Convs and the Gemm have int8 weights (DequantizeLinear of int8 initializers), and no
  float16 initializer is left inside;
- in ONNX Runtime the quantized model's output is within cosine 0.999 of the float16 model's, and
  its last layer's input keeps its precision (no QuantizeLinear right before the output's Cast);
- the same bytes come out at 1 and 2 threads;
- a float16 model with an If whose branches declare float16 values (value_info, as shape inference
  writes them) quantizes to a model ONNX Runtime loads, equal to the float16 model's outputs.
"""

import os
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
    rng = np.random.default_rng(5)
    h = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float16)  # noqa: E731
    inits = [numpy_helper.from_array(v, n) for n, v in
             dict(w1=h(8, 3, 3, 3), b1=h(8), w2=h(8, 8, 3, 3), wg=h(10, 8 * 8 * 8), bg=h(10)).items()]
    shift = numpy_helper.from_array(np.full((1, 8, 1, 1), 0.25, np.float16), "shift")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("Conv", ["xh", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Constant", [], ["k"], value=shift),
             helper.make_node("Add", ["c2", "k"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = onnx.shape_inference.infer_shapes(model)  # float16 value_info, as exporters write it
    path = d / "half.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((24, 3, 8, 8)).astype(np.float16)
    np.save(d / "calib.npy", x[:16])
    return path, x[16:]


def quantize(exe, path, out, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    run = subprocess.run([str(exe), "quantize", str(path), "--calib", str(path.parent / "calib.npy"),
                          "--preset", "w8a8", "--batch", "1", "-o", str(out)] + LIMIT_PAIRS, capture_output=True, text=True,
                         env=env)
    if run.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {run.stderr}")


def branches(exe, d):
    """x (float16) -> Gemm -> If (then: Relu, else: Neg) -> y (float16), with float16 value_info
    inside the branches."""
    rng = np.random.default_rng(9)
    vi = helper.make_tensor_value_info
    half = TensorProto.FLOAT16
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t"])], "then", [], [vi("t", half, [1, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"])], "else", [], [vi("e", half, [1, 4])])
    w = numpy_helper.from_array((rng.standard_normal((4, 6)) * 0.3).astype(np.float16), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "branches", [vi("x", half, [1, 6]), vi("c", TensorProto.BOOL, [])],
                              [vi("y", half, [1, 4])], [w])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    path = d / "branches.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((8, 6)).astype(np.float16)
    np.savez(d / "branches.npz", x=x, c=np.array(True))
    out = d / "branches.int8.onnx"
    run = subprocess.run([str(exe), "quantize", str(path), "--calib", str(d / "branches.npz"), "--preset", "w8a8",
                          "-o", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {run.stderr}")
    q = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    yq, yf = [], []
    for cond in (True, False):
        for s in x[:4]:
            feed = {"x": s[None], "c": np.array(cond)}
            yq.append(q.run(None, feed)[0].astype(np.float32))
            yf.append(f.run(None, feed)[0].astype(np.float32))
    yq, yf = np.concatenate(yq), np.concatenate(yf)
    err = float(np.abs(yq - yf).max() / np.abs(yf).max())
    check(err < 0.05, f"with float16 values declared in If branches: runs in ORT, max error {err:.4f} of max |y|")


def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    path, x = build(d)
    out = d / "half.int8.onnx"
    quantize(exe, path, out, 1)
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    types = [v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)]
    check(types == [TensorProto.FLOAT16] * 2, f"input and output stay float16: {types}")
    inits = {t.name: t for t in m.graph.initializer}
    int8_weights = [n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"
                    and n.input[0] in inits and inits[n.input[0]].data_type == TensorProto.INT8]
    check(len(int8_weights) == 3, f"both Convs and the Gemm have int8 weights: {int8_weights}")
    halves = [t.name for t in m.graph.initializer if t.data_type == TensorProto.FLOAT16]
    check(not halves, f"no float16 initializer is left: {halves}")
    producer = {o: n for n in m.graph.node for o in n.output}
    last_cast = producer["y"]
    before = producer.get(last_cast.input[0])
    check(last_cast.op_type == "Cast" and before is not None and before.op_type == "Gemm",
          f"the output is the Gemm's float32 result cast to float16: {last_cast.op_type} of {before.op_type if before else None}")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    q = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    f = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    yq = np.concatenate([q.run(None, {"x": s[None]})[0] for s in x]).astype(np.float32)
    yf = np.concatenate([f.run(None, {"x": s[None]})[0] for s in x]).astype(np.float32)
    cos = float(np.dot(yq.ravel(), yf.ravel()) / np.linalg.norm(yq) / np.linalg.norm(yf))
    check(cos > 0.999, f"the int8 model's output is within cosine 0.999 of the float16 model's: {cos:.5f}")

    branches(exe, d)

    out2 = d / "half.int8.2.onnx"
    quantize(exe, path, out2, 2)
    check(out.read_bytes() == out2.read_bytes(), "the same bytes at 1 and 2 threads")
    if FAILED:
        sys.exit(f"half precision reference: {len(FAILED)} checks failed")
    print("half precision reference: all checks passed")


if __name__ == "__main__":
    main()
