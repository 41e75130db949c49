"""`zeropoint quantize --mode dynamic` checked against numpy and in ONNX Runtime.

Usage: dynamic_reference.py ZEROPOINT DIR

On a small model with every layer kind dynamic quantization rewrites (an embedding table looked up by `ids`, a MatMul
on a 3-D input whose value two MatMuls share, a transB Gemm with a bias, and a grouped Conv with a bias):

- the weights in the file are numpy's symmetric int8 per-channel quantization of the float ones (scale = max|w| /
  127 per output channel, codes rounded half to even), and the tables numpy's 8-bit per-row blocks;
- ONNX Runtime's output equals a numpy simulation written from the ONNX specifications of DynamicQuantizeLinear
  (uint8, scale = (max(x, 0) − min(x, 0)) / 255, zero-point rounded half to even and saturated), MatMulInteger and
  ConvInteger (int32 products of the codes minus their zero-points), then the scale products and biases; on x86
  CPUs without VNNI, ORT's uint8 × int8 MatMul kernel sums pairs of products in int16 with saturation (AVX2's
  vpmaddubsw), and its output must then equal the simulation that saturates the same way;
- the model passes onnx.checker, one DynamicQuantizeLinear serves both MatMuls reading the same value, and the
  output stays within cosine 0.999 of the float model's;
- zeropoint's own executor (`zeropoint run`) gives the exact simulation's outputs, and ONNX Runtime's where ORT
  is exact (without graph optimizations, which may fuse a DequantizeLinear into a MatMul of another precision);
- without --conv-integer the Conv stays float;
- the same bytes come out at 1 and 2 threads;
- asymmetric or blocked weight schemes are refused with one line and exit status 1;
- a model of Convs alone is refused in one line that names --conv-integer (Convs stay float by default), and
  quantized with it.

With --per-token, on the same model:

- each MatMul and Gemm input is quantized per row (its last axis) on a symmetric grid: scale = max(max|row| / 127,
  the smallest normal float32), codes = x / scale rounded half to even, stored as uint8 with zero-point 128; one
  quantizer serves both MatMuls; the Conv's input stays DynamicQuantizeLinear;
- ONNX Runtime's output equals numpy's simulation of that, and so does zeropoint's executor, also where a row is all
  zeros (codes 128, not 0/0); on x86 without VNNI with --reduce-range, as for the LSTM;
- with one token 100 times larger than the others, per-row codes keep the other samples' outputs closer to float
  than per-tensor codes do;
- --per-token without --mode dynamic is refused in one line;
- a MatMul on a 3-D input followed by an Add of a constant bias (as BERT exports write a linear layer) gives numpy's
  output in ONNX Runtime too: ONNX Runtime fuses such an Add into the MatMulIntegerToFloat it makes of the standard
  form, and its kernel then multiplies the bias by the row scales, so these layers are written as
  MatMulIntegerToFloat without a bias, and the Add.

And on a model with two LSTMs (one bidirectional with biases, initial states and sequence lengths all shorter than X;
one forward) and a model with a batch-first LSTM:

- one LSTM becomes ONNX Runtime's DynamicQuantizeLSTM, whose W and R are numpy's symmetric int8 quantization per
  gate row, transposed to [directions, input, 4·hidden], with [directions, 4·hidden] scales (per channel) or one per
  direction (per tensor), zero-points 0; the one named in --exclude stays float; a batch-first LSTM (the operator
  has no layout) is not quantized: alone in a model, it leaves nothing to quantize, said in one line;
- ONNX Runtime's output of it stays within cosine 0.999 of the float model's, and zeropoint's executor, which rounds
  X and each step's hidden state to uint8 as ONNX Runtime does, gives ONNX Runtime's outputs on one thread to 1e-5
  (with more threads, ONNX Runtime rounds the parts of a batch it gives each thread on grids of their own); on x86
  without VNNI, whose int8 LSTM kernel saturates int16 pair sums (per-channel cosine 0.9943 at 8 bits), the weights
  are quantized with --reduce-range, the remedy zeropoint suggests there: 7-bit codes, whose pair sums fit in 16
  bits, held to the same checks.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ort_kernels import int8_kernels_saturate

FAILED = []
V, D, N1, N2, C, G = 30, 64, 48, 40, 8, 2


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def zeropoint(exe, *args, env=None, ok=True):
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)
    if ok and run.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args))} failed: {run.stderr}")
    return run


def refused(exe, out, *args):
    """`zeropoint quantize ARGS -o OUT`, expected to be refused: whether it exited with status 1, one line on stderr
    and no OUT, and that line."""
    run = zeropoint(exe, "quantize", *args, "-o", out, ok=False)
    lines = run.stderr.strip().splitlines()
    return run.returncode == 1 and len(lines) == 1 and not out.exists(), lines[0] if lines else "(nothing)"


def build(d):
    rng = np.random.default_rng(1)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    w = dict(emb=f(V, D), wa=f(D, N1), wb=f(D, N1), wg=f(N2, 2 * N1), cg=f(N2), wc=f(C, 4 // G, 3, 3), bc=f(C))
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="lookup"),
             helper.make_node("Add", ["x", "e"], ["xe"], name="add"),
             helper.make_node("MatMul", ["xe", "wa"], ["a"], name="fa"),
             helper.make_node("MatMul", ["xe", "wb"], ["b"], name="fb"),
             helper.make_node("Concat", ["a", "b"], ["ab"], name="cat", axis=-1),
             helper.make_node("ReduceMean", ["ab", "axes1"], ["m"], name="pool", keepdims=0),
             helper.make_node("Gemm", ["m", "wg", "cg"], ["y"], name="head", transB=1),
             helper.make_node("Conv", ["img", "wc", "bc"], ["z"], name="conv", group=G, pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [numpy_helper.from_array(np.array([1]), "axes1")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, D]),
                                       helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 5]),
                                       helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N2]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", C, 6, 6])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    path = d / "layers.onnx"
    onnx.save(m, path)
    feeds = dict(x=rng.standard_normal((3, 5, D)).astype(np.float32), ids=rng.integers(0, V, (3, 5)),
                 img=rng.standard_normal((3, 4, 6, 6)).astype(np.float32))
    return path, w, feeds


def dynamic_quantize(x):
    """DynamicQuantizeLinear, per the ONNX specification."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = np.float32((hi - lo) / 255) if hi > lo else np.float32(0)
    z = np.clip(np.round(-lo / s), 0, 255) if s > 0 else 0.0
    q = np.clip(np.round(x / s) + z, 0, 255) if s > 0 else np.zeros_like(x)
    return q.astype(np.int64), s, int(z)


def int8_per_channel(w, axis, qmax=127):
    absmax = np.max(np.abs(w), axis=tuple(i for i in range(w.ndim) if i != axis), keepdims=True)
    s = (absmax.astype(np.float64) / qmax).astype(np.float32)
    return np.clip(np.round(w / s), -qmax - 1, qmax).astype(np.int64), s


def conv2d(x, w, group, pad):
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, m, h, wd), np.int64 if x.dtype == np.int64 else np.float64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for i in range(h):
            for j in range(wd):
                out[:, o, i, j] = np.sum(xp[:, g * cg:(g + 1) * cg, i:i + kh, j:j + kw] * w[o], axis=(1, 2, 3))
    return out


def exact_matmul(q, z, wq):
    """MatMulInteger as specified: int32 sums of (code − zero-point) × weight code."""
    return (q - z) @ wq


def avx2_matmul(q, z, wq):
    """MatMulInteger as ONNX Runtime's uint8 × int8 kernel computes it on x86 without VNNI: the raw uint8 codes
    times the weights, adjacent pairs along K summed in int16 with saturation (vpmaddubsw), then the zero-point
    term subtracted exactly."""
    q, wq = q.astype(np.int64), wq.astype(np.int64)
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.int64)], -1)
        wq = np.concatenate([wq, np.zeros((1, wq.shape[1]), np.int64)])
    pairs = q[..., 0::2, None] * wq[0::2] + q[..., 1::2, None] * wq[1::2]
    return np.clip(pairs, -32768, 32767).sum(-2) - z * wq.sum(0)


def simulate(w, feeds, table, matmul=exact_matmul):
    """The dynamic model in numpy: the table as read from the file, every layer's codes computed here."""
    xe = feeds["x"] + table[feeds["ids"]]
    q, s, z = dynamic_quantize(xe)
    outs = []
    for name in ["wa", "wb"]:
        wq, ws = int8_per_channel(w[name], 1)
        outs.append(matmul(q, z, wq).astype(np.float32) * (s * ws.reshape(-1)))
    m = np.concatenate(outs, -1).mean(1)
    qm, sm, zm = dynamic_quantize(m)
    wq, ws = int8_per_channel(w["wg"], 0)
    y = matmul(qm, zm, wq.T).astype(np.float32) * (sm * ws.reshape(-1)) + w["cg"]
    qi, si, zi = dynamic_quantize(feeds["img"])
    wq, ws = int8_per_channel(w["wc"], 0)
    zc = conv2d(qi - zi, wq, G, 1).astype(np.float32) * (si * ws.reshape(-1, 1, 1)) + w["bc"].reshape(-1, 1, 1)
    return y, zc


def per_row_quantize(x):
    """The --per-token quantizer in numpy: symmetric int8 per row of the last axis."""
    s = np.maximum(np.abs(x).max(-1, keepdims=True) / np.float32(127), np.finfo(np.float32).tiny)
    return np.round(x / s).astype(np.int64), s


def simulate_per_token(w, feeds, table, qmax):
    """The --per-token model in numpy, weights on ±qmax (its Gemm output; the Conv as in simulate)."""
    xe = feeds["x"] + table[feeds["ids"]]
    q, s = per_row_quantize(xe)
    outs = []
    for name in ["wa", "wb"]:
        wq, ws = int8_per_channel(w[name], 1, qmax)
        outs.append(exact_matmul(q + 128, 128, wq).astype(np.float32) * (s * ws.reshape(-1)))
    m = np.concatenate(outs, -1).mean(1)
    qm, sm = per_row_quantize(m)
    wq, ws = int8_per_channel(w["wg"], 0, qmax)
    return exact_matmul(qm + 128, 128, wq.T).astype(np.float32) * (sm * ws.reshape(-1)) + w["cg"]


def per_token_case(exe, d, path, w, feeds):
    # On x86 without VNNI, ONNX Runtime fuses MatMulInteger, Cast and Mul into a MatMulIntegerToFloat whose uint8 ×
    # int8 kernel saturates int16 pair sums in an order avx2_matmul does not reproduce (measured, 0.59 apart on this
    # model, where unfused MatMulIntegers match it exactly): 7-bit weights cannot overflow them, so the output is exact.
    reduce = ["--reduce-range"] if int8_kernels_saturate() else []
    qmax = 63 if reduce else 127
    out = d / "layers.per_token.onnx"
    zeropoint(exe, "quantize", path, "--mode", "dynamic", "--per-token", "--conv-integer", *reduce, "-o", out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    table, m, _ = read_table(out)
    ops = [n.op_type for n in m.graph.node]
    check(ops.count("QuantizeLinear") == 2 and ops.count("DynamicQuantizeLinear") == 1
          and ops.count("MatMulInteger") == 2 and ops.count("MatMulIntegerToFloat") == 1
          and ops.count("ConvInteger") == 1,
          f"--per-token: one per-row quantizer per MatMul or Gemm input (2), the Conv's input per tensor, the Gemm "
          f"with its bias as MatMulIntegerToFloat and an Add: {sorted(set(ops))}")
    # The first token of the first sample is all zeros where the quantized model adds its table.
    feeds = {**feeds, "x": feeds["x"].copy()}
    feeds["x"][0, 0] = -table[feeds["ids"][0, 0]]
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    ys = simulate_per_token(w, feeds, table, qmax)
    check(np.isfinite(y).all() and np.allclose(y, ys, rtol=1e-5, atol=1e-5),
          f"--per-token{' ' + reduce[0] if reduce else ''}: ONNX Runtime's output is numpy's per-row simulation, a "
          f"row of zeros included (max |diff| {np.abs(y - ys).max():.1e})")
    diff = max_diff(engine_outputs(exe, out, feeds, d)[:1], [ys])
    check(diff < 1e-5, f"--per-token: zeropoint's executor gives the simulation (max |diff| {diff:.1e})")
    per_tensor = d / "per_tensor.onnx"
    zeropoint(exe, "quantize", path, "--mode", "dynamic", *reduce, "-o", per_tensor)
    loud = {**feeds, "x": feeds["x"].copy()}
    loud["x"][0, 1] *= 100
    # The other samples' outputs: a per-tensor grid spans the loud token's range in all of them.
    yf = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, loud)[0][1:]
    cos = [cosine(ort.InferenceSession(str(o), providers=["CPUExecutionProvider"]).run(None, loud)[0][1:], yf)
           for o in [out, per_tensor]]
    check(cos[0] > 0.999 and cos[0] > cos[1], f"--per-token with one token 100x the others: cosine to float of the "
          f"samples without it {cos[0]:.5f} per row against {cos[1]:.5f} per tensor")
    for mode in [[], ["--mode", "weight-only"]]:
        ok, line = refused(exe, d / "bad.onnx", path, *mode, "--per-token")
        check(ok and "--mode dynamic" in line, f"--per-token outside --mode dynamic refused in one line: {line}")
    rng = np.random.default_rng(2)
    wm, bm = (rng.standard_normal((D, N1)) * 0.3).astype(np.float32), rng.standard_normal(N1).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "wm"], ["h"], name="linear"),
                           helper.make_node("Add", ["h", "bm"], ["y"], name="bias")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, N1])],
                          [numpy_helper.from_array(wm, "wm"), numpy_helper.from_array(bm, "bm")])
    linear = d / "linear.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), linear)
    out = d / "linear.per_token.onnx"
    zeropoint(exe, "quantize", linear, "--mode", "dynamic", "--per-token", *reduce, "-o", out)
    x = feeds["x"]
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q, sx = per_row_quantize(x)
    wq, ws = int8_per_channel(wm, 1, qmax)
    ys = exact_matmul(q + 128, 128, wq).astype(np.float32) * ws.reshape(-1) * sx + bm
    kinds = [(n.op_type, n.domain) for n in onnx.load(out).graph.node]
    check(("MatMulIntegerToFloat", "com.microsoft") in kinds and ("Add", "") in kinds
          and np.allclose(y, ys, rtol=1e-5, atol=1e-5), f"--per-token: a MatMul and an Add of a constant bias, "
          f"written as MatMulIntegerToFloat and the Add, give numpy's output in ONNX Runtime (max |diff| "
          f"{np.abs(y - ys).max():.1e})")


def read_table(path):
    """The GatherBlockQuantized table, dequantized per the contrib operator's documentation (8-bit)."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    n = next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized")
    bs = next(helper.get_attribute_value(a) for a in n.attribute if a.name == "block_size")
    data, s = inits[n.input[0]].astype(np.float64), inits[n.input[2]].astype(np.float64)
    z = inits[n.input[3]].astype(np.float64) if len(n.input) > 3 else np.full_like(s, 128)
    cols = data.shape[1]
    return ((data - np.repeat(z, bs, 1)[:, :cols]) * np.repeat(s, bs, 1)[:, :cols]).astype(np.float32), m, inits


def engine_outputs(exe, model, feeds, d):
    """zeropoint's own executor (`zeropoint run`) on the feeds: its outputs in the model's order."""
    np.savez(d / "feeds.npz", **feeds)
    out = d / "engine"
    zeropoint(exe, "run", model, "-i", d / "feeds.npz", "-o", out)
    return [np.load(out / (o.name + ".npy")) for o in onnx.load(model).graph.output]


def max_diff(a, b):
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b))


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    path, w, feeds = build(d)
    out = d / "layers.dynamic.onnx"
    zeropoint(exe, "quantize", path, "--mode", "dynamic", "--conv-integer", "-o", out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    table, m, inits = read_table(out)
    ops = [n.op_type for n in m.graph.node]
    check(ops.count("DynamicQuantizeLinear") == 3 and ops.count("MatMulInteger") == 3 and ops.count("ConvInteger") == 1,
          f"one DynamicQuantizeLinear per quantized value (3), 3 MatMulInteger, 1 ConvInteger: {sorted(set(ops))}")
    for name, axis in [("wa", 1), ("wb", 1), ("wg", 0), ("wc", 0)]:
        wq, ws = int8_per_channel(w[name], axis)
        codes = inits.get(f"{name}_quantized")
        stored = codes.T if name == "wg" else codes  # MatMulInteger reads [K, N]
        check(codes is not None and np.array_equal(stored, wq) and np.allclose(inits[f"{name}_scale"].reshape(-1),
                                                                                ws.reshape(-1), rtol=1e-7),
              f"{name}: int8 codes and scales are numpy's symmetric per-channel quantization")
    e = w["emb"]  # D = 64 < 128: one block per row
    lo, hi = e.min(1, keepdims=True).clip(max=0).astype(np.float64), e.max(1, keepdims=True).clip(min=0).astype(np.float64)
    rs = ((hi - lo) / 255).astype(np.float32).astype(np.float64)
    rz = np.clip(np.round(-lo / rs), 0, 255)
    expect = (np.clip(np.round(e / rs + rz), 0, 255) - rz) * rs
    check(np.allclose(table, expect, atol=1e-6), "embedding table: numpy's 8-bit asymmetric per-row quantization")
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, z = s.run(None, feeds)
    ys, zs = simulate(w, feeds, table)
    saturates = int8_kernels_saturate()
    ya = simulate(w, feeds, table, avx2_matmul)[0] if saturates else ys
    kernel = "int16 pair-saturating (x86 without VNNI)" if saturates else "exact"
    check(np.allclose(y, ya, rtol=1e-4, atol=1e-4), f"ONNX Runtime's Gemm output is numpy's {kernel} simulation "
          f"(max |diff| {np.abs(y - ya).max():.1e}; exact simulation {np.abs(y - ys).max():.1e})")
    check(np.allclose(z, zs, rtol=1e-4, atol=1e-4), f"ONNX Runtime's ConvInteger output is numpy's simulation "
          f"(max |diff| {np.abs(z - zs).max():.1e})")
    engine = engine_outputs(exe, out, feeds, d)
    diff = max_diff(engine, [ys, zs])
    check(diff < 1e-4, f"zeropoint's executor (DynamicQuantizeLinear, MatMulInteger, ConvInteger) gives the exact "
          f"simulation (max |diff| {diff:.1e})")
    if not saturates:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        plain_ort = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, feeds)
        diff = max_diff(engine, plain_ort)
        check(diff < 1e-4, f"zeropoint's executor runs it as ONNX Runtime does (max |diff| {diff:.1e})")
    yf, zf = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    check(cosine(y, yf) > 0.999 and cosine(z, zf) > 0.999,
          f"close to float: cosine {cosine(y, yf):.5f} and {cosine(z, zf):.5f}")
    plain = d / "no_conv.onnx"
    zeropoint(exe, "quantize", path, "--mode", "dynamic", "-o", plain)
    ops = [n.op_type for n in onnx.load(plain).graph.node]
    check("Conv" in ops and "ConvInteger" not in ops and ops.count("MatMulInteger") == 3,
          "without --conv-integer the Conv stays float, the MatMuls are quantized")
    outs = []
    for threads in ["1", "2"]:
        o = d / f"t{threads}.onnx"
        zeropoint(exe, "quantize", path, "--mode", "dynamic", "--conv-integer", "--weight-range", "mse", "-o", o,
                  env={**os.environ, "RAYON_NUM_THREADS": threads})
        outs.append(o.read_bytes())
    check(outs[0] == outs[1], "the same bytes at 1 and 2 threads")
    for spec in ["int8,asym,per-channel", "int8,sym,per-block=32"]:
        ok, line = refused(exe, d / "bad.onnx", path, "--mode", "dynamic", "--weights", spec)
        check(ok, f"--weights {spec} refused in one line: {line}")
    conv_only = d / "conv_only.onnx"
    g = helper.make_graph([helper.make_node("Conv", ["img", "wc", "bc"], ["z"], group=G, pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["n", 4, 6, 6])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", C, 6, 6])],
                          [numpy_helper.from_array(w["wc"], "wc"), numpy_helper.from_array(w["bc"], "bc")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), conv_only)
    o = d / "conv_only.dynamic.onnx"
    ok, line = refused(exe, o, conv_only, "--mode", "dynamic")
    check(ok and "--conv-integer" in line
          and zeropoint(exe, "quantize", conv_only, "--mode", "dynamic", "--conv-integer", "-o", o).returncode == 0,
          f"a model of Convs alone: refused in one line that names --conv-integer, quantized with it: {line}")
    per_token_case(exe, d, path, w, feeds)
    lstm_case(exe, d)
    if FAILED:
        sys.exit(f"dynamic reference: {len(FAILED)} checks failed")
    print("dynamic reference: all checks passed")


def build_lstm(d):
    """Two LSTMs: "bi" (bidirectional, B, initial states, sequence lengths) and "ex" (forward, to be excluded); and
    a model of one batch-first LSTM."""
    rng = np.random.default_rng(2)
    seq, batch, k, h = 7, 3, 10, 12
    f = lambda *s: (rng.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    w = dict(W=f(2, 4 * h, k), R=f(2, 4 * h, h), B=f(2, 8 * h), h0=f(2, batch, h), c0=f(2, batch, h),
             Wf=f(1, 4 * h, k), Rf=f(1, 4 * h, h))
    lens = np.array([6, 4, 5], np.int32)  # all shorter than X: ONNX Runtime computes 6 steps
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "lens", "h0", "c0"], ["y", "yh", "yc"], name="bi",
                              direction="bidirectional", hidden_size=h),
             helper.make_node("LSTM", ["xb", "Wf", "Rf"], ["yb"], name="ex", hidden_size=h)]
    inits = [numpy_helper.from_array(v, n) for n, v in w.items()] + [numpy_helper.from_array(lens, "lens")]
    g = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, k]),
                                          helper.make_tensor_value_info("xb", TensorProto.FLOAT, [seq, batch, k])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                           [("y", [seq, 2, batch, h]), ("yh", [2, batch, h]), ("yc", [2, batch, h]),
                            ("yb", [seq, 1, batch, h])]],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    path = d / "lstm.onnx"
    onnx.save(m, path)
    feeds = dict(x=rng.standard_normal((seq, batch, k)).astype(np.float32),
                 xb=rng.standard_normal((seq, batch, k)).astype(np.float32))
    feeds["x"][6:] *= 10  # past every entry's length: outside the range X is rounded on
    nodes[1].attribute.append(helper.make_attribute("layout", 1))
    g = helper.make_graph(nodes[1:], "bf", [helper.make_tensor_value_info("xb", TensorProto.FLOAT, [batch, seq, k])],
                          [helper.make_tensor_value_info("yb", TensorProto.FLOAT, [batch, seq, 1, h])], inits[5:7])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), d / "lstm_bf.onnx")
    return path, w, feeds


def lstm_case(exe, d):
    path, w, feeds = build_lstm(d)
    float_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    # On x86 without VNNI ORT's LSTM kernel adds int16 pairs of products with saturation, as its MatMul does
    # (measured on an AVX2-only AMD EPYC: per-channel cosine 0.99423 at 8 bits): 7-bit codes cannot overflow them.
    reduce = ["--reduce-range"] if int8_kernels_saturate() else []
    qmax = 63 if reduce else 127
    for granularity in ["per-channel", "per-tensor"]:
        out = d / f"lstm.{granularity}.onnx"
        zeropoint(exe, "quantize", path, "--mode", "dynamic", "--weights", f"int8,sym,{granularity}", *reduce,
                  "--exclude", "ex", "-o", out)
        m = onnx.load(out)
        onnx.checker.check_model(m, full_check=True)
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        kinds = [(n.op_type, n.domain) for n in m.graph.node]
        check(kinds.count(("DynamicQuantizeLSTM", "com.microsoft")) == 1 and kinds.count(("LSTM", "")) == 1,
              f"{granularity}: one LSTM is DynamicQuantizeLSTM, the excluded one stays LSTM: {kinds}")
        q = next(n for n in m.graph.node if n.op_type == "DynamicQuantizeLSTM")
        for name, codes_at, scale_at in [("W", 1, 8), ("R", 2, 10)]:
            v = w[name]
            absmax = np.abs(v).max(axis=2) if granularity == "per-channel" else np.abs(v).reshape(2, -1).max(axis=1)
            scale = (absmax.astype(np.float64) / qmax).astype(np.float32)
            grid = scale[:, :, None] if granularity == "per-channel" else scale[:, None, None]
            codes = np.clip(np.round(v / grid), -qmax - 1, qmax).astype(np.int8).transpose(0, 2, 1)
            got_codes, got_scale, got_zero = (inits[q.input[i]] for i in (codes_at, scale_at, scale_at + 1))
            check(got_codes.dtype == np.int8 and np.array_equal(got_codes, codes) and got_scale.shape == scale.shape
                  and np.allclose(got_scale, scale, rtol=1e-7) and got_zero.shape == scale.shape
                  and got_zero.dtype == np.int8 and not got_zero.any(),
                  f"{granularity} {name}: numpy's {'7-bit' if reduce else 'int8'} codes per "
                  f"{'gate row' if granularity == 'per-channel' else 'direction'}, transposed, scales {scale.shape}, zero 0")
        one_thread = ort.SessionOptions()
        one_thread.intra_op_num_threads = 1
        ort_out = ort.InferenceSession(str(out), one_thread, providers=["CPUExecutionProvider"]).run(None, feeds)
        quant_error = max_diff(ort_out[:3], float_out[:3])
        cos = min(cosine(a, b) for a, b in zip(ort_out, float_out))
        check(cos > 0.999, f"{granularity}{' ' + reduce[0] if reduce else ''}: ONNX Runtime's outputs within cosine "
              f"{cos:.5f} of the float model's")
        engine = engine_outputs(exe, out, feeds, d)
        diff = max_diff(engine, ort_out)
        check(diff < 1e-5, f"{granularity}: zeropoint's executor gives ONNX Runtime's outputs (max |diff| {diff:.1e}, "
              f"against {quant_error:.1e} between the quantized and float models)")
    ok, line = refused(exe, d / "lstm_bf.dynamic.onnx", d / "lstm_bf.onnx", "--mode", "dynamic")
    check(ok and "no MatMul, Gemm, Conv or LSTM" in line, f"a batch-first LSTM is not quantized: {line}")


if __name__ == "__main__":
    main()
