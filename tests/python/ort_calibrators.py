#!/usr/bin/env python3
"""zeropoint's range estimators against ONNX Runtime's calibrators, on real activations.

  ort_calibrators.py dump OUT_DIR
      Runs the MNIST CNN (200 MNIST test images) and the CIFAR-10 CNN (the 40 foolbox CIFAR images)
      of ../shared/assets in ONNX Runtime, one sample per batch as its calibrators are fed, and
      writes OUT_DIR/<model>.acts.npz (every activation ORT calibrates, samples stacked on axis 0)
      and OUT_DIR/ort_ranges.json: per tensor, the ranges of onnxruntime.quantization's MinMax,
      Percentile (percentile 99.999, both two-sided, symmetric=False, and its default, symmetric
      on |x|) and Entropy calibrators created with create_calibrator,
      num_bins=2048 and num_quantized_bins=128, plus the width of ORT's histogram bins.

  ort_calibrators.py compare OUT_DIR REPORT.json...
      Compares zeropoint's `inspect --json --range minmax,percentile,entropy` reports on those
      npz files with ORT's ranges: min-max must be identical and percentile within one of ORT's
      histogram bins (exit 1 otherwise). Also prints, per tensor, the KL divergence (TensorRT's
      criterion) of
      zeropoint's entropy range and of ORT's, both evaluated by this script's own numpy code on
      the data-determined grid defined in kl_of_range.
"""

import glob
import gzip
import json
import os
import struct
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator

ASSETS = os.path.join(os.path.dirname(__file__), "../../../shared/assets")
PERCENTILE = 99.999


def mnist(n):
    b = gzip.open(os.path.join(ASSETS, "data/mnist/t10k-images-idx3-ubyte.gz"), "rb").read()
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4 : 4 + 4 * nd])
    x = np.frombuffer(b[4 + 4 * nd :], np.uint8).reshape(dims)[:n]
    return ((x.astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]


def cifar():
    from PIL import Image

    files = sorted(glob.glob(os.path.join(ASSETS, "data/foolbox/cifar1*_*.png")))
    return np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])


MODELS = {
    "mnist_cnn": ("models/ccexam_mnist_cnn.onnx", lambda: mnist(200)),
    "cifar10_cnn": ("models/cifar10_keras_cnn_bn.onnx", cifar),
}


class Reader(CalibrationDataReader):
    def __init__(self, name, samples):
        self.items = [{name: np.ascontiguousarray(s[None])} for s in samples]
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)


def calibrate(path, name, samples, method, extra):
    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(path, None, augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                calibrate_method=method, extra_options=extra)
        cal.collect_data(Reader(name, samples))
        data = cal.compute_data()
        ranges = {k: [float(np.asarray(v).reshape(-1)[0]) for v in data[k].range_value] for k in data.keys()}
        widths = {}
        if hasattr(cal, "collector") and cal.collector is not None:
            for k, h in cal.collector.histogram_dict.items():
                widths[k] = float(h[1][1] - h[1][0])
        return ranges, widths


def activations(path, name, samples, tensors):
    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in known and t != name:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    # The calibrators run their sessions unoptimized; so must this one, for the same floats.
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs() if o.name in tensors]
    runs = [sess.run(outs, {name: s[None]}) for s in samples]
    acts = {t: np.concatenate([r[i] for r in runs]) for i, t in enumerate(outs)}
    if name in tensors:
        acts[name] = samples
    return acts


def dump(out):
    result = {}
    for tag, (rel, load) in MODELS.items():
        path = os.path.join(ASSETS, rel)
        samples = load()
        name = onnx.load(path).graph.input[0].name
        minmax, _ = calibrate(path, name, samples, CalibrationMethod.MinMax, {})
        # Two-sided, as zeropoint's percentile (ORT's default, symmetric=True, takes |x|).
        pct, pct_w = calibrate(path, name, samples, CalibrationMethod.Percentile,
                               {"num_bins": 2048, "percentile": PERCENTILE, "symmetric": False})
        # ORT's default: symmetric=True, the percentile of |x|.
        pabs, pabs_w = calibrate(path, name, samples, CalibrationMethod.Percentile,
                                 {"num_bins": 2048, "percentile": PERCENTILE})
        ent, ent_w = calibrate(path, name, samples, CalibrationMethod.Entropy,
                               {"num_bins": 2048, "num_quantized_bins": 128})
        acts = activations(path, name, samples, set(minmax))
        np.savez(os.path.join(out, f"{tag}.acts.npz"), **acts)
        result[tag] = {t: {"minmax": minmax[t], "percentile": pct[t], "percentile_bin": pct_w[t],
                           "abs_percentile": pabs[t], "abs_percentile_bin": pabs_w[t],
                           "entropy": ent[t], "entropy_bin": ent_w[t]} for t in acts}
    json.dump(result, open(os.path.join(out, "ort_ranges.json"), "w"), indent=1)
    print(f"dumped {sum(len(v) for v in result.values())} tensors")
    return 0


def kl_of_range(x, lo, hi, quantized_bins=128):
    """TensorRT's criterion for the symmetric threshold of the range [lo, hi], evaluated on the
    grid zeropoint's entropy method defines from the data alone: bins of width
    w = 2^ceil(log2(max|x| / 1024)) anchored at 0, K = floor(max|x| / w) + 1 per side, sliced
    and merged as TensorRT slices them, with float (not integer-truncated) quantized bins."""
    absmax = float(np.abs(x).max())
    w = 2.0 ** np.ceil(np.log2(absmax / 1024))
    k = int(np.floor(absmax / w)) + 1
    idx = np.clip(np.floor(x.astype(np.float64) / w).astype(np.int64) + k, 0, 2 * k - 1)
    hist = np.bincount(idx, minlength=2 * k).astype(np.float64)
    bins, half = 2 * k, k
    # A threshold slice [half - i, half + i + 1) spans [-i·w, (i + 1)·w].
    i = int(np.clip(max(round(abs(lo) / w), round(abs(hi) / w) - 1), quantized_bins // 2, half))
    start, end = half - i, min(half + i + 1, bins)
    sliced = hist[start:end].copy()
    p = sliced.copy()
    p[0] += hist[:start].sum()
    p[-1] += hist[end:].sum()
    merged = max(1, len(sliced) // quantized_bins)
    q = np.zeros_like(p)
    groups = min(quantized_bins, -(-len(sliced) // merged))
    for g in range(groups):
        a, b = g * merged, (len(sliced) if g == groups - 1 else (g + 1) * merged)
        nz = p[a:b] != 0
        if nz.any():
            q[a:b][nz] = sliced[a:b].sum() / nz.sum()

    def smooth(d):  # in counts, as TensorRT and ONNX Runtime smooth, then normalized
        zeros = d == 0
        eps1 = 1e-4 * zeros.sum() / max(1, (~zeros).sum())
        d = np.where(zeros, 1e-4, np.maximum(d - eps1, 1e-4))
        return d / d.sum()

    if q.sum() == 0:
        return float("inf")
    p, q = smooth(p), smooth(q)
    return float(np.sum(np.where(p > 0, p * np.log(p / q), 0)))


def compare(out, reports):
    ort_ranges = json.load(open(os.path.join(out, "ort_ranges.json")))
    errors, rows = [], []
    counts = {"minmax": 0, "percentile": 0, "entropy": 0}
    pct_bins, abs_bins = [], []
    for report_path in reports:
        report = json.load(open(report_path))
        tag = os.path.basename(report["file"]).split(".")[0]
        acts = np.load(os.path.join(out, f"{tag}.acts.npz"))
        for t in report["tensors"]:
            ref = ort_ranges[tag][t["name"]]
            ours = {r["method"]: (r["min"], r["max"]) for r in t["ranges"]}
            if tuple(np.float32(ref["minmax"])) != tuple(np.float32(ours["minmax"])):
                errors.append(f"{tag}/{t['name']} minmax: ORT {ref['minmax']} zeropoint {ours['minmax']}")
            counts["minmax"] += 1
            for method, key, bins in (("percentile", "percentile", pct_bins),
                                      ("abs-percentile", "abs_percentile", abs_bins)):
                if method not in ours:
                    continue
                w = ref[f"{key}_bin"]
                d = max(abs(a - b) for a, b in zip(ref[key], ours[method]))
                bins.append(d / w if w > 0 else 0.0)
                # One bin, plus a few float32 ulps: ORT's bin edges are rounded to float32.
                slack = 4 * float(np.spacing(np.float32(max(abs(v) for v in ref[key]))))
                if d > w + slack:
                    errors.append(f"{tag}/{t['name']} {method}: ORT {ref[key]} zeropoint "
                                  f"{ours[method]}, {d / w:.2f} of ORT's bin {w}")
                counts[method] = counts.get(method, 0) + 1
            mse = {r["method"]: r["mse"] for r in t["ranges"]}
            if "mse" in mse and mse["mse"] > mse["minmax"] * (1 + 1e-9):
                errors.append(f"{tag}/{t['name']} mse range: MSE {mse['mse']} above min-max's {mse['minmax']}")
            x = acts[t["name"]].astype(np.float32).ravel()
            kl_ours = kl_of_range(x, *ours["entropy"])
            kl_ort = kl_of_range(x, *ref["entropy"])
            counts["entropy"] += 1
            rows.append((f"{tag}/{t['name']}", ref["entropy"], ours["entropy"], kl_ort, kl_ours))
    print(f"{'tensor':<40} {'ORT entropy range':>22} {'zeropoint':>22} {'KL ORT':>9} {'KL zp':>9}")
    for name, r_ort, r_zp, k_ort, k_zp in rows:
        print(f"{name:<40} [{r_ort[0]:9.4f},{r_ort[1]:9.4f}] [{r_zp[0]:9.4f},{r_zp[1]:9.4f}] {k_ort:9.5f} {k_zp:9.5f}")
    better = sum(1 for r in rows if r[4] <= r[3] * (1 + 1e-9) + 1e-12)
    ratios = [r[4] / r[3] for r in rows if r[3] > 0]
    print(f"entropy: zeropoint's KL <= ORT's on {better}/{len(rows)} tensors; "
          f"KL ratio zeropoint/ORT median {np.median(ratios):.3f}, max {np.max(ratios):.3f}")
    print(f"percentile: largest difference {max(pct_bins):.3f} of ORT's bin width, median {np.median(pct_bins):.3f}")
    if abs_bins:
        print(f"abs-percentile (ORT's default, symmetric): largest difference {max(abs_bins):.3f} of ORT's bin width, "
              f"median {np.median(abs_bins):.3f}")
    for e in errors:
        print("MISMATCH", e)
    print(f"minmax={counts['minmax']} percentile={counts['percentile']} "
          f"abs-percentile={counts.get('abs-percentile', 0)} entropy={counts['entropy']} mismatches={len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        sys.exit(dump(sys.argv[2]))
    sys.exit(compare(sys.argv[2], sys.argv[3:]))
