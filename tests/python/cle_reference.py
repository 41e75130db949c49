"""Cross-layer equalization and high-bias absorption checked against an independent numpy
implementation of their formulas (Nagel et al. 2019, arXiv 1906.04721, §4.1 and §4.1.1).

Usage: cle_reference.py ZEROPOINT DIR

Builds a small CNN with BatchNorms (Conv → BN → ReLU → depthwise Conv → BN → ReLU → 1×1 Conv →
BN → ReLU → MaxPool → Conv, a ReLU6 branch that must be refused, and a Keras-style
Conv → ReLU → BN → Conv branch, whose BN becomes a per-channel scale that no pair may use), runs
`zeropoint equalize` on it with and without bias absorption, and checks:
- the equalized weights and biases equal numpy's (BN folded, pairs equalized with
  s = sqrt(r1 / r2) in turn until no scale moves);
- after equalization each pair's output-channel ranges equal the next layer's input-channel
  ranges;
- the equalized float model computes the same function in ONNX Runtime (no absorption), and
  nearly the same with absorption (ReLU(x − c) = ReLU(x) − c where x ≥ c);
- absorption moved c = max(0, β − 3|γ|) (β, γ scaled as the channels were) as numpy says;
- no absorption into a layer that pads with zeros (c1 → dw: its border outputs would change);
- with calibration data (`--calib`), c is capped at the smallest value of the first layer's
  output on the data (from ONNX Runtime), so that the absorbed model computes the same function
  on every calibration sample;
- on the same network with its BatchNorms folded (no statistics left in the graph), c comes from
  the data alone: max(0, min(μ − 3σ, min x)) per channel, and the function is kept on the data;
- a bias too large for int32 at s_x·s_w on a per-tensor grid is clipped and reported, and the
  grid is not raised for it (`clipped_bias`);
- linear layers applied to a sequence, as exporters write them (MatMul, then an Add of the bias,
  which canonicalization cannot make a Gemm): the Add's constant is the layer's bias, scaled
  with its channels, and absorption moves c into the next layer's bias Add but never into a
  MatMul without one (`dense_bias_adds`); a Gemm → ReLU → MatMul pair with high biases on the
  data stays a valid model, the MatMul given no third input (`gemm_into_matmul`).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bias_correction_reference import session

EPS = 1e-5


def conv_bn(rng, name, cin, cout, k, group=1, pad=0, beta_shift=0.0):
    w = rng.normal(0, 1, (cout, cin // group, k, k)).astype(np.float32)
    # Channels of very different widths: what equalization is for.
    w *= np.exp(rng.normal(0, 1.5, (cout, 1, 1, 1))).astype(np.float32)
    b = rng.normal(0, 0.1, cout).astype(np.float32)
    bn = dict(
        gamma=rng.uniform(0.5, 2.0, cout).astype(np.float32),
        beta=(rng.normal(0, 0.5, cout) + beta_shift).astype(np.float32),
        mean=rng.normal(0, 0.2, cout).astype(np.float32),
        var=rng.uniform(0.5, 2.0, cout).astype(np.float32),
    )
    return dict(name=name, w=w, b=b, bn=bn, group=group, pad=pad)


def build(path):
    rng = np.random.default_rng(7)
    layers = [
        conv_bn(rng, "c1", 3, 8, 3, pad=1),
        conv_bn(rng, "dw", 8, 8, 3, group=8, pad=1),
        # A large β: high-bias absorption into c4 (unpadded, so it is exact but for x < c).
        conv_bn(rng, "c3", 8, 6, 1, beta_shift=4.0),
        conv_bn(rng, "c4", 6, 5, 3),
        conv_bn(rng, "r1", 3, 4, 1),
        conv_bn(rng, "r2", 4, 3, 1),
    ]
    nodes, inits = [], []
    for layer in layers:
        n = layer["name"]
        inits += [numpy_helper.from_array(layer["w"], f"{n}_w"), numpy_helper.from_array(layer["b"], f"{n}_b")]
        for k, v in layer["bn"].items():
            inits.append(numpy_helper.from_array(v, f"{n}_{k}"))
    def cb(layer, x, y):
        n = layer["name"]
        p = layer["pad"]
        nodes.append(helper.make_node("Conv", [x, f"{n}_w", f"{n}_b"], [f"{n}_conv"], name=n, group=layer["group"],
                                      pads=[p] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"{n}_conv"] + [f"{n}_{k}" for k in
                                      ("gamma", "beta", "mean", "var")], [y], name=f"{n}_bn", epsilon=EPS))
    c1, dw, c3, c4, r1, r2 = layers
    cb(c1, "x", "a1"); nodes.append(helper.make_node("Relu", ["a1"], ["h1"], name="relu1"))
    cb(dw, "h1", "a2"); nodes.append(helper.make_node("Relu", ["a2"], ["h2"], name="relu2"))
    cb(c3, "h2", "a3"); nodes.append(helper.make_node("Relu", ["a3"], ["h3"], name="relu3"))
    nodes.append(helper.make_node("MaxPool", ["h3"], ["p3"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    cb(c4, "p3", "y")
    # The ReLU6 branch: Clip(0, 6) is not positively homogeneous.
    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six")]
    cb(r1, "x", "b1"); nodes.append(helper.make_node("Clip", ["b1", "zero", "six"], ["g1"], name="relu6"))
    cb(r2, "g1", "z")
    # Keras' order: the BatchNorm after the ReLU becomes a 1×1 depthwise Conv (a per-channel scale).
    k1, k2 = conv_bn(rng, "k1", 3, 4, 1), conv_bn(rng, "k2", 4, 2, 1)
    for layer in (k1, k2):
        inits += [numpy_helper.from_array(layer[k], f"{layer['name']}_{k}") for k in ("w", "b")]
    inits += [numpy_helper.from_array(v, f"k_{k}") for k, v in k1["bn"].items()]
    nodes += [helper.make_node("Conv", ["x", "k1_w", "k1_b"], ["k1_conv"], name="k1"),
              helper.make_node("Relu", ["k1_conv"], ["k1_relu"], name="k1_relu"),
              helper.make_node("BatchNormalization", ["k1_relu"] + [f"k_{k}" for k in ("gamma", "beta", "mean", "var")],
                               ["k1_bn"], name="k_bn", epsilon=EPS),
              helper.make_node("Conv", ["k1_bn", "k2_w", "k2_b"], ["k"], name="k2")]
    graph = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 6, 6]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 16, 16]),
                               helper.make_tensor_value_info("k", TensorProto.FLOAT, [2, 2, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return layers


def fold(layer):
    bn = {k: v.astype(np.float64) for k, v in layer["bn"].items()}
    f = bn["gamma"] / np.sqrt(bn["var"] + EPS)
    w = layer["w"].astype(np.float64) * f[:, None, None, None]
    b = (layer["b"].astype(np.float64) - bn["mean"]) * f + bn["beta"]
    return dict(w=w, b=b, beta=bn["beta"], gamma=bn["gamma"], depthwise=layer["group"] > 1,
                scale=np.ones_like(b))


def out_range(l):
    return np.abs(l["w"]).max(axis=(1, 2, 3))


def in_range(l):
    return np.abs(l["w"]).max(axis=(1, 2, 3)) if l["depthwise"] else np.abs(l["w"]).max(axis=(0, 2, 3))


def equalize(layers, pairs):
    for _ in range(100):
        largest = 0.0
        for a, b in pairs:
            s = np.sqrt(out_range(layers[a]) / in_range(layers[b]))
            largest = max(largest, np.abs(np.log(s)).max())
            layers[a]["w"] /= s[:, None, None, None]
            layers[a]["b"] /= s
            layers[a]["scale"] *= s
            if layers[b]["depthwise"]:
                layers[b]["w"] *= s[:, None, None, None]
            else:
                layers[b]["w"] *= s[None, :, None, None]
        if largest < 1e-6:
            break


def absorb(first, second):
    c = np.maximum(0.0, (first["beta"] - 3 * np.abs(first["gamma"])) / first["scale"])
    first["b"] = first["b"] - c
    second["b"] = second["b"] + np.einsum("oikl,i->o", second["w"], c)
    return int((c > 0).sum())


def folded_model(layers, src, dst):
    """The model at `src` with every Conv → BatchNorm pair folded in numpy: no statistics left."""
    m = onnx.load(src)
    init = {t.name: t for t in m.graph.initializer}
    by_name = {l["name"]: l for l in layers}
    nodes = []
    for n in m.graph.node:
        if n.op_type == "BatchNormalization" and n.name.endswith("_bn") and n.name[:-3] in by_name:
            conv = nodes[-1]
            conv.output[0] = n.output[0]
            f = fold(by_name[n.name[:-3]])
            init[conv.input[1]] = numpy_helper.from_array(f["w"].astype(np.float32), conv.input[1])
            init[conv.input[2]] = numpy_helper.from_array(f["b"].astype(np.float32), conv.input[2])
            continue
        nodes.append(n)
    read = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "cle_folded", m.graph.input, m.graph.output,
                              [t for name, t in init.items() if name in read])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, dst)


def outputs_of(path, x, names):
    """The values `names` of the model at `path` on each batch of `x`, concatenated."""
    m = onnx.load(path)
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [s.run(names, {"x": x[i:i + 2]}) for i in range(0, len(x), 2)]
    return [np.concatenate(v).astype(np.float64) for v in zip(*runs)]


def data_absorption(zeropoint, out, src, tag, layers, calib, c_of):
    """Runs `zeropoint equalize --calib` on `src`, checks the biases against numpy's absorption of
    c = c_of(a3) (a3: c3's float output on the data, per channel) and the function kept on the
    calibration samples; returns the channels moved."""
    dst = out / f"cle_{tag}.onnx"
    p = subprocess.run([str(zeropoint), "equalize", str(src), "-o", str(dst), "--json", "--calib",
                        str(out / "calib.npz")], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"zeropoint equalize --calib failed: {p.stderr}")
    report = json.loads(p.stdout)
    ref = {l["name"]: fold(l) for l in layers}
    equalize(ref, PAIRS)
    # The pairs absorption applies to (c1 → dw is not: dw pads), each from its first layer's
    # float output on the data; each keeps the function on the data, so neither changes the
    # other's statistics.
    moved = {}
    for (a, b), value in ((("dw", "c3"), "a2"), (("c3", "c4"), "a3")):
        (out_a,) = outputs_of(src, calib, [value])
        per_channel = out_a.transpose(1, 0, 2, 3).reshape(out_a.shape[1], -1)
        c = np.maximum(0.0, c_of(a, per_channel))
        first, second = ref[a], ref[b]
        shift = c / first["scale"]
        first["b"] = first["b"] - shift
        second["b"] = second["b"] + np.einsum("oikl,i->o", second["w"], shift)
        moved[a] = int((c > 0).sum())
    got = weights_of(dst)
    worst = max(np.abs(got[n][1] - ref[n]["b"]).max() / np.abs(ref[n]["b"]).max() for n in ("dw", "c3", "c4"))
    absorbed = {p["first"]: (p["absorbed_channels"], p["statistics"]) for p in report["pairs"]}
    before, after = run(src, calib[:2]), run(dst, calib[:2])
    for i in range(2, len(calib), 2):
        before = [np.concatenate(v) for v in zip(before, run(src, calib[i:i + 2]))]
        after = [np.concatenate(v) for v in zip(after, run(dst, calib[i:i + 2]))]
    diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(before, after))
    print(f"{tag}: {moved['dw']} channels of dw into c3 and {moved['c3']} of c3 into c4 "
          f"({absorbed['c3'][1]}), biases vs numpy: max relative difference {worst:.2e}; on the "
          f"calibration samples, max relative output difference {diff:.2e}")
    assert moved["c3"] > 0, moved
    assert all(absorbed[a][0] == moved[a] for a in moved), (moved, absorbed)
    assert worst < 1e-5, worst
    assert diff < 1e-5, diff
    return moved, absorbed["c3"][1]


def a3_min(src, calib):
    (a3,) = outputs_of(src, calib, ["a3"])
    return a3.min(axis=(0, 2, 3))


def weights_of(path):
    m = onnx.load(path)
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    return {n.name: (init[n.input[1]], init[n.input[2]]) for n in m.graph.node if n.op_type == "Conv"}


def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


PAIRS = [("c1", "dw"), ("dw", "c3"), ("c3", "c4")]


def main():
    zeropoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    src = out / "cle.onnx"
    layers = build(src)
    ref = {l["name"]: fold(l) for l in layers}
    pairs = PAIRS
    equalize(ref, pairs)
    results = {}
    for tag, extra in (("plain", ["--no-bias-absorption"]), ("absorbed", []), ("relu", ["--relu6-as-relu"])):
        dst = out / f"cle_{tag}.onnx"
        p = subprocess.run([str(zeropoint), "equalize", str(src), "-o", str(dst), "--json"] + extra,
                           capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"zeropoint equalize failed: {p.stderr}")
        results[tag] = (dst, json.loads(p.stdout))

    dst, report = results["plain"]
    got = weights_of(dst)
    worst = 0.0
    for name in ("c1", "dw", "c3", "c4"):
        for g, r in zip(got[name], (ref[name]["w"], ref[name]["b"])):
            worst = max(worst, np.abs(g - r).max() / np.abs(r).max())
    print(f"equalized weights and biases vs numpy: max relative difference {worst:.2e}")
    assert worst < 1e-5, worst
    refused = {r["layer"]: r["reason"] for r in report["refused"]}
    assert [(p["first"], p["second"]) for p in report["pairs"]] == pairs, report["pairs"]
    assert "r1" in refused and "ReLU6" in refused["r1"], refused
    assert "k1" in refused and "per-channel scale" in refused["k1"], refused
    print(f"pairs {[(p['first'], p['second']) for p in report['pairs']]} in {report['rounds']} rounds; "
          f"refused: r1 ({refused['r1']}), k1 ({refused['k1']})")
    for a, b in pairs:
        l1 = dict(w=got[a][0], depthwise=False)
        l2 = dict(w=got[b][0], depthwise=b == "dw")
        gap = np.abs(out_range(l1) / in_range(l2) - 1).max()
        assert gap < 1e-4, (a, b, gap)
    print("equalized ranges: each pair's output-channel ranges equal the next layer's input-channel ranges")
    x = np.random.default_rng(3).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)
    before = run(src, x)
    after = run(dst, x)
    diff = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(before, after))
    print(f"float function kept: max relative output difference {diff:.2e}")
    assert diff < 1e-5, diff

    moved = absorb(ref["c3"], ref["c4"])
    dst, report = results["absorbed"]
    got = weights_of(dst)
    absorbed = {p["first"]: p["absorbed_channels"] for p in report["pairs"]}
    assert moved > 0 and absorbed["c3"] == moved, (moved, absorbed)
    assert absorbed["c1"] == 0 and absorbed["dw"] == 0, absorbed
    skipped = {p["first"]: p["absorption_skipped"] for p in report["pairs"]}
    assert skipped["c1"] and "pads" in skipped["c1"], skipped
    assert skipped["dw"] is None and skipped["c3"] is None, skipped
    worst = max(np.abs(got[n][1] - ref[n]["b"]).max() / np.abs(ref[n]["b"]).max() for n in ("c3", "c4"))
    print(f"high-bias absorption: {moved} channels of c3 into c4, biases vs numpy: max relative difference "
          f"{worst:.2e}")
    assert worst < 1e-5, worst
    after = run(dst, x)
    diff = float(np.abs(before[0] - after[0]).max() / np.abs(before[0]).max())
    print(f"absorbed model vs float: max relative output difference {diff:.2e}")
    assert diff < 1e-3, diff
    dst, report = results["relu"]
    assert ("r1", "r2") in [(p["first"], p["second"]) for p in report["pairs"]], report["pairs"]
    assert report["relu6_replaced"] == ["relu6"], report
    assert "Relu" in [n.op_type for n in onnx.load(dst).graph.node if n.name == "relu6"]
    print("--relu6-as-relu: the ReLU6 became a ReLU and (r1, r2) was equalized")

    # With data: c capped at the smallest value seen (BatchNorms present), or from the data alone
    # (BatchNorms folded away). On these inputs c3's output reaches below β − 3|γ| in one of the
    # two channels where that is positive, and stays above it in the other: the cap bites once.
    calib = np.random.default_rng(11).normal(0.0, 0.05, (8, 3, 16, 16)).astype(np.float32)
    np.savez(out / "calib.npz", x=calib)
    c3 = fold(layers[2])

    def bn_c(name, out_a):
        f = fold(next(l for l in layers if l["name"] == name))
        return np.minimum(f["beta"] - 3 * np.abs(f["gamma"]), out_a.min(axis=1))
    moved, source = data_absorption(zeropoint, out, src, "bn_capped", layers, calib, bn_c)
    high = c3["beta"] - 3 * np.abs(c3["gamma"])
    capped = int(((high > 0) & (high > a3_min(src, calib))).sum())
    print(f"  the data's minimum capped c on {capped} channels")
    assert source == "batch_norm" and capped > 0, (source, capped)
    folded = out / "cle_no_bn.onnx"
    folded_model(layers, src, folded)
    data_c = lambda name, a: np.minimum(a.mean(axis=1) - 3 * a.std(axis=1), a.min(axis=1))
    moved, source = data_absorption(zeropoint, out, folded, "folded", layers, calib, data_c)
    assert source == "calibration", source
    clipped_bias(zeropoint, out)
    dense_bias_adds(zeropoint, out)
    gemm_into_matmul(zeropoint, out)
    print("cle reference: all checks passed")


def clipped_bias(zeropoint, out):
    """A channel whose bias (-1e6) cannot be held in int32 at s_x·s_w, as equalization leaves
    behind a channel of near-zero weights (Keras' MobileNet): with per-tensor int8 weights the
    layer's grid stays max|W|/127, the bias is clipped, and the output is the float model's."""
    rng = np.random.default_rng(3)
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    w[0] *= 1e-7
    b = np.array([-1e6, 0.1, -0.2, 0.3], np.float32)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph(
        [conv, relu], "clip", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    src, dst = out / "clip.onnx", out / "clip_q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), src)
    x = rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    np.save(out / "clip_calib.npy", x)
    p = subprocess.run([str(zeropoint), "quantize", str(src), "--calib", str(out / "clip_calib.npy"), "--weights",
                        "int8,sym,per-tensor", "-o", str(dst)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "clipped to int32: 1 bias(es) ('b' first)" in p.stdout, p.stdout
    q = {t.name: numpy_helper.to_array(t) for t in onnx.load(dst).graph.initializer}
    w_scale = next(v for k, v in q.items() if k.startswith("w") and "scale" in k)
    assert np.isclose(w_scale, np.abs(w).max() / 127, rtol=1e-6), (w_scale, np.abs(w).max() / 127)
    codes = next(v for k, v in q.items() if v.dtype == np.int32)
    assert codes[0] == np.iinfo(np.int32).min, codes
    # Exact QDQ arithmetic: without VNNI, ORT's fused int8 Conv saturates pairs of products.
    got, ref = (session(onnx.load(m), []).run(None, {"x": x})[0] for m in (dst, src))
    err = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"a bias past int32 at a per-tensor grid: clipped, grid kept, output within {err:.1e} of float")
    assert err < 0.02 and np.all(got[:, 0] == 0), err


def dense_bias_adds(zeropoint, out):
    """x [N, T, 6] → MatMul m1 → Add(b1, ·) → ReLU → MatMul m2 → Add(·, b2 [1, 1, 7]) → ReLU →
    MatMul m3 (no bias): both pairs equalized as numpy does, the biases (the Adds' constants,
    in either operand and shape) scaled with their channels, the function kept; with data, m1's
    high values absorbed into b2, and none into m3, which has no bias to take them."""
    rng = np.random.default_rng(5)
    spread = lambda n: np.exp(rng.normal(0, 1.5, n))
    w = [rng.normal(0, 1, (6, 8)) * spread(8), rng.normal(0, 1, (8, 7)) * spread(7), rng.normal(0, 1, (7, 5))]
    # Channels 0-2 of m1's output are shifted far up: c > 0 where their spread leaves room.
    b1 = np.concatenate([[12.0, 14.0, 13.0], rng.normal(0, 0.1, 5)])
    b2 = rng.normal(0, 0.1, (1, 1, 7))
    w = [v.astype(np.float32) for v in w]
    b1, b2 = b1.astype(np.float32), b2.astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["y1"], name="m1"),
             helper.make_node("Add", ["b1", "y1"], ["z1"], name="m1_bias"),
             helper.make_node("Relu", ["z1"], ["h1"], name="r1"),
             helper.make_node("MatMul", ["h1", "w2"], ["y2"], name="m2"),
             helper.make_node("Add", ["y2", "b2"], ["z2"], name="m2_bias"),
             helper.make_node("Relu", ["z2"], ["h2"], name="r2"),
             helper.make_node("MatMul", ["h2", "w3"], ["y"], name="m3")]
    inits = [numpy_helper.from_array(v, f"w{i + 1}") for i, v in enumerate(w)]
    inits += [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(b2, "b2")]
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 200, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 200, 5])], inits)
    src = out / "dense.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)

    ref = [v.astype(np.float64) for v in w]
    bias = [b1.astype(np.float64), b2.reshape(-1).astype(np.float64)]
    scale = np.ones(8)
    for _ in range(100):
        largest = 0.0
        for a in (0, 1):
            s = np.sqrt(np.abs(ref[a]).max(axis=0) / np.abs(ref[a + 1]).max(axis=1))
            largest = max(largest, np.abs(np.log(s)).max())
            ref[a] /= s
            bias[a] /= s
            ref[a + 1] *= s[:, None]
            if a == 0:
                scale *= s
        if largest < 1e-6:
            break
    x = rng.normal(0, 1, (8, 200, 6)).astype(np.float32)
    np.savez(out / "dense_calib.npz", x=x)

    def equalized(tag, extra):
        dst = out / f"dense_{tag}.onnx"
        p = subprocess.run([str(zeropoint), "equalize", str(src), "-o", str(dst), "--json"] + extra,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        m = onnx.load(dst)
        init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
        byname = {n.name: n for n in m.graph.node}
        ws = [init[byname[f"m{i}"].input[1]] for i in (1, 2, 3)]
        bs = [next(init[i] for i in byname[f"m{i}_bias"].input if i in init) for i in (1, 2)]
        return dst, json.loads(p.stdout), ws, bs

    dst, report, ws, bs = equalized("plain", [])
    worst = max(np.abs(g - r).max() / np.abs(r).max() for g, r in zip(ws + [b.reshape(-1) for b in bs], ref + bias))
    pairs = [(p["first"], p["second"], p["absorption_skipped"]) for p in report["pairs"]]
    print(f"MatMul → bias Add layers: pairs {pairs}; weights and biases vs numpy: max relative "
          f"difference {worst:.2e}")
    assert [p[:2] for p in pairs] == [("m1", "m2"), ("m2", "m3")], pairs
    assert pairs[0][2] is None and "without a bias" in pairs[1][2], pairs
    assert worst < 1e-5, worst
    assert bs[1].shape == (1, 1, 7), bs[1].shape
    before, after = run(src, x)[0], run(dst, x)[0]
    diff = float(np.abs(before - after).max() / np.abs(before).max())
    print(f"  float function kept: max relative output difference {diff:.2e}")
    assert diff < 1e-5, diff

    # With data: c = max(0, min(μ − 3σ, min)) of m1's output after its bias, per channel.
    (z1,) = outputs_of(src, x, ["z1"])
    z1 = z1.reshape(-1, 8)
    c = np.maximum(0.0, np.minimum(z1.mean(0) - 3 * z1.std(0), z1.min(0))) / scale
    dst, report, ws, bs = equalized("absorbed", ["--calib", str(out / "dense_calib.npz")])
    want = [bias[0] - c, bias[1] + ref[1].T @ c]
    worst = max(np.abs(g.reshape(-1) - r).max() / np.abs(r).max() for g, r in zip(bs, want))
    moved = {p["first"]: p["absorbed_channels"] for p in report["pairs"]}
    print(f"  absorbed from data: {moved} channels; biases vs numpy: max relative difference {worst:.2e}")
    assert moved == {"m1": int((c > 0).sum()), "m2": 0} and moved["m1"] >= 2, (moved, c)
    assert worst < 1e-5, worst
    diff = float(np.abs(before - run(dst, x)[0]).max() / np.abs(before).max())
    assert diff < 1e-5, diff


def gemm_into_matmul(zeropoint, out):
    """x [N, 4] → Gemm (bias 20 on every channel) → ReLU → MatMul, with 1500 calibration samples
    (past the 1000 values per channel absorption needs): c > 0 on every channel, but the MatMul
    has no bias to take W₂·c. It used to be given a third input, which ONNX's checker rejects."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 1, (4, 6)).astype(np.float32), rng.normal(0, 1, (6, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"], name="gemm"),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="matmul")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(6, 20.0, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(nodes, "gemm_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    src, dst = out / "gemm_matmul.onnx", out / "gemm_matmul_eq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    x = rng.normal(0, 1, (1500, 4)).astype(np.float32)
    np.save(out / "gemm_matmul_calib.npy", x)
    p = subprocess.run([str(zeropoint), "equalize", str(src), "-o", str(dst), "--json", "--calib",
                        str(out / "gemm_matmul_calib.npy")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    (pair,) = json.loads(p.stdout)["pairs"]
    assert pair["absorbed_channels"] == 0 and "without a bias" in pair["absorption_skipped"], pair
    model = onnx.load(dst)
    onnx.checker.check_model(model, full_check=True)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    diff = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"Gemm → ReLU → MatMul: equalized, nothing absorbed into the MatMul, a valid model "
          f"(max relative output difference {diff:.1e})")
    assert diff < 1e-5, diff


if __name__ == "__main__":
    main()
