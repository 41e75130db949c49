"""A MatMul or Gemm read only by a Relu or Clip (itself read by one float op) still becomes an
integer kernel in ONNX Runtime; one whose output a Log reads stays float, and so does the layer
whose squares it reads.

Usage: layers_before_relu_clip.py ZEROPOINT DIR

ONNX Runtime's QDQ selector fuses DQ -> MatMul/Gemm into MatMulIntegerToFloat/QGemm with float
output, but not when the layer's only reader is a Relu or Clip read by one node and not a graph
output: it then wants a QuantizeLinear that makes the Relu/Clip redundant and, without one, fuses
nothing (the layer ran in float, its weight dequantized on every run). The model has five
branches of x:

- MatMul -> Clip(1e-10, no max) -> Tanh -> a: the MatMul's output gets the quantizer (ORT cannot
  drop an unbounded Clip);
- Gemm -> Relu -> Sigmoid -> b: the Relu's output gets it (its zero-point 0 makes the Relu
  redundant, ORT drops it);
- MatMul -> Relu -> c, a graph output: nothing (ORT fuses it with float output as it is);
- MatMul -> Clip(1e-10) -> Log -> d (openWakeWord's mel filterbank): the layer stays float, its
  weight and output (a uniform grid has no resolution where the log has the most); it reads x
  dequantized, as x's other readers do;
- MatMul -> x · x -> MatMul -> Add(guard) -> Log -> e (a NeMo front end: STFT, power spectrum,
  filterbank): both layers stay float, and `zeropoint quantize` names the three layers the Log
  rule keeps float.

After `zeropoint quantize` (W8A8, static) the model passes onnx.checker's full check, ONNX
Runtime's optimized graph (all optimizations, CPU) has three float MatMuls, the filterbanks and
the STFT on their float weights, no other float MatMul or Gemm and no DequantizeLinear of a weight, and every
output is within cosine 0.999 of the float model's.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def build(d):
    rng = np.random.default_rng(5)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(v, n) for n, v in
             dict(w1=f(16, 24), w2=f(8, 16), b2=f(8), w3=f(16, 4), w4=np.abs(f(16, 24)),
                  w5=f(16, 32), w6=np.abs(f(32, 24)), lo=np.array(1e-10, np.float32)).items()]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="dense_clipped"),
             helper.make_node("Clip", ["m1", "lo", ""], ["c1"], name="floor"),
             helper.make_node("Tanh", ["c1"], ["a"], name="tanh"),
             helper.make_node("MatMul", ["x", "w4"], ["m4"], name="filterbank"),
             helper.make_node("Clip", ["m4", "lo", ""], ["c4"], name="log_floor"),
             helper.make_node("Log", ["c4"], ["d"], name="log"),
             helper.make_node("Gemm", ["x", "w2", "b2"], ["g2"], name="dense", transB=1),
             helper.make_node("Relu", ["g2"], ["r2"], name="relu"),
             helper.make_node("Sigmoid", ["r2"], ["b"], name="sigmoid"),
             helper.make_node("MatMul", ["x", "w3"], ["m3"], name="head"),
             helper.make_node("Relu", ["m3"], ["c"], name="head_relu"),
             helper.make_node("MatMul", ["x", "w5"], ["m5"], name="stft"),
             helper.make_node("Mul", ["m5", "m5"], ["p5"], name="power"),
             helper.make_node("MatMul", ["p5", "w6"], ["m6"], name="mel"),
             helper.make_node("Add", ["m6", "lo"], ["g6"], name="guard"),
             helper.make_node("Log", ["g6"], ["e"], name="log_mel")]
    graph = helper.make_graph(nodes, "layers_before_relu_clip",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, ["n", k])
                               for v, k in (("a", 24), ("b", 8), ("c", 4), ("d", 24), ("e", 24))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = d / "model.onnx"
    onnx.save(model, path)
    x = np.abs(rng.standard_normal((32, 16))).astype(np.float32)
    np.save(d / "calib.npy", x)
    return path, x


def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    path, x = build(d)
    out = d / "model.int8.onnx"
    run = subprocess.run([str(exe), "quantize", str(path), "--calib", str(d / "calib.npy"), "--preset", "w8a8",
                          "-o", str(out)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {run.stderr}")
    m = onnx.load(out)
    onnx.checker.check_model(m, full_check=True)
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    check("m1" in quantized and "c1" not in quantized, f"the MatMul before the Clip is quantized: {sorted(quantized)}")
    check("r2" in quantized and "g2" not in quantized, f"the Relu after the Gemm is quantized: {sorted(quantized)}")
    check("m3" not in quantized and "c" not in quantized, "the MatMul -> Relu graph output is not")
    dequantized = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    bank = [n for n in m.graph.node if n.op_type == "MatMul" and n.output[0] == "m4"]
    check(bool(bank) and bank[0].input[1] == "w4" and "w4_quantized" not in dequantized
          and "m4" not in quantized, f"the MatMul a Log reads stays float: {bank[0].input if bank else None}")
    check(not {"m5", "p5", "m6"} & quantized and not {"w5_quantized", "w6_quantized"} & dequantized,
          f"the STFT and filterbank before a Log stay float: {sorted(quantized)}")
    check("kept float: 3 layer(s) whose output a Log reads (filterbank, stft, mel;" in run.stdout,
          f"the report names the layers kept float: {run.stdout.splitlines()[:4]}")

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(d / "optimized.onnx")
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    opt = onnx.load(d / "optimized.onnx")
    ops = sorted(n.op_type for n in opt.graph.node)
    float_layers = [n.input[1] for n in opt.graph.node if n.op_type in ("MatMul", "Gemm")]
    check(sorted(float_layers) == ["w4", "w5", "w6"], f"ONNX Runtime fuses every layer but the front ends': {ops}")
    matrices = {i.name for i in opt.graph.initializer if len(i.dims) > 1}
    dq_weights = [n.input[0] for n in opt.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in matrices]
    check(not dq_weights, f"no weight is dequantized at run time: {dq_weights}")

    fl = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = x[:8]
    for name, q, f in zip(("a", "b", "c", "d", "e"), s.run(None, {"x": xs}), fl.run(None, {"x": xs})):
        cos = float(np.dot(q.ravel(), f.ravel()) / np.linalg.norm(q) / np.linalg.norm(f))
        check(cos > 0.999, f"{name} within cosine 0.999 of float: {cos:.5f}")
    if FAILED:
        sys.exit(f"layers before Relu/Clip: {len(FAILED)} checks failed")
    print("layers before Relu/Clip: all checks passed")


if __name__ == "__main__":
    main()
