"""`zeropoint train` (quantization-aware training) checked end to end.

Usage: qat_reference.py ZEROPOINT DIR

On the MNIST CNN of assets/models with the 500 MNIST training images and labels of assets/data:

- W2A2: QAT (3 epochs at learning rate 1e-2, cross-entropy on the labels) beats the PTQ model it starts from by at
  least 10 points of top-1 on the 2000 test images (PTQ W2A2 is ~25 %);
- W4A4: the trained QDQ model's top-1 in ONNX Runtime (this script, numpy preprocessing) is the
  one zeropoint's executor gives (`zeropoint eval`), to 0.1 point;
- the same seed gives the same bytes at 1 and 3 threads;
- `--float` with `--validation-split` writes a float model, logs one JSON line per epoch and
  keeps the best epoch;
- a run killed after its first epoch's checkpoint and resumed writes the same bytes as an
  unbroken one; a checkpoint of another model is refused;
- labels whose count does not match the data are refused with one line, exit status 1, and no
  output file.
"""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets" / "models" / "mnist_cnn.onnx"
DATA = ROOT / "assets" / "data"
TRAIN = DATA / "mnist-train-500-images-idx3-ubyte.gz"
TRAIN_LABELS = DATA / "mnist-train-500-labels-idx1-ubyte.gz"
TEST = DATA / "mnist-test-2000-images-idx3-ubyte.gz"
TEST_LABELS = DATA / "mnist-test-2000-labels-idx1-ubyte.gz"
PREP = ["--mean", "0.1307", "--std", "0.3081"]


def zeropoint(exe, *args, env=None, ok=True):
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)
    if ok and run.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args))} failed: {run.stderr}")
    return run


def top1(exe, quantized):
    out = zeropoint(exe, "eval", MODEL, quantized, "--data", TEST, "--labels", TEST_LABELS, *PREP, "--json").stdout
    return json.loads(out)["top1"]["quantized"]


def idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    return ok


def main():
    exe, work = Path(sys.argv[1]), Path(sys.argv[2])
    common = ["--data", TRAIN, *PREP, "--labels", TRAIN_LABELS, "--seed", "3"]
    good = True

    ptq2, qat2 = work / "ptq2.onnx", work / "qat2.onnx"
    zeropoint(exe, "quantize", MODEL, "--calib", TRAIN, *PREP, "--weights", "int2", "--activations", "uint2",
              "-o", ptq2)
    zeropoint(exe, "train", MODEL, *common, "--weights", "int2", "--activations", "uint2", "--epochs", 3,
              "--lr", "1e-2", "-o", qat2)
    p, q = top1(exe, ptq2), top1(exe, qat2)
    good &= check(q >= p + 10, f"W2A2 top-1: PTQ {p:.2f} %, QAT {q:.2f} %")

    qat4 = work / "qat4.onnx"
    zeropoint(exe, "train", MODEL, *common, "--weights", "int4", "--activations", "uint4", "--epochs", 1, "-o", qat4)
    images = (idx(TEST, 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255 - np.float32(0.1307)) / np.float32(0.3081)
    labels = idx(TEST_LABELS, 8)
    s = ort.InferenceSession(str(qat4), providers=["CPUExecutionProvider"])
    logits = np.concatenate([s.run(None, {s.get_inputs()[0].name: images[i:i + 100]})[0]
                             for i in range(0, len(images), 100)])
    ort_top1 = 100.0 * float(np.mean(logits.argmax(1) == labels))
    zp_top1 = top1(exe, qat4)
    good &= check(abs(ort_top1 - zp_top1) <= 0.1, f"W4A4 QAT top-1: ONNX Runtime {ort_top1:.2f} %, zeropoint {zp_top1:.2f} %")

    outs = []
    for threads in ("1", "3"):
        out = work / f"t{threads}.onnx"
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        zeropoint(exe, "train", MODEL, *common, "--weights", "int4", "--epochs", 1, "-o", out, env=env)
        outs.append(out.read_bytes())
    good &= check(outs[0] == outs[1], "same bytes at 1 and 3 threads")

    # Float training with a held-out split: a float model, the best epoch kept, a JSON-lines log.
    trained, log = work / "float.onnx", work / "log.jsonl"
    r = zeropoint(exe, "train", MODEL, *common, "--float", "--epochs", 2, "--validation-split", "0.2",
                  "--log", log, "-o", trained)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    ops = {n.op_type for n in onnx.load(trained).graph.node}
    best = max(lines, key=lambda e: e["validation"])["epoch"]
    good &= check(len(lines) == 2 and all(0 <= e["validation"] <= 100 for e in lines)
                  and "QuantizeLinear" not in ops and f"kept the model of epoch {best}" in r.stdout,
                  f"--float: float model, log {[round(e['validation'], 1) for e in lines]}, epoch {best} kept")

    # A run killed after its first epoch's checkpoint, resumed, writes what an unbroken run does.
    two = [*common, "--weights", "int4", "--activations", "uint4", "--epochs", 2]
    straight, ck, resumed = work / "straight.onnx", work / "ck.safetensors", work / "resumed.onnx"
    zeropoint(exe, "train", MODEL, *two, "-o", straight)
    ck.unlink(missing_ok=True)
    p = subprocess.Popen([str(exe), "train", str(MODEL), *map(str, two), "--checkpoint", str(ck), "-o",
                          str(work / "never.onnx")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ck.exists() and p.poll() is None:
        time.sleep(0.02)
    p.kill()
    p.wait()
    zeropoint(exe, "train", MODEL, *two, "--resume", ck, "-o", resumed)
    good &= check(straight.read_bytes() == resumed.read_bytes() and not (work / "never.onnx").exists(),
                  "killed after epoch 1 and resumed: the same bytes as an unbroken run")
    other = work / "other.onnx"
    svhn = ROOT.parent / "shared" / "assets" / "models" / "ccexam_svhn_cnn_bn.onnx"
    np.save(work / "svhn.npy", np.random.default_rng(1).normal(size=(8, 3, 32, 32)).astype(np.float32))
    r = zeropoint(exe, "train", svhn, "--data", work / "svhn.npy", "--weights", "int4", "--activations", "uint4",
                  "--epochs", 2, "--resume", ck, "-o", other, ok=False)
    good &= check(r.returncode == 1 and "a checkpoint of another model file" in r.stderr and not other.exists(),
                  f"resume from another model's checkpoint: {r.stderr.strip()}")

    bad = work / "bad.onnx"
    r = zeropoint(exe, "train", MODEL, "--data", TRAIN, *PREP, "--labels", TEST_LABELS, "--epochs", 1, "-o", bad, ok=False)
    message = r.stderr.strip()
    good &= check(r.returncode == 1 and "2000 labels for 500 training samples" in message
                  and len(message.splitlines()) == 1 and not bad.exists(), f"wrong label count: {message}")
    if not good:
        sys.exit("qat reference: some checks failed")
    print("qat reference: all checks passed")


if __name__ == "__main__":
    main()
