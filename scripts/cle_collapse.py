#!/usr/bin/env python3
"""Cross-layer equalization on a model whose per-tensor W8A8 collapses (issue 12).

Usage: cle_collapse.py [--zeropoint target/release/zeropoint] [--spread 3] [--seed 0] [--eval 10000] [--check]

The white paper's example, MobileNetV2 (0.12 % top-1 at per-tensor W8A8, 69.9 % after CLE),
is not among the shared assets or the zoo. What breaks it is that its channels' ranges differ by
orders of magnitude after BatchNorm folding while the function does not care: a ReLU network
computes the same function when output channel i of one layer is scaled by s_i > 0 and the
matching input channel of the next by 1/s_i (ReLU and max pooling are positively homogeneous).
This script builds such a model from the shared MNIST CNN (A1: Conv → ReLU → MaxPool → Conv,
Gemm → ReLU → Gemm): s_i = 10^u, u uniform in [−spread/2, spread/2] per channel of conv_1 and
of gemm_8, seeded. Its float outputs equal A1's (checked in ONNX Runtime, to float rounding);
its per-channel weight ranges and its activations' channel ranges now span `spread` decades.

Then it quantizes it with zeropoint (int8 weights, uint8 activations, MSE activation ranges,
256 training images as calibration), per-tensor and per-channel, with and without `--cle`, and
prints the top-1 accuracy on the MNIST test images (labels from the idx file) and the output
SQNR against float, for A1 itself and for the scrambled model. With --check (the test suite's
run) it asserts the effect: the scrambled float model is A1's function, its per-tensor W8A8
falls below 50 % top-1, and with CLE it is within 0.5 points of float and within 0.1 dB of A1's
own per-tensor W8A8 with CLE (equalization reaches the same balance from any scaling).
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "assets")
MODEL = os.path.join(SHARED, "models", "ccexam_mnist_cnn.onnx")
MNIST = os.path.join(SHARED, "data", "mnist")


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def images(name, n):
    x = idx(os.path.join(MNIST, f"{name}-images-idx3-ubyte.gz"))[:n]
    return (((x.astype(np.float32) / 255 - np.float32(0.1307)) / np.float32(0.3081))[:, None]).astype(np.float32)


def scramble(src, dst, spread, seed):
    """A1 with conv_1's output channels scaled by s_i (conv_4's input channels by 1/s_i) and
    gemm_8's outputs by t_j (gemm_10's inputs by 1/t_j)."""
    m = onnx.load(src)
    init = {t.name: t for t in m.graph.initializer}
    rng = np.random.default_rng(seed)

    def get(name):
        return numpy_helper.to_array(init[name]).astype(np.float64)

    def put(name, value):
        init[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    for (w1, b1, w2) in (("features.0.weight", "features.0.bias", "features.3.weight"),
                         ("classifier.0.weight", "classifier.0.bias", "classifier.2.weight")):
        a, b, c = get(w1), get(b1), get(w2)
        s = 10.0 ** rng.uniform(-spread / 2, spread / 2, a.shape[0])
        put(w1, a * s.reshape((-1,) + (1,) * (a.ndim - 1)))
        put(b1, b * s)
        put(w2, c / s.reshape((1, -1) + (1,) * (c.ndim - 2)))
    onnx.save(m, dst)


def run(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def sqnr(ref, got):
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return 10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1e-300))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    ap.add_argument("--spread", type=float, default=3.0, help="decades the channel scales span")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", type=int, default=10000, help="MNIST test images to evaluate on")
    ap.add_argument("--check", action="store_true", help="assert the effect (the test suite's run)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="cle_collapse_")
    calib = os.path.join(work, "calib.npy")
    np.save(calib, images("train", 256))
    x = images("t10k", a.eval)
    labels = idx(os.path.join(MNIST, "t10k-labels-idx1-ubyte.gz"))[:a.eval]
    scrambled = os.path.join(work, "scrambled.onnx")
    scramble(MODEL, scrambled, a.spread, a.seed)
    ref = run(MODEL, x)
    float_top1 = np.mean(ref.argmax(1) == labels) * 100
    same = sqnr(ref, run(scrambled, x))
    print(f"scrambled float model against A1: SQNR {same:.1f} dB (the same function), "
          f"top-1 {np.mean(run(scrambled, x).argmax(1) == labels) * 100:.2f} %")
    rows = []
    for tag, model in (("A1", MODEL), (f"A1 scrambled ({a.spread:g} decades)", scrambled)):
        row = {"model": tag, "float": f"{float_top1:.2f} %"}
        for gran in ("per-tensor", "per-channel"):
            for cle in ((), ("--cle",)):
                dst = os.path.join(work, f"q_{len(rows)}_{gran}{'_cle' if cle else ''}.onnx")
                cmd = [a.zeropoint, "quantize", model, "--calib", calib, "--weights", f"int8,sym,{gran}",
                       "--report-samples", "0", "-o", dst, "--json", *cle]
                p = subprocess.run(cmd, capture_output=True, text=True)
                key = gran + (" +cle" if cle else "")
                if p.returncode != 0:
                    row[key] = "fails: " + p.stderr.strip()[:80]
                    continue
                y = run(dst, x)
                row[key] = (np.mean(y.argmax(1) == labels) * 100, sqnr(ref, y))
                if cle:
                    eq = json.loads(p.stdout).get("equalization") or {}
                    row["pairs"] = len(eq.get("pairs", []))
        rows.append(row)
        print(json.dumps(row), flush=True)
    show = lambda v: f"{v[0]:.2f} % / {v[1]:.1f} dB" if isinstance(v, tuple) else str(v)
    cols = ["float", "per-tensor", "per-tensor +cle", "per-channel", "per-channel +cle", "pairs"]
    print("\n| model (W8A8, top-1 / output SQNR) | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for r in rows:
        print(f"| {r['model']} | " + " | ".join(show(r.get(c, "")) for c in cols) + " |")
    if a.check:
        plain, mixed = rows
        assert same > 100, f"the scrambled model is not A1's function: {same:.1f} dB"
        assert mixed["per-tensor"][0] < 50, mixed
        assert mixed["per-tensor +cle"][0] >= float_top1 - 0.5, mixed
        assert abs(mixed["per-tensor +cle"][1] - plain["per-tensor +cle"][1]) <= 0.1, rows
        print("cle collapse: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
