#!/usr/bin/env python3
"""Quantize time and peak memory in interleaved rounds: one or more zeropoint binaries against ONNX Runtime's
MinMax quantizer, whole processes, on the calibration samples a `zoo_compare.py --work DIR` run left behind.

Usage: .venv/bin/python scripts/quantize_rounds.py --work DIR [--models a,b] [--rounds 3]
           [--zeropoint BIN[,BIN2,...]] [--minilm N]

One `zoo_compare.py` run times each model once, in sequence; on a shared VM whose speed drifts by a fifth within
minutes, a ratio near a bar needs rounds in which both tools run back to back. Each round runs, per model, every
zeropoint binary given (`quantize MODEL --calib DIR/MODEL/calib.npz --preset w8a8 --batch 1`, the command of
zoo_compare.py) and then zoo_compare.py's own ORT MinMax worker (quant_pre_process + quantize_static, QDQ,
per-channel, QUInt8 activations, one sample a call) on the same samples, each under /usr/bin/time, and prints
seconds, peak MB and the ratios of that round.

--minilm N adds MiniLM-L3 (a BERT-style encoder, scripts/fetch-assets puts it in .cache/shared) on its first N
pang_lee_polarity sentences: zeropoint gets them padded with [PAD] in one .npz (as scripts/ptq_compare.py gives
them), ORT one unpadded sentence a call; ORT's quant_pre_process fails its symbolic shape inference on this model
and is run with skip_symbolic_shape=True.
"""

import argparse
import json
import os
import pickle
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import zoo_compare  # noqa: E402

ORT_MINILM = """
import pickle, sys
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
src, feeds, tmp = sys.argv[1], pickle.load(open(sys.argv[2], "rb")), sys.argv[3]
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter(feeds)
    def get_next(self):
        return next(self.it, None)
quant_pre_process(src, tmp + "/pre.onnx", skip_symbolic_shape=True)
quantize_static(tmp + "/pre.onnx", tmp + "/ort.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
"""


def run(cmd, tmp):
    # In the temporary folder: ONNX Runtime's symbolic shape inference leaves its scratch model and
    # external-data files in the working directory when it fails.
    rc, _, err, wall, peak = zoo_compare.measured(cmd, 1800, cwd=tmp)
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(cmd)}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    return wall, peak or 0.0


def zoo_jobs(work, models, tmp):
    """(name, zeropoint arguments after the binary, ORT command) per model of the work folder."""
    for m in models:
        spec = json.load(open(os.path.join(work, m, "ort_quantize.spec.json")))
        spec.update(method="MinMax", dst=os.path.join(tmp, "ort.onnx"), result=os.path.join(tmp, "ort.json"))
        path = os.path.join(tmp, f"{m}.spec.json")
        json.dump(spec, open(path, "w"))
        zp = ["quantize", spec["src"], "--calib", spec["calib"], "--preset", "w8a8", "--batch", "1",
              "-o", os.path.join(tmp, "zp.onnx")]
        yield m, zp, [sys.executable, zoo_compare.__file__, "--worker", "ort_quantize", path]


def minilm_job(n, tmp):
    sys.path.insert(0, os.path.join(ROOT, "..", "shared", "assets", "scripts"))
    import ptq_compare
    task = ptq_compare.B2(os.path.join(ROOT, ".cache", "shared"))
    task.fpang = task.fpang[:n]
    ids, mask = task.padded()
    calib = os.path.join(tmp, "minilm.npz")
    np.savez(calib, input_ids=ids, attention_mask=mask)
    feeds = os.path.join(tmp, "minilm.pkl")
    pickle.dump(task.fpang, open(feeds, "wb"))
    worker = os.path.join(tmp, "minilm_ort.py")
    open(worker, "w").write(ORT_MINILM)
    zp = ["quantize", task.src, "--calib", calib, "-o", os.path.join(tmp, "zp.onnx")]
    return f"MiniLM-L3 ({n} sentences)", zp, [sys.executable, worker, task.src, feeds, tmp]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="a zoo_compare.py --work folder (its calib.npz and ORT spec per model)")
    ap.add_argument("--models", default="", help="comma-separated zoo models of --work")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"),
                    help="one binary, or several separated by commas (each runs in every round)")
    ap.add_argument("--minilm", type=int, default=0, help="also MiniLM-L3 on this many sentences")
    a = ap.parse_args()
    exes = a.zeropoint.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = list(zoo_jobs(a.work, [m for m in a.models.split(",") if m], tmp)) if a.work else []
        if a.minilm:
            jobs.append(minilm_job(a.minilm, tmp))
        for name, zp, ort in jobs:
            for r in range(a.rounds):
                cells, ratios = [], []
                for exe in exes:
                    wall, peak = run([exe] + zp, tmp)
                    cells.append(f"{os.path.basename(exe)} {wall:.2f} s {peak:.0f} MB")
                    ratios.append(wall)
                wall, peak = run(ort, tmp)
                cells.append(f"ORT MinMax {wall:.2f} s {peak:.0f} MB")
                ratio = " ".join(f"x{z / wall:.3f}" for z in ratios)
                print(f"{name} round {r + 1}: " + " | ".join(cells) + f" | ratio {ratio}", flush=True)


if __name__ == "__main__":
    main()
