"""`--weight-range output` against a numpy search of its own, on ONNX Runtime's layer products.

Usage: output_ranges_reference.py ZEROPOINT DIR

Quantizes the MNIST CNN (../shared/assets/models/ccexam_mnist_cnn.onnx, no BatchNorm, so its
weights are the float model's) at int4 weights, per channel and per tensor, with float and with
uint8 activations, calibrated on 4 samples with `--weight-range output` fitted on the first 2
(`--weight-range-samples 2`), few enough that every output position of every layer is a column. For each layer, in graph order, the search is done again
here: for α = 1, 0.95, ..., 0.3, then α ± 0.01 ... 0.04 around each range's best, the weight
rounded to nearest on the grid of α·max|W| (scale α·max|W|/7, codes in [-8, 7]) and

    loss(α) = Σ over output positions (and the range's channels) (W·x − Ŵ(α)·x̃)² / positions

with x the layer's input in the float model and x̃ in the exported QDQ model (whose earlier
layers hold their fitted grids), both from ONNX Runtime, the product a one-node ONNX model.
Checks: the export's scales are zeropoint's reported α times max|W| / 7; the reported losses
(min-max and fitted) are the reference's within 1e-4 relative; zeropoint's α is a minimizer of
the reference's search (its loss within 1e-4 of the reference's best); and the fitted ranges
lower the loss of the layers together below min-max's.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from adaround_reference import MODEL, positions, product, values

QMIN, QMAX = -8, 7
COARSE = [1.0 - 0.05 * i for i in range(15)]
FINE = [0.01 * d for d in range(-4, 5) if d != 0]


def unit_losses(target, y, per_channel):
    """Σ (target − y)² / positions, per output channel (axis 1) or for the whole tensor."""
    e = (target - y) ** 2 / positions(y)
    return e.sum(axis=tuple(a for a in range(e.ndim) if a != 1)) if per_channel else np.array([e.sum()])


def rounded(w, alpha, per_channel):
    """W rounded to nearest on the symmetric int4 grid of α·max|W| (per output channel)."""
    amax = np.abs(w).reshape(w.shape[0], -1).max(1) if per_channel else np.array([np.abs(w).max()])
    s = (np.asarray(alpha) * amax / QMAX).astype(np.float32)
    s = s.reshape([-1] + [1] * (w.ndim - 1)) if per_channel else s[0]
    return (np.clip(np.floor(w / s + 0.5), QMIN, QMAX) * s).astype(np.float32), s


def search(loss, units):
    """The coarse-then-fine search over α, each range's own: (best α, best loss) per range."""
    best_a, best = np.ones(units), loss(np.ones(units))
    for grid in (COARSE, None):
        centre = best_a.copy()
        for step in (COARSE if grid else FINE):
            a = np.full(units, step) if grid else np.clip(centre + step, 0.3, 1.0)
            got = loss(a)
            better = got < best
            best_a, best = np.where(better, a, best_a), np.where(better, got, best)
    return best_a, best


def check(zeropoint, out, x, granularity, activations, failures):
    label = f"{granularity} {activations}"
    dst = out / f"output.{granularity}.{activations}.onnx"
    p = subprocess.run([str(zeropoint), "quantize", str(MODEL), "--calib", str(out / "calib.npy"),
                        "--samples", "4", "--weights", f"int4,sym,{granularity}",
                        "--activations", activations, "--weight-range", "output",
                        "--weight-range-samples", "2",
                        "--report-samples", "0", "--json", "-o", str(dst)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"zeropoint quantize failed: {p.stderr}")
    report = json.loads(p.stdout)["output_ranges"]
    float_model, qdq = onnx.load(MODEL), onnx.load(dst)
    float_init = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    qdq_init = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    samples = x[:2]
    per_channel = granularity == "per-channel"
    if [r["layer"] for r in report] != ["conv_1", "conv_4", "gemm_8", "gemm_10"]:
        failures.append(f"{label}: fitted layers {[r['layer'] for r in report]}")
    total_minmax = total_fitted = 0.0
    for r in report:
        fnode = next(n for n in float_model.graph.node if n.name == r["layer"])
        qnode = next(n for n in qdq.graph.node if n.name == r["layer"])
        w = float_init[fnode.input[1]]
        xf, = values(float_model, samples, [fnode.input[0]])
        xq, = values(qdq, samples, [qnode.input[0]])
        target = product(fnode, xf, w)

        def loss(alpha):
            return unit_losses(target, product(fnode, xq, rounded(w, alpha, per_channel)[0]), per_channel)

        alpha = np.array(r["alpha"], np.float64)
        units = w.shape[0] if per_channel else 1
        ref_alpha, ref_best = search(loss, units)
        at_zp, at_minmax = loss(alpha), loss(np.ones(units))
        dq = next(n for n in qdq.graph.node if n.output[0] == qnode.input[1])
        scale = qdq_init[dq.input[1]].astype(np.float64).reshape(-1)
        want_scale = rounded(w, alpha, per_channel)[1].astype(np.float64).reshape(-1)
        checks = {
            "export scale = alpha max|W| / 7": np.allclose(scale, want_scale, rtol=1e-6, atol=0),
            "loss_minmax": abs(r["loss_minmax"] - at_minmax.sum()) <= 1e-4 * at_minmax.sum(),
            "loss_fitted": abs(r["loss_fitted"] - at_zp.sum()) <= 1e-4 * at_zp.sum(),
            "alpha minimizes": bool(np.all(at_zp <= ref_best * (1 + 1e-4) + 1e-6 * ref_best.sum() / units)),
        }
        total_minmax += at_minmax.sum()
        total_fitted += at_zp.sum()
        print(f"{label:<24} {r['layer']:<8} loss min-max {at_minmax.sum():.6g} fitted {at_zp.sum():.6g} "
              f"(reference best {ref_best.sum():.6g}); alpha zeropoint {np.round(alpha[:4], 2).tolist()} "
              f"reference {np.round(ref_alpha[:4], 2).tolist()}"
              + "".join(f"  MISMATCH {k}" for k, ok in checks.items() if not ok))
        failures += [f"{label} {r['layer']}: {k}" for k, ok in checks.items() if not ok]
    if not total_fitted < 0.9 * total_minmax:
        failures.append(f"{label}: fitted ranges' loss {total_fitted} is not below min-max's {total_minmax}")


def main():
    zeropoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    x = np.random.default_rng(5).uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    np.save(out / "calib.npy", x)
    failures = []
    for granularity in ("per-channel", "per-tensor"):
        for activations in ("float", "uint8"):
            check(zeropoint, out, x, granularity, activations, failures)
    if failures:
        sys.exit("output ranges reference: " + "; ".join(failures))
    print("output ranges reference: all checks passed")


if __name__ == "__main__":
    main()
