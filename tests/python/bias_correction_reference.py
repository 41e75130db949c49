"""Empirical bias correction checked against an independent implementation run by ONNX Runtime.

Usage: bias_correction_reference.py ZEROPOINT DIR

Quantizes a CNN with BatchNorms (../shared/assets/models/ccexam_svhn_cnn_bn.onnx) at int4
per-channel weights twice, without and with `--bias-correction`, on the same 16 samples, and
recomputes the correction layer by layer, in graph order, as Nagel et al. 2019 §4.2 defines it:
for layer k, ONNX Runtime runs the QDQ model without correction whose earlier layers' biases are
replaced by the corrected model's, and the mean over the samples and positions of (its output of
layer k − the float model's) per channel is the shift; the corrected bias must be the
uncorrected one less that shift, to within the int32 bias grid (scale s_x·s_w, plus the rounding
of the uncorrected bias). Also checks that the correction moves the model's output closer to
float on these samples.

Analytic bias correction (`--bias-correction analytic`) is checked against numpy: for each layer
whose input is BatchNorm → ReLU, shift = (W̃ − W)·E[x] with E[x] = γ·φ(−β/γ) + β·(1 − Φ(−β/γ))
from that BatchNorm's β and γ, W the BN-folded float weight and W̃ the export's dequantized one;
for the first layer, which reads the model's input, E[x] is the calibration data's mean per
channel. With `--bias-correction analytic-means` every other layer (after a max pool, the dense
ones) is corrected too, with E[x] the float model's mean per channel on the calibration data,
from ONNX Runtime.

Linear layers applied to a sequence, as exporters write them (MatMul, then an Add of the bias),
are corrected empirically through their Add's constant, the mean error taken per channel of the
last axis: `check_matmul_bias_adds` recomputes it as above on a two-layer MLP over 40 time steps.
"""

import math

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT.parent / "shared" / "assets" / "models" / "ccexam_svhn_cnn_bn.onnx"


def session(model, outputs):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in outputs:
        m.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    # No fusion: QDQ runs as DequantizeLinear → float op → QuantizeLinear, as simulated.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model, x, outputs):
    s = session(model, outputs)
    name = s.get_inputs()[0].name
    got = [s.run(outputs, {name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([g[j] for g in got]) for j in range(len(outputs))]


def bias_of(model, layer):
    """The layer's dequantized bias, and the DequantizeLinear's codes initializer and scale."""
    node = next(n for n in model.graph.node if n.name == layer)
    dq = next(n for n in model.graph.node if n.output[0] == node.input[2])
    init = {t.name: t for t in model.graph.initializer}
    codes = numpy_helper.to_array(init[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(init[dq.input[1]]).astype(np.float64)
    return codes * scale, dq.input[0], scale


def channel_mean(a):
    return a.astype(np.float64).mean(axis=tuple(i for i in range(a.ndim) if i != 1))


def main():
    zeropoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    x = np.random.default_rng(5).normal(0, 1, (16, 3, 32, 32)).astype(np.float32)
    np.save(out / "calib.npy", x)
    runs = {}
    for tag, extra in (("plain", []), ("corrected", ["--bias-correction"])):
        dst = out / f"{tag}.onnx"
        p = subprocess.run([str(zeropoint), "quantize", str(MODEL), "--calib", str(out / "calib.npy"),
                            "--weights", "int4,sym,per-channel", "--report-samples", "0", "-o", str(dst),
                            "--json"] + extra, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"zeropoint quantize failed: {p.stderr}")
        runs[tag] = (onnx.load(dst), json.loads(p.stdout))
    plain, _ = runs["plain"]
    corrected, summary = runs["corrected"]
    layers = [c["layer"] for c in summary["bias_corrections"]]
    assert len(layers) == 8, layers
    float_model = onnx.load(MODEL)
    # The float model's layer outputs, and the uncorrected model's (for the one-pass variant
    # that measures every layer before any is corrected, which the sequential one must beat).
    values = [next(n for n in plain.graph.node if n.name == layer).output[0] for layer in layers]
    float_means = [channel_mean(a) for a in run(float_model, x, values)]
    plain_means = [channel_mean(a) for a in run(plain, x, values)]
    worst, closer = 0.0, 0
    for k, layer in enumerate(layers):
        model = onnx.ModelProto()
        model.CopyFrom(plain)
        init = {t.name: t for t in model.graph.initializer}
        fixed = {t.name: t for t in corrected.graph.initializer}
        for earlier in layers[:k]:
            _, codes, _ = bias_of(corrected, earlier)
            _, codes_plain, _ = bias_of(model, earlier)
            init[codes_plain].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fixed[codes]), codes_plain))
        shift = channel_mean(run(model, x, [values[k]])[0]) - float_means[k]
        one_pass = plain_means[k] - float_means[k]
        before, _, scale = bias_of(plain, layer)
        after, _, _ = bias_of(corrected, layer)
        # Within the int32 grid step (twice: the corrected bias is re-quantized, the uncorrected
        # one was) and 10 % of the shift: ONNX Runtime and zeropoint round a few activations
        # differently, and each flip moves a mean by a step over the positions averaged.
        err = np.abs(after - (before - shift))
        tolerance = 2 * scale + 0.1 * np.abs(shift).max()
        worst = max(worst, float((err / tolerance).max()))
        err_one_pass = np.abs(after - (before - one_pass)).max()
        closer += int(k > 0 and err.max() < err_one_pass)
        print(f"{layer}: max |shift| {np.abs(shift).max():.4g}; corrected bias vs sequential reference "
              f"{err.max():.3g} (tolerance {tolerance.max():.3g}), vs one-pass {err_one_pass:.3g}")
    assert worst <= 1.0, worst
    assert closer == len(layers) - 1, f"closer to the sequential reference on {closer} of {len(layers) - 1}"
    print(f"every corrected layer after the first is closer to the sequential reference than to the one-pass one")
    outputs = [o.name for o in float_model.graph.output]
    ref = run(float_model, x, outputs)[0].astype(np.float64)
    sqnr = {}
    for tag, (model, _) in runs.items():
        y = run(model, x, outputs)[0]
        sqnr[tag] = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - y) ** 2))
    print(f"output SQNR on the calibration samples: {sqnr['plain']:.2f} dB without, "
          f"{sqnr['corrected']:.2f} dB with bias correction")
    assert sqnr["corrected"] > sqnr["plain"], sqnr
    check_analytic(zeropoint, out, plain, "analytic")
    check_analytic(zeropoint, out, plain, "analytic-means")
    check_matmul_bias_adds(zeropoint, out)
    print("bias correction reference: all checks passed")


def check_matmul_bias_adds(zeropoint, out):
    """x [N, 40, 6] → MatMul m1 → Add(b1, ·) → Relu → MatMul m2 → Add(·, b2 [1, 1, 5]): with
    `--bias-correction` each Add's constant is the uncorrected one less the mean error of its
    MatMul's output per channel of the last axis, measured in ONNX Runtime on the QDQ model with
    the earlier constants corrected (sequential, as above); the output gets closer to float."""
    rng = np.random.default_rng(9)
    w1 = (rng.normal(0, 1, (6, 8)) * np.exp(rng.normal(0, 1, 8))).astype(np.float32)
    w2 = rng.normal(0, 1, (8, 5)).astype(np.float32)
    b1, b2 = rng.normal(0, 0.5, 8).astype(np.float32), rng.normal(0, 0.5, (1, 1, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="m1"),
             helper.make_node("Add", ["b1", "y1"], ["z1"], name="m1_bias"),
             helper.make_node("Relu", ["z1"], ["h1"], name="r1"),
             helper.make_node("MatMul", ["h1", "w2"], ["y2"], name="m2"),
             helper.make_node("Add", ["y2", "b2"], ["y"], name="m2_bias")]
    inits = [numpy_helper.from_array(v, n) for v, n in ((w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2"))]
    float32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", float32, ["N", 40, 6])],
                              [helper.make_tensor_value_info("y", float32, ["N", 40, 5])], inits)
    src = out / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = rng.normal(0, 1, (16, 40, 6)).astype(np.float32)
    np.save(out / "mlp_calib.npy", x)
    models = {}
    for tag, extra in (("plain", []), ("corrected", ["--bias-correction"])):
        dst = out / f"mlp_{tag}.onnx"
        p = subprocess.run([str(zeropoint), "quantize", str(src), "--calib", str(out / "mlp_calib.npy"),
                            "--weights", "int4,sym,per-channel", "--report-samples", "0", "-o", str(dst),
                            "--json"] + extra, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        models[tag] = onnx.load(dst)
        if extra:
            corrected_layers = [c["layer"] for c in json.loads(p.stdout)["bias_corrections"]]
    assert corrected_layers == ["m1", "m2"], corrected_layers

    def constant(model, add):
        init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
        node = next(n for n in model.graph.node if n.name == add)
        name = next(i for i in node.input if i in init)
        return init[name], name

    last_mean = lambda a: a.astype(np.float64).reshape(-1, a.shape[-1]).mean(axis=0)
    float_means = [last_mean(a) for a in run(onnx.load(src), x, ["y1", "y2"])]
    plain, corrected = models["plain"], models["corrected"]
    for k, layer in enumerate(["m1", "m2"]):
        model = onnx.ModelProto()
        model.CopyFrom(plain)
        init = {t.name: t for t in model.graph.initializer}
        for earlier in ["m1", "m2"][:k]:
            value, _ = constant(corrected, f"{earlier}_bias")
            _, name = constant(model, f"{earlier}_bias")
            init[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
        out_value = next(n for n in model.graph.node if n.name == layer).output[0]
        shift = last_mean(run(model, x, [out_value])[0]) - float_means[k]
        before, _ = constant(plain, f"{layer}_bias")
        after, _ = constant(corrected, f"{layer}_bias")
        assert after.shape == before.shape, (after.shape, before.shape)
        err = np.abs(after.reshape(-1) - (before.reshape(-1) - shift)).max()
        # ONNX Runtime and zeropoint round a few activations differently (see main).
        tolerance = 1e-6 + 0.1 * np.abs(shift).max()
        print(f"{layer} (MatMul → Add): max |shift| {np.abs(shift).max():.4g}; corrected bias vs "
              f"sequential reference {err:.3g} (tolerance {tolerance:.3g})")
        assert np.abs(shift).max() > 1e-3 and err <= tolerance, (shift, err)
    ref = run(onnx.load(src), x, ["y"])[0].astype(np.float64)
    sqnr = {tag: 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - run(m, x, ["y"])[0]) ** 2))
            for tag, m in models.items()}
    print(f"  MLP output SQNR on the calibration samples: {sqnr['plain']:.2f} dB without, "
          f"{sqnr['corrected']:.2f} dB with bias correction")
    assert sqnr["corrected"] > sqnr["plain"], sqnr


def dequantized(model, value):
    """The float tensor a DequantizeLinear of initializers produces (per-channel along axis 0)."""
    dq = next(n for n in model.graph.node if n.output[0] == value)
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    codes, scale = init[dq.input[0]].astype(np.float64), init[dq.input[1]].astype(np.float64)
    zero = init[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    shape = (-1,) + (1,) * (codes.ndim - 1) if np.ndim(scale) == 1 else ()
    return (codes - np.reshape(zero, shape)) * np.reshape(scale, shape)


def check_analytic(zeropoint, out, plain, mode):
    dst = out / f"{mode}.onnx"
    p = subprocess.run([str(zeropoint), "quantize", str(MODEL), "--calib", str(out / "calib.npy"), "--weights",
                        "int4,sym,per-channel", "--report-samples", "0", "--bias-correction", mode, "-o",
                        str(dst), "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {p.stderr}")
    corrected = [c["layer"] for c in json.loads(p.stdout)["bias_corrections"]]
    analytic = onnx.load(dst)
    src = onnx.load(MODEL)
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in src.graph.initializer}
    by_input = {n.input[0]: n for n in src.graph.node}
    by_output = {n.output[0]: n for n in src.graph.node}
    calib = np.load(out / "calib.npy").astype(np.float64)
    layers = [n for n in src.graph.node if n.op_type in ("Conv", "Gemm")]
    # The float model's mean input of every layer but the first, from ONNX Runtime.
    inner = [n.input[0] for n in layers if n.input[0] != src.graph.input[0].name]
    measured = dict(zip(inner, (channel_mean(a) for a in run(src, calib.astype(np.float32), inner))))
    expected = []
    for layer in layers:
        relu = by_output.get(layer.input[0])
        bn_in = by_output.get(relu.input[0]) if relu is not None and relu.op_type == "Relu" else None
        if layer.input[0] == src.graph.input[0].name:
            mean_x = calib.mean(axis=tuple(a for a in range(calib.ndim) if a != 1))
        elif bn_in is not None and bn_in.op_type == "BatchNormalization":
            gamma, beta = init[bn_in.input[1]], init[bn_in.input[2]]
            z = -beta / np.abs(gamma)
            pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
            mean_x = np.abs(gamma) * pdf + beta * (1 - cdf)
        elif mode == "analytic-means":
            mean_x = measured[layer.input[0]]
        else:
            continue
        w = init[layer.input[1]]
        bn = by_input.get(layer.output[0])
        if bn is not None and bn.op_type == "BatchNormalization":
            f = init[bn.input[1]] / np.sqrt(init[bn.input[4]] + 1e-5)
            w = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
        node = next(n for n in analytic.graph.node if n.name == layer.name)
        w_q = dequantized(analytic, node.input[1])
        # Both layers' weights are [out, in, ...] (the Gemms have transB = 1).
        d = w_q - w
        shift = np.einsum("oij,i->o", d.reshape(d.shape[0], d.shape[1], -1), mean_x)
        before, _, scale = bias_of(plain, layer.name)
        after, _, _ = bias_of(analytic, layer.name)
        err = np.abs(after - (before - shift)).max()
        tolerance = (2 * scale + 1e-6).max()
        print(f"{mode} {layer.name}: max |shift| {np.abs(shift).max():.4g}, corrected bias vs numpy {err:.3g} "
              f"(tolerance {tolerance:.3g})")
        assert err <= tolerance, (layer.name, err, tolerance)
        expected.append(layer.name)
    assert corrected == expected, (corrected, expected)
    assert mode != "analytic-means" or len(expected) == len(layers), expected


if __name__ == "__main__":
    main()
