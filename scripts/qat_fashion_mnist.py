#!/usr/bin/env python3
"""Fashion-MNIST: a float CNN trained with `zeropoint train --float`, then W4A4 PTQ against W4A4
QAT, with BatchNorm folded and with batch statistics (docs/qat.md). The issue's goal: W4A4 QAT
within 0.5 points of float top-1.

Usage: .venv/bin/python scripts/qat_fashion_mnist.py [--zeropoint target/release/zeropoint]
       [--data ../shared-cache/fashion-mnist] [--work DIR] [--float-model F.onnx] [--float-epochs 4]
       [--qat-epochs 2] [--qat-lr 1e-4] [--qat-samples 30000] [--skip-bn] [--skip-qat]

Needs the full Fashion-MNIST set: `bash ../shared/assets/fetch-fashion-mnist.sh ../shared-cache`.

1. Float: the shared MNIST CNN (A1: two 3x3 Conv + ReLU + MaxPool, two Gemm) fine-tuned on the
   60k training images (the last 10 % held out for validation every 200 steps, images flipped at
   random), Adam 1e-3, batch 64; or --float-model to reuse one.
2. PTQ W4A4 (int4 per-channel weights with MSE ranges, uint4 activations) calibrated on the
   first 1000 training images; the same with AdaRound (1000 Adam steps a layer, on its default
   16 samples and on 256) and with `--recipe standard` (CLE, MSE weights, AdaRound): the best
   PTQ that QAT is to beat.
3. QAT W4A4 from that PTQ on the first --qat-samples training images (10 % of them held out),
   cross-entropy on the labels, BatchNorm-free model.
4. The same float model with a BatchNormalization after each Conv, set to its input's population
   statistics over 2000 training images (so it computes the same function), trained W4A4 with
   `--batchnorm batch`.
Every model is evaluated on the 10k test images in ONNX Runtime; preprocessing (x/255 - 0.2860)
/ 0.3530 is applied here in numpy and by zeropoint's --mean/--std.
"""

import argparse
import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
A1 = ROOT.parent / "shared" / "assets" / "models" / "ccexam_mnist_cnn.onnx"
MEAN, STD = 0.2860, 0.3530
PREP = ["--mean", str(MEAN), "--std", str(STD)]


def idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def images(path):
    x = idx(path, 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)


def session(model):
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def top1(model, x, labels):
    s = session(model)
    name = s.get_inputs()[0].name
    logits = np.concatenate([s.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return 100.0 * float(np.mean(logits.argmax(1) == labels))


def zeropoint(exe, *args):
    t = time.time()
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args[:2]))} failed: {r.stderr.strip()}")
    return time.time() - t


def with_batch_norms(model, out, x):
    """`model` with a BatchNormalization after each Conv, whose statistics are its input's over
    `x` and whose γ, β undo them: the same function, with BatchNorms to train."""
    m = onnx.load(model)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    probe = onnx.load(model)
    for c in convs:
        probe.graph.output.append(helper.make_tensor_value_info(c.output[0], onnx.TensorProto.FLOAT, None))
    s = session(probe.SerializeToString())
    values = s.run([c.output[0] for c in convs], {s.get_inputs()[0].name: x})
    nodes = []
    for n in m.graph.node:
        nodes.append(n)
        if n.op_type != "Conv":
            continue
        u = values[convs.index(n)].astype(np.float64)
        mean, var = u.mean(axis=(0, 2, 3)), u.var(axis=(0, 2, 3))
        eps = 1e-5
        name = n.output[0]
        raw = name + "_conv"
        n.output[0] = raw
        params = {"gamma": np.sqrt(var + eps), "beta": mean, "mean": mean, "var": var}
        for k, v in params.items():
            m.graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), f"{name}_bn_{k}"))
        nodes.append(helper.make_node("BatchNormalization", [raw] + [f"{name}_bn_{k}" for k in params], [name],
                                      name=f"{name}_bn", epsilon=eps))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=ROOT / "target" / "release" / "zeropoint")
    p.add_argument("--data", default=ROOT.parent / "shared-cache" / "fashion-mnist", type=Path)
    p.add_argument("--work", default=ROOT / ".cache" / "fashion-mnist", type=Path)
    p.add_argument("--float-model", type=Path)
    p.add_argument("--float-epochs", default="4")
    p.add_argument("--qat-epochs", default="2")
    p.add_argument("--qat-lr", default="1e-4")
    p.add_argument("--qat-samples", default="30000", help="the first N training images train QAT")
    p.add_argument("--skip-bn", action="store_true")
    p.add_argument("--skip-qat", action="store_true", help="the float model and the PTQ rows only")
    a = p.parse_args()
    exe, d, work = a.zeropoint, a.data, a.work
    work.mkdir(parents=True, exist_ok=True)
    train, train_labels = d / "train-images-idx3-ubyte.gz", d / "train-labels-idx1-ubyte.gz"
    x_test, y_test = images(d / "t10k-images-idx3-ubyte.gz"), idx(d / "t10k-labels-idx1-ubyte.gz", 8)
    data = ["--data", train, "--labels", train_labels, *PREP]
    rows = []

    floatm, seconds = a.float_model, None
    if floatm is None:
        floatm = work / "float.onnx"
        seconds = zeropoint(exe, "train", A1, *data, "--float", "--epochs", a.float_epochs, "--batch-size", 64,
                            "--lr", "1e-3", "--validation-split", "0.1", "--validate-every", 200, "--augment", "flip",
                            "--log", work / "float.jsonl", "-o", floatm)
    f1 = top1(floatm, x_test, y_test)
    rows.append(("float (`train --float`)", f1, seconds))

    w4a4 = ["--weights", "int4", "--activations", "uint4"]
    ptq = work / "ptq_w4a4.onnx"
    seconds = zeropoint(exe, "quantize", floatm, "--calib", train, *PREP, "--samples", 1000, *w4a4,
                        "--weight-range", "mse", "-o", ptq)
    rows.append(("W4A4 PTQ (MSE weights)", top1(ptq, x_test, y_test), seconds))
    for name, extra in (("AdaRound, 16 samples", ["--adaround"]),
                        ("AdaRound, 256 samples", ["--adaround", "--adaround-samples", 256]),
                        ("`--recipe standard`", ["--recipe", "standard"])):
        out = work / f"ptq_w4a4_{len(rows)}.onnx"
        seconds = zeropoint(exe, "quantize", floatm, "--calib", train, *PREP, "--samples", 1000, *w4a4,
                            "--weight-range", "mse", *extra, "-o", out)
        rows.append((f"W4A4 PTQ, {name}", top1(out, x_test, y_test), seconds))
    if a.skip_qat:
        a.skip_bn = True

    qat_args = [*data, *w4a4, "--samples", a.qat_samples, "--weight-range", "mse", "--epochs", a.qat_epochs,
                "--batch-size", 64,
                "--lr", a.qat_lr, "--validation-split", "0.1", "--validate-every", 200]
    if not a.skip_qat:
        qat = work / "qat_w4a4.onnx"
        seconds = zeropoint(exe, "train", floatm, *qat_args, "--log", work / "qat.jsonl", "-o", qat)
        rows.append(("W4A4 QAT, BatchNorm-free", top1(qat, x_test, y_test), seconds))

    if not a.skip_bn:
        bn = work / "float_bn.onnx"
        with_batch_norms(floatm, bn, images(train)[:2000])
        rows.append(("float with BatchNorms (same function)", top1(bn, x_test, y_test), None))
        qat_bn = work / "qat_w4a4_bn.onnx"
        seconds = zeropoint(exe, "train", bn, *qat_args, "--batchnorm", "batch", "--log", work / "qat_bn.jsonl",
                            "-o", qat_bn)
        rows.append(("W4A4 QAT, `--batchnorm batch`", top1(qat_bn, x_test, y_test), seconds))

    print(f"Fashion-MNIST test set (10 000 images), top-1 in ONNX Runtime {ort.__version__}")
    print("| model | top-1 % | vs float | zeropoint time |")
    print("|---|---|---|---|")
    for name, acc, secs in rows:
        t = "-" if secs is None else f"{secs:.0f} s"
        print(f"| {name} | {acc:.2f} | {acc - f1:+.2f} | {t} |")


if __name__ == "__main__":
    main()
