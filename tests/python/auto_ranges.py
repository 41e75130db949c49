"""`quantize --activation-range auto` chooses the estimator per model, on held-out samples.

Usage: auto_ranges.py ZEROPOINT ZOO_DIR DIR

On the zoo's synthetic inputs (scripts/zoo_inputs.py, 16 calibration samples, seed 1; 16
evaluation samples, seed 2), for three zoo models where docs/zoo.md measured which estimator wins:
- magika (MSE ranges clip the few large values a LayerNorm needs): auto chooses min-max;
- oww-melspec: auto keeps MSE since its mel filterbank stays float (a Log reads it): MSE,
  min-max and percentile then score within 1 dB of each other (before, percentile was 12 dB
  ahead of the quantized filterbank's MSE ranges, and auto chose it);
- oww-hey-jarvis (MSE is best on held-out samples): auto keeps MSE, and its export is the default
  export byte for byte
  (the observers fed in two rounds give the ranges of one pass);
and where it chose another estimator, the export scores at least 5 dB more output SQNR than the
default one in ONNX Runtime on the evaluation samples, which no choice saw.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

EXPECTED = {"magika": "minmax", "oww-melspec": "mse", "oww-hey-jarvis": "mse"}
FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def outputs(path, data):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(next(iter(data.values())))
    runs = [s.run(None, {k: v[i:i + 1] for k, v in data.items()}) for i in range(n)]
    return [np.concatenate(o) for o in zip(*runs)]


def sqnr(ref, got):
    pairs = [(r.astype(np.float64), g.astype(np.float64)) for r, g in zip(ref, got) if r.dtype.kind == "f"]
    signal = sum(float((r ** 2).sum()) for r, _ in pairs)
    noise = sum(float(((r - g) ** 2).sum()) for r, g in pairs)
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def main():
    zeropoint, zoo, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    script = Path(__file__).resolve().parents[2] / "scripts" / "zoo_inputs.py"
    subprocess.run([sys.executable, str(script), str(zoo), str(out), "--samples", "16", "--models", *EXPECTED],
                   check=True, capture_output=True)
    for name, expected in EXPECTED.items():
        model = next((zoo / name).glob("*.onnx"))
        calib, evals = out / name / "calib.npz", dict(np.load(out / name / "eval.npz"))
        ref = outputs(model, evals)
        scores, choice = {}, None
        for mode in ("mse", "auto"):
            dst = out / f"{name}.{mode}.onnx"
            p = subprocess.run([str(zeropoint), "quantize", str(model), "--calib", str(calib), "--batch", "1",
                                "--activation-range", mode, "--report-samples", "0", "-o", str(dst), "--json"],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"{name}: zeropoint quantize --activation-range {mode} failed: {p.stderr}")
            if mode == "auto":
                choice = json.loads(p.stdout)["range_choice"]
            scores[mode] = sqnr(ref, outputs(dst, evals))
        held = ", ".join(f"{m} {s:.1f}" for m, s in choice["scores"])
        check(choice["method"] == expected and choice["held_out"] == 4 and choice["fitted_on"] == 12,
              f"{name}: auto chose {choice['method']} on 4 held-out samples ({held} dB)")
        if expected == "mse":
            same = (out / f"{name}.mse.onnx").read_bytes() == (out / f"{name}.auto.onnx").read_bytes()
            check(same, f"{name}: MSE kept, the export is the default one byte for byte")
        else:
            check(scores["auto"] >= scores["mse"] + 5,
                  f"{name}: ONNX Runtime on 16 evaluation samples: {scores['auto']:.1f} dB against "
                  f"{scores['mse']:.1f} with MSE ranges")
    if FAILED:
        sys.exit(f"auto ranges: {len(FAILED)} checks failed")
    print("auto ranges: all checks passed")


if __name__ == "__main__":
    main()
