#!/usr/bin/env python3
"""Independent numpy reference for `zeropoint inspect --json`.

  inspect_reference.py make-npz OUT.npz      writes test tensors (float32, float16, Fortran order, int)
  inspect_reference.py make-external DIR   writes DIR/model.onnx with its weights in DIR/weights.bin,
                                           and DIR/escape.onnx whose data location is '../outside.bin'
  inspect_reference.py check FILE JSON        recomputes statistics and SQNRs of FILE's tensors with
                                              numpy and compares them with zeropoint's JSON report

The quantizer follows ../DESIGN.md: symmetric s = max|x| / qmax, z = 0; asymmetric on the range
widened to contain 0, s = (max - min) / (qmax - qmin), z = clamp(rint(qmin - min / s)); scales are
computed in float64 and rounded to float32, x / s is a float32 division, rounding is half to even.
"""

import json
import sys

import numpy as np


def load(path):
    if path.endswith(".onnx"):
        import onnx
        from onnx import numpy_helper

        model = onnx.load(path)
        return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    data = np.load(path)
    return {k: data[k] for k in data.files}


def params(x, bits, symmetric):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if symmetric:
        s = np.float32(max(-lo, hi) / qmax)
        return (np.float32(1.0) if s == 0 else s), 0, qmin, qmax
    s = np.float32((hi - lo) / (qmax - qmin))
    s = np.float32(1.0) if s == 0 else s
    z = int(np.clip(np.rint(qmin - lo / float(s)), qmin, qmax))
    return s, z, qmin, qmax


def fake_quant(x, bits, symmetric):
    s, z, qmin, qmax = params(x, bits, symmetric)
    q = np.clip(np.rint(x / s) + z, qmin, qmax)
    return ((q - z).astype(np.float32) * s).astype(np.float32)


def sqnr(x, bits, symmetric, per_channel):
    x = x.astype(np.float32)
    if per_channel:
        y = np.stack([fake_quant(c, bits, symmetric) for c in x])
    else:
        y = fake_quant(x, bits, symmetric)
    x64, e = x.astype(np.float64), (x.astype(np.float64) - y.astype(np.float64))
    return 10 * np.log10((x64**2).sum() / (e**2).sum())


def check(path, report_path):
    tensors = load(path)
    report = json.load(open(report_path))
    errors, checked = [], 0
    for t in report["tensors"]:
        x = tensors[t["name"]].astype(np.float32)
        x64 = x.astype(np.float64)
        if list(x.shape) != t["shape"]:
            errors.append(f"{t['name']}: shape {x.shape} vs {t['shape']}")
        mean, std = x64.mean(), x64.std()
        kurt = ((x64 - mean) ** 4).mean() / std**4 if std > 0 else 0.0
        for key, ref in [("min", x.min()), ("max", x.max()), ("mean", mean), ("std", std), ("kurtosis", kurt),
                         ("zero_fraction", (x == 0).mean())]:
            if not np.isclose(t[key], ref, rtol=1e-6, atol=1e-9):
                errors.append(f"{t['name']}: {key} {t[key]} vs numpy {ref}")
        for entry in t["sqnr_db"]:
            symmetric = entry["scheme"].endswith(" sym")
            per_channel = entry["scheme"].startswith("per-channel")
            ref = sqnr(x, entry["bits"], symmetric, per_channel)
            if abs(entry["sqnr_db"] - ref) > 1e-3:
                errors.append(f"{t['name']} int{entry['bits']} {entry['scheme']}: {entry['sqnr_db']} dB vs numpy {ref}")
            checked += 1
    for e in errors:
        print("MISMATCH", e)
    print(f"tensors={len(report['tensors'])} sqnr_checked={checked} mismatches={len(errors)}")
    return 1 if errors else 0


def make_npz(out):
    rng = np.random.default_rng(7)
    np.savez_compressed(
        out,
        dense=rng.normal(0.2, 1.5, size=(16, 40)).astype(np.float32),
        half=rng.standard_t(3, size=(8, 9)).astype(np.float16),
        fortran=np.asfortranarray(rng.uniform(-2, 5, size=(6, 7)).astype(np.float32)),
        relu=np.maximum(rng.normal(size=(5, 30)), 0).astype(np.float32),
        ids=np.arange(12, dtype=np.int64).reshape(3, 4),
    )
    return 0


def make_external(folder):
    import os

    import onnx
    from onnx import TensorProto, external_data_helper, helper, numpy_helper

    rng = np.random.default_rng(11)
    w = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(8,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save_model(model, os.path.join(folder, "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    escape = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    for t in escape.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save_model(escape, os.path.join(folder, "escape.onnx"))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "make-npz":
        sys.exit(make_npz(sys.argv[2]))
    if sys.argv[1] == "make-external":
        sys.exit(make_external(sys.argv[2]))
    sys.exit(check(sys.argv[2], sys.argv[3]))
