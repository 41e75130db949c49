"""AdaRound's reconstruction losses recomputed by ONNX Runtime from the exported model.

Usage: adaround_reference.py ZEROPOINT DIR

Quantizes the MNIST CNN (../shared/assets/models/ccexam_mnist_cnn.onnx, no BatchNorm, so its
weights are the float model's) at int4 per-channel weights with `--adaround` on 4 samples, which
are few enough that AdaRound takes every output position of every layer. For each layer k, in
graph order, the reported losses are recomputed as the paper's asymmetric reconstruction
through the activation (Nagel et al. 2020, §3.3, eq. 25) defines them:

    loss = Σ over output positions and channels (f(W·x + b) − f(W'·x̃ + b))² / positions

with f the Relu that follows the layer alone in the float model (conv_1, conv_4, gemm_8) and b
the float model's bias, with `--adaround-loss activation`; the last layer, gemm_10, has none,
and its loss is Σ (W·x − W'·x̃)² / positions, as every layer's is with the default
`--adaround-loss linear` (checked with `quantized`, with AdaRound's undecided weights settled
on the reconstruction error, the default, and with `--no-adaround-settle`; settling must have
turned some weights with either loss, in the layers fitted through their Relu too, and none
without it).

with x the layer's input in the float model, x̃ its input in the exported QDQ model (whose earlier
layers hold their learned weights) as ONNX Runtime computes it (with `--adaround-inputs
weights-only`: in that model with its activations' QuantizeLinear → DequantizeLinear pairs
taken out, only the weights quantized; with `--activations float`, the export itself, which has
no activation quantizers), and W' either the learned weight
(the export's dequantized one) or W rounded to nearest on the export's grid. The layer's product
is a one-node ONNX model (the layer's own node, with its bias where f is applied) run by ONNX
Runtime, and f is numpy's. The
reported losses must match within 1e-4 relative, and the learned one must not exceed the
nearest one.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ONNX Runtime without graph optimizations, the chosen values made outputs.
from bias_correction_reference import session

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT.parent / "shared" / "assets" / "models" / "ccexam_mnist_cnn.onnx"
# `--weights int4`: signed, symmetric, per channel, the full grid.
QMIN, QMAX = -8, 7


def values(model, x, names):
    """The values `names` of `model` run on `x`, one sample at a time as AdaRound's runs are."""
    s = session(model, names)
    feed = s.get_inputs()[0].name
    got = [s.run(names, {feed: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([g[j] for g in got]) for j in range(len(names))]


def product(node, x, w, b=None):
    """The layer's node on input `x`, weight `w` and bias `b` (none if None), in ONNX Runtime."""
    names = ["x", "w"] + ([] if b is None else ["b"])
    one = helper.make_node(node.op_type, names, ["y"], name="layer")
    one.attribute.extend(node.attribute)
    graph = helper.make_graph(
        [one], "layer",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = {"x": x, "w": w} | ({} if b is None else {"b": b})
    return session(model, []).run(["y"], feeds)[0].astype(np.float64)


def relu_after(model, node):
    """Whether the layer `node`'s output is read by a Relu alone in `model`."""
    readers = [n for n in model.graph.node if node.output[0] in n.input]
    return len(readers) == 1 and readers[0].op_type == "Relu"


def weights_only(model):
    """`model` with every activation's QuantizeLinear → DequantizeLinear pair bypassed."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    quantized_from = {n.output[0]: n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    bypass = {n.output[0]: quantized_from[n.input[0]] for n in m.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from}
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = bypass.get(name, name)
    return m


def positions(y):
    # A convolution's output [N, M, H, W] has N·H·W positions, a dense layer's [N, M] N.
    return y.size // y.shape[1]


def check_weights_only_export(qdq, failures):
    """`--activations float`: every DequantizeLinear reads a weight, nothing is quantized at
    run time, and the biases stay float."""
    inits = {t.name: t for t in qdq.graph.initializer}
    quantize = [n.name for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    dq_of_values = [n.name for n in qdq.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    int32 = [t.name for t in qdq.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    if quantize or dq_of_values or int32:
        failures.append(f"float activations: QuantizeLinear {quantize}, DequantizeLinear of values "
                        f"{dq_of_values}, int32 initializers {int32}")


def check(zeropoint, out, x, mode, failures, loss="activation", settle=True):
    """Quantizes with `--adaround-inputs mode` (or `--activations float`) and `--adaround-loss
    loss` (and `--no-adaround-settle` unless `settle`), checks every layer's reported losses and
    returns the report."""
    dst = out / f"adaround.{mode}.{loss}.{settle}.onnx"
    how = ["--activations", "float"] if mode == "float-activations" else ["--adaround-inputs", mode]
    how += ["--adaround-loss", loss] + ([] if settle else ["--no-adaround-settle"])
    mode = mode if loss == "activation" else f"{mode}/{loss}" + ("" if settle else "/halfway")
    p = subprocess.run([str(zeropoint), "quantize", str(MODEL), "--calib", str(out / "calib.npy"),
                        "--weights", "int4", "--adaround", "100", "--adaround-samples", "4",
                        "--report-samples", "0", "--json", "-o", str(dst)] + how,
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {p.stderr}")
    report = json.loads(p.stdout)["adaround"]
    float_model, qdq = onnx.load(MODEL), onnx.load(dst)
    float_init = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    qdq_init = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    if mode == "float-activations":
        check_weights_only_export(qdq, failures)
    samples = x[:4]
    layers = [r["layer"] for r in report]
    if layers != ["conv_1", "conv_4", "gemm_8", "gemm_10"]:
        failures.append(f"AdaRound took layers {layers}")
    for r in report:
        fnode = next(n for n in float_model.graph.node if n.name == r["layer"])
        qnode = next(n for n in qdq.graph.node if n.name == r["layer"])
        w = float_init[fnode.input[1]]
        xf, = values(float_model, samples, [fnode.input[0]])
        inputs_model = weights_only(qdq) if mode == "weights-only" else qdq
        inode = next(n for n in inputs_model.graph.node if n.name == r["layer"])
        xq, = values(inputs_model, samples, [inode.input[0]])
        wq, = values(qdq, samples[:1], [qnode.input[1]])
        # The export's weight grid: the DequantizeLinear's scale per output channel.
        dq = next(n for n in qdq.graph.node if n.output[0] == qnode.input[1])
        scale = qdq_init[dq.input[1]].astype(np.float32)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        s = scale.reshape(shape)
        nearest = (np.clip(np.floor(w / s + 0.5), QMIN, QMAX) * s).astype(np.float32)
        b, f = None, lambda y: y
        if loss == "activation" and relu_after(float_model, fnode):
            b, f = float_init[fnode.input[2]], lambda y: np.maximum(y, 0)
        if r["through_activation"] != (b is not None):
            failures.append(f"{mode} {r['layer']}: through_activation is {r['through_activation']}")
        target = f(product(fnode, xf, w, b))
        for kind, weight in (("learned", wq), ("nearest", nearest)):
            y = f(product(fnode, xq, weight, b))
            want = float(((target - y) ** 2).sum() / positions(y))
            got = r[f"loss_{kind}"]
            ok = abs(got - want) <= 1e-4 * max(abs(want), 1e-9)
            print(f"{mode:<12} {r['layer']:<8} {kind:<8} zeropoint {got:.6g}  reference {want:.6g}"
                  f"{'' if ok else '  MISMATCH'}")
            if not ok:
                failures.append(f"{mode} {r['layer']} loss_{kind}: {got} vs {want}")
        if r["loss_learned"] > r["loss_nearest"]:
            failures.append(f"{mode} {r['layer']}: learned rounding is worse than nearest")
    return report


def main():
    zeropoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    x = np.random.default_rng(3).uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    np.save(out / "calib.npy", x)
    failures = []
    reports = {mode: check(zeropoint, out, x, mode, failures)
               for mode in ("quantized", "weights-only", "float-activations")}
    # At 100 steps AdaRound leaves undecided weights to settle, with either loss. The settled
    # weights are the export's, whose losses `check` recomputes (through the Relu where fitted so).
    activation = reports["quantized"]
    settled = check(zeropoint, out, x, "quantized", failures, loss="linear")
    halfway = check(zeropoint, out, x, "quantized", failures, loss="linear", settle=False)
    counts = [[r["settled"] for r in report] for report in (activation, settled, halfway)]
    print(f"settled per layer: activation loss {counts[0]}, linear {counts[1]}, "
          f"linear without settling {counts[2]}")
    through = [r["settled"] for r in activation if r["through_activation"]]
    if not any(through) or not any(counts[1]) or any(counts[2]):
        failures.append(f"settled weights per layer {counts}: expected some with either loss "
                        "(after a Relu too), none without settling")
    if failures:
        sys.exit("adaround reference: " + "; ".join(failures))
    print("adaround reference: all checks passed")


if __name__ == "__main__":
    main()
