"""`zeropoint quantize --smoothquant` checked against numpy and in ONNX Runtime.

Usage: smoothquant_reference.py ZEROPOINT DIR

On a small post-LN block whose LayerNormalization outputs have two outlier channels (γ of 25 and −18 where the
others are near 1), as BERT's do:

    x → LayerNorm₁ → ln ─┬→ MatMul wq → q ─→ Add(ln, q) → h → LayerNorm₂ → ln2 → MatMul wo → y
                         └→ MatMul wk → k (output)

- with a fixed α = 0.5, the smoothing factors are numpy's s_j = max|X_j|^α / max|W_j|^(1−α) (X the LayerNorm output
  on all calibration rows, W the rows of every weight reading it): ln is also read by the residual Add, so 1/s is an
  inserted Mul that only wq and wk read; ln2 is read by wo alone, so 1/s is folded into LayerNorm₂'s scale and bias;
  the quantized weights dequantize to diag(s)·W within half a quantization step;
- the exported model passes onnx.checker, runs in ONNX Runtime, and with SmoothQuant its outputs are closer to the
  float model's than without (on held-out inputs);
- with α searched (`--smoothquant` alone), every α is on the grid 0, 0.05, ..., 1, the error after is at most the
  error before, the outputs are again closer to float than without, and the same bytes come out at 1 and 2 threads;
- on an attention head whose value projection has two outlier columns, the context read by the output projection
  takes 1/s in the value projection (W_v's columns and b_v divided by numpy's s, no Mul inserted), the output
  projection's weight dequantizes to diag(s)·W_o, and the export is closer to float than without SmoothQuant;
- with --mode dynamic (the paper's per-tensor dynamic setting) and α = 0.5: the same 1/s (the Mul's constant, γ/s and
  β/s in LayerNorm₂), the int8 weights of MatMulInteger dequantize to diag(s)·W within half a step, the export passes
  onnx.checker and is closer to float in ONNX Runtime than the dynamic model without SmoothQuant; α searched, the
  same bytes at 1 and 2 threads; on x86 without VNNI with --reduce-range, whose 7-bit codes ORT's saturating kernels
  cannot overflow;
- on an RMSNorm written out in elementary ops (x / √(mean(x²) + ε) · γ, γ with two outlier channels, as exported
  decoders have it) read by two projections alone, 1/s goes into γ (numpy's γ/s, no Mul inserted), the weights
  dequantize to diag(s)·W within half a step, and the export is closer to float than without SmoothQuant;
- an α outside [0, 1], --smoothquant with --mode weight-only, and with --mode dynamic but no --calib (or --calib
  without --smoothquant, which would be ignored), are refused with one line and exit status 1.
"""

import json
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
T, D, N = 6, 32, 24


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def zeropoint(exe, *args, env=None, ok=True):
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)
    if ok and run.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args))} failed: {run.stderr}")
    return run


def build(d):
    rng = np.random.default_rng(3)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    g1 = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    g1[3], g1[10] = 25.0, -18.0
    g2 = g1[::-1].copy()
    w = dict(g1=g1, b1=f(D), g2=g2, b2=f(D), wq=f(D, D), wk=f(D, N), wo=f(D, N))
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["ln"], name="ln1", axis=-1),
             helper.make_node("MatMul", ["ln", "wq"], ["q"], name="fq"),
             helper.make_node("MatMul", ["ln", "wk"], ["k"], name="fk"),
             helper.make_node("Add", ["ln", "q"], ["h"], name="residual"),
             helper.make_node("LayerNormalization", ["h", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
             helper.make_node("MatMul", ["ln2", "wo"], ["y"], name="fo")]
    return save(d, "block", nodes, ["y", "k"], w, rng)


def save(d, name, nodes, outputs, w, rng):
    """The model of `nodes` (input x [n, T, D], `outputs` [n, T, N], initializers `w`) as DIR/name.onnx, 64
    calibration samples as DIR/name_calib.npz, and 32 held-out ones."""
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", T, N]) for o in outputs]
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", T, D])], outs,
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    path = d / f"{name}.onnx"
    onnx.save(m, path)
    calib = rng.standard_normal((64, T, D)).astype(np.float32)
    np.savez(d / f"{name}_calib.npz", x=calib)
    return path, w, calib, rng.standard_normal((32, T, D)).astype(np.float32)



def layer_norm(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def smoothing(x_rows, weights, alpha):
    amax = np.abs(x_rows.reshape(-1, x_rows.shape[-1])).max(0).astype(np.float64)
    wmax = np.max([np.abs(w).max(1) for w in weights], 0).astype(np.float64)
    return np.clip(amax ** alpha / wmax ** (1 - alpha), 1e-5, 1e5)


def block_scales(w, calib):
    """numpy's s at α = 0.5 for the block's two smoothed inputs: ln (read by wq, wk) and ln2 (read by wo)."""
    ln = layer_norm(calib, w["g1"], w["b1"])
    ln2 = layer_norm(ln + ln @ w["wq"], w["g2"], w["b2"])
    return smoothing(ln, [w["wq"], w["wk"]], 0.5), smoothing(ln2, [w["wo"]], 0.5)


def dequantized(inits, name):
    q, s = inits[f"{name}_quantized"].astype(np.float64), inits[f"{name}_scale"].astype(np.float64)
    z = inits.get(f"{name}_zero_point", np.zeros_like(s)).astype(np.float64)
    return (q - z) * s, s


def outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def error(path, ref, x):
    return sum(float(np.sum((a - b) ** 2)) for a, b in zip(outputs(path, x), ref))


def summary(run):
    return json.loads(run.stdout)["smoothing"]


def attention(d):
    """x → MatMul wq + bq, MatMul wk, MatMul wv + bv, each split into H heads; softmax(q·kᵀ)·v merged back → ctx →
    MatMul wo → y. Two of wv's columns are 30x the others: outlier channels of ctx."""
    rng = np.random.default_rng(5)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    heads = 4
    w = dict(wq=f(D, D), bq=f(D), wk=f(D, D), wv=f(D, D), bv=f(D), wo=f(D, N),
             split=np.array([0, 0, heads, D // heads], np.int64), merge=np.array([0, 0, D], np.int64))
    w["wv"][:, [3, 10]] *= 30
    node = helper.make_node
    nodes = [node("MatMul", ["x", "wq"], ["q0"], name="fq"), node("Add", ["q0", "bq"], ["q1"], name="fq_bias"),
             node("Reshape", ["q1", "split"], ["q2"], name="q_split"),
             node("Transpose", ["q2"], ["q"], name="q_heads", perm=[0, 2, 1, 3]),
             node("MatMul", ["x", "wk"], ["k0"], name="fk"), node("Reshape", ["k0", "split"], ["k1"], name="k_split"),
             node("Transpose", ["k1"], ["kt"], name="k_heads", perm=[0, 2, 3, 1]),
             node("MatMul", ["q", "kt"], ["scores"], name="scores"),
             node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
             node("MatMul", ["x", "wv"], ["v0"], name="fv"), node("Add", ["v0", "bv"], ["v1"], name="fv_bias"),
             node("Reshape", ["v1", "split"], ["v2"], name="v_split"),
             node("Transpose", ["v2"], ["v"], name="v_heads", perm=[0, 2, 1, 3]),
             node("MatMul", ["p", "v"], ["c0"], name="context"),
             node("Transpose", ["c0"], ["c1"], name="c_merge", perm=[0, 2, 1, 3]),
             node("Reshape", ["c1", "merge"], ["ctx"], name="c_flat"),
             node("MatMul", ["ctx", "wo"], ["y"], name="fo")]
    return save(d, "attention", nodes, ["y"], w, rng)


def check_attention(exe, d):
    path, w, calib, held_out = attention(d)
    ref = outputs(path, held_out)
    plain, out = d / "attention_plain.onnx", d / "attention_alpha.onnx"
    zeropoint(exe, "quantize", path, "--calib", d / "attention_calib.npz", "-o", plain)
    run = zeropoint(exe, "quantize", path, "--calib", d / "attention_calib.npz", "--smoothquant", "0.5", "--json",
                    "-o", out)
    report = {s["input"]: s for s in summary(run)}
    m = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ctx = outputs_at(path, calib, "ctx")
    s = smoothing(ctx, [w["wo"]], 0.5)
    check(report["ctx"]["folded_into"] == "the value projection fv"
          and not any(n.op_type == "Mul" and "ctx" in n.input for n in m.graph.node),
          f"1/s of the attention context folded into the value projection: {report['ctx']['folded_into']}")
    # W_v's rows also take the smoothing of x, which the three projections read.
    s_x = smoothing(calib, [w["wq"], w["wk"], w["wv"]], 0.5)
    deq_v, step_v = dequantized(inits, "wv")
    check(np.all(np.abs(deq_v - s_x[:, None] * w["wv"] / s) <= step_v.reshape(1, -1) / 2 + 1e-6)
          and np.allclose(inits["bv"], w["bv"] / s, rtol=1e-5),
          "W_v's columns and b_v are numpy's W_v/s and b_v/s (W_v, its rows smoothed for x, within half a step)")
    deq_o, step_o = dequantized(inits, "wo")
    check(np.all(np.abs(deq_o - s[:, None] * w["wo"]) <= step_o.reshape(1, -1) / 2 + 1e-6),
          "W_o dequantizes to diag(s)·W_o within half a step")
    smoothed, unsmoothed = error(out, ref, held_out), error(plain, ref, held_out)
    check(smoothed < unsmoothed,
          f"attention: closer to float with SmoothQuant α = 0.5 than without ({smoothed:.4g} < {unsmoothed:.4g})")


def check_dynamic(exe, d, model, ref, scales):
    """SmoothQuant before dynamic quantization, on the post-LN block (`scales`: its numpy s at α = 0.5)."""
    (path, w, _, held_out), (s1, s2) = model, scales
    # 7-bit codes on x86 without VNNI, where ORT's uint8 x int8 kernels saturate int16 pair sums.
    dyn = ["--mode", "dynamic"] + (["--reduce-range"] if int8_kernels_saturate() else [])
    plain, out = d / "dynamic_plain.onnx", d / "dynamic_alpha.onnx"
    zeropoint(exe, "quantize", path, *dyn, "-o", plain)
    run = zeropoint(exe, "quantize", path, *dyn, "--calib", d / "block_calib.npz", "--smoothquant", "0.5", "--json",
                    "-o", out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    report = {s["input"]: s for s in summary(run)}
    m = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    muls = [n for n in m.graph.node if n.op_type == "Mul" and "ln" in n.input]
    inv = next((inits[i] for i in muls[0].input if i in inits), None) if muls else None
    check(ops.count("MatMulInteger") == 3 and inv is not None and np.allclose(inv, 1 / s1, rtol=1e-5),
          f"dynamic: 3 MatMulInteger, and 1/s of ln is an inserted Mul with numpy's 1/s ({report['ln']['folded_into']})")
    check(np.allclose(inits["g2"], w["g2"] / s2, rtol=1e-5) and np.allclose(inits["b2"], w["b2"] / s2, rtol=1e-5),
          "dynamic: LayerNorm₂'s scale and bias are numpy's γ/s and β/s")
    for name, s in [("wq", s1), ("wk", s1), ("wo", s2)]:
        deq, step = dequantized(inits, name)
        check(np.all(np.abs(deq - s[:, None] * w[name]) <= step.reshape(1, -1) / 2 + 1e-6),
              f"dynamic: {name}'s MatMulInteger codes dequantize to diag(s)·W within half a step")
    smoothed, unsmoothed = error(out, ref, held_out), error(plain, ref, held_out)
    check(smoothed < unsmoothed, f"dynamic: closer to float with SmoothQuant α = 0.5 than without "
          f"({smoothed:.4g} < {unsmoothed:.4g})")
    outs = []
    for threads in ["1", "2"]:
        o = d / f"dynamic_auto{threads}.onnx"
        run = zeropoint(exe, "quantize", path, *dyn, "--calib", d / "block_calib.npz", "--smoothquant", "--json",
                        "-o", o, env={**os.environ, "RAYON_NUM_THREADS": threads})
        outs.append(o.read_bytes())
    found = summary(run)
    check(outs[0] == outs[1] and all(s["error_after"] <= s["error_before"] for s in found),
          f"dynamic, α searched: error never worse, the same bytes at 1 and 2 threads: "
          f"{[(s['input'], s['alpha']) for s in found]}")


def rms_norm(d):
    """x → RMSNorm (Mul, ReduceMean, Add ε, Sqrt, Div, Mul γ) → r → MatMul wq → q, MatMul wk → k."""
    rng = np.random.default_rng(7)
    f = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    g = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
    g[5], g[20] = 30.0, -20.0
    w = dict(g=g, eps=np.array(1e-5, np.float32), axes=np.array([-1], np.int64), wq=f(D, N), wk=f(D, N))
    node = helper.make_node
    nodes = [node("Mul", ["x", "x"], ["sq"], name="square"), node("ReduceMean", ["sq", "axes"], ["ms"], name="mean"),
             node("Add", ["ms", "eps"], ["mse"], name="plus_eps"), node("Sqrt", ["mse"], ["rms"], name="root"),
             node("Div", ["x", "rms"], ["xn"], name="normalize"), node("Mul", ["xn", "g"], ["r"], name="gain"),
             node("MatMul", ["r", "wq"], ["q"], name="fq"), node("MatMul", ["r", "wk"], ["k"], name="fk")]
    return save(d, "rms", nodes, ["q", "k"], w, rng)


def check_rms_norm(exe, d):
    path, w, calib, held_out = rms_norm(d)
    ref = outputs(path, held_out)
    plain, out = d / "rms_plain.onnx", d / "rms_alpha.onnx"
    zeropoint(exe, "quantize", path, "--calib", d / "rms_calib.npz", "-o", plain)
    run = zeropoint(exe, "quantize", path, "--calib", d / "rms_calib.npz", "--smoothquant", "0.5", "--json", "-o", out)
    report = {s["input"]: s for s in summary(run)}
    m = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    x = calib.astype(np.float64)
    r = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w["g"]
    s = smoothing(r, [w["wq"], w["wk"]], 0.5)
    check(report["r"]["folded_into"] == "the constant of Mul gain"
          and sum(n.op_type == "Mul" for n in m.graph.node) == 2
          and np.allclose(inits["g"], w["g"] / s, rtol=1e-5),
          f"RMSNorm: 1/s folded into γ, numpy's γ/s, no Mul inserted: {report['r']['folded_into']}")
    for name in ["wq", "wk"]:
        deq, step = dequantized(inits, name)
        check(np.all(np.abs(deq - s[:, None] * w[name]) <= step.reshape(1, -1) / 2 + 1e-6),
              f"RMSNorm: {name} dequantizes to diag(s)·W within half a step")
    smoothed, unsmoothed = error(out, ref, held_out), error(plain, ref, held_out)
    check(smoothed < unsmoothed,
          f"RMSNorm: closer to float with SmoothQuant α = 0.5 than without ({smoothed:.4g} < {unsmoothed:.4g})")


def outputs_at(path, x, value):
    """`value` of the float model at `path` on `x`, in ONNX Runtime."""
    m = onnx.load(path)
    m.graph.output.append(helper.make_tensor_value_info(value, TensorProto.FLOAT, None))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run([value], {"x": x})[0]


def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    path, w, calib, held_out = build(d)
    ref = outputs(path, held_out)
    plain = d / "plain.onnx"
    zeropoint(exe, "quantize", path, "--calib", d / "block_calib.npz", "-o", plain)
    plain_error = error(plain, ref, held_out)

    out = d / "alpha.onnx"
    run = zeropoint(exe, "quantize", path, "--calib", d / "block_calib.npz", "--smoothquant", "0.5", "--json", "-o", out)
    onnx.checker.check_model(onnx.load(out), full_check=True)
    report = {s["input"]: s for s in summary(run)}
    m = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    s1, s2 = block_scales(w, calib)
    muls = [n for n in m.graph.node if n.op_type == "Mul" and "ln" in n.input]
    check(len(muls) == 1 and report["ln"]["folded_into"] == f"Mul {muls[0].name}",
          f"1/s of ln is an inserted Mul (ln is also read by the residual Add): {report['ln']['folded_into']}")
    inv = next((inits[i] for i in muls[0].input if i in inits), None) if muls else None
    check(inv is not None and np.allclose(inv, 1 / s1, rtol=1e-5),
          f"the Mul's constant is numpy's 1/s (max rel. diff {np.max(np.abs(inv * s1 - 1)) if inv is not None else '-'})")
    add = next(n for n in m.graph.node if n.op_type == "Add" and n.name == "residual")
    check("ln" in add.input, "the residual Add reads the LayerNorm output unsmoothed")
    for name in ["wq", "wk"]:
        deq, s = dequantized(inits, name)
        target = s1[:, None] * w[name]
        check(np.all(np.abs(deq - target) <= s.reshape(1, -1) / 2 + 1e-6),
              f"{name} dequantizes to diag(s)·W within half a step")
    check(report["ln2"]["folded_into"] == "LayerNormalization ln2",
          f"1/s of ln2 folded into LayerNorm₂ (only wo reads it): {report['ln2']['folded_into']}")
    check(np.allclose(inits["g2"], w["g2"] / s2, rtol=1e-5) and np.allclose(inits["b2"], w["b2"] / s2, rtol=1e-5),
          "LayerNorm₂'s scale and bias are numpy's γ/s and β/s")
    fixed_error = error(out, ref, held_out)
    check(fixed_error < plain_error,
          f"closer to float with SmoothQuant α = 0.5 than without (squared error {fixed_error:.4g} < {plain_error:.4g})")

    outs, errors = [], []
    for threads in ["1", "2"]:
        o = d / f"auto{threads}.onnx"
        run = zeropoint(exe, "quantize", path, "--calib", d / "block_calib.npz", "--smoothquant", "--json", "-o", o,
                        env={**os.environ, "RAYON_NUM_THREADS": threads})
        outs.append(o.read_bytes())
    found = summary(run)
    on_grid = all(abs(s["alpha"] * 20 - round(s["alpha"] * 20)) < 1e-9 for s in found)
    check(on_grid and all(s["error_after"] <= s["error_before"] for s in found),
          f"searched α on the grid, error never worse: {[(s['input'], s['alpha']) for s in found]}")
    auto_error = error(d / "auto2.onnx", ref, held_out)
    check(auto_error < plain_error, f"closer to float with α searched than without ({auto_error:.4g} < {plain_error:.4g})")
    check(outs[0] == outs[1], "the same bytes at 1 and 2 threads")

    check_attention(exe, d)
    check_rms_norm(exe, d)
    check_dynamic(exe, d, (path, w, calib, held_out), ref, (s1, s2))

    bad = d / "bad.onnx"
    run = zeropoint(exe, "quantize", path, "--calib", d / "block_calib.npz", "--smoothquant", "1.5", "-o", bad, ok=False)
    lines = run.stderr.strip().splitlines()
    check(run.returncode == 1 and len(lines) == 1 and "--smoothquant" in lines[0] and not bad.exists(),
          f"α = 1.5 refused in one line: {lines[0] if lines else '(nothing)'}")
    calib_args = ["--calib", d / "block_calib.npz"]
    for what, args in [("--mode weight-only --smoothquant", ["--mode", "weight-only", "--smoothquant", *calib_args]),
                       ("--mode dynamic --smoothquant without --calib", ["--mode", "dynamic", "--smoothquant"]),
                       ("--mode dynamic --calib without --smoothquant", ["--mode", "dynamic", *calib_args])]:
        run = zeropoint(exe, "quantize", path, *args, "-o", bad, ok=False)
        lines = run.stderr.strip().splitlines()
        check(run.returncode == 1 and len(lines) == 1 and "smooth" in lines[0] and not bad.exists(),
              f"{what} refused in one line: {lines[0] if lines else '(nothing)'}")
    if FAILED:
        sys.exit(f"smoothquant reference: {len(FAILED)} checks failed")
    print("smoothquant reference: all checks passed")


if __name__ == "__main__":
    main()
