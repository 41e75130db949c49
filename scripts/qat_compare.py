#!/usr/bin/env python3
"""QAT in zeropoint against QAT in PyTorch on the same ONNX model, data, epochs, schedule and bits
(issue 13; docs/qat.md has the table).

Usage: .venv/bin/python scripts/qat_compare.py [--zeropoint target/release/zeropoint] [--samples 10000]
       [--epochs 2] [--bits 4] [--threads 1,2] [--seeds 0] [--lr 1e-3]
       [--torch-python .cache/torch-venv/bin/python]

Needs PyTorch: Debian's python3-torch 1.13 (`apt-get install python3-torch python3-torchvision`) and
onnx2torch from PyPI in a venv that sees them:
  python3 -m venv --system-site-packages .cache/torch-venv
  .cache/torch-venv/bin/pip install onnx2torch "onnx<1.18" "numpy<2" "ml-dtypes<0.5"   # torch 1.13 needs numpy 1.x

The model: the shared MNIST CNN (A1), converted to PyTorch with onnx2torch. The data: the first
--samples MNIST training images with their labels, normalized (x/255 - 0.1307)/0.3081; the test:
all 10 000 MNIST test images. Both tools train W{bits}A{bits} (signed per-channel weights, unsigned
per-tensor activations with a zero-point) with cross-entropy, Adam at --lr for weights, biases and
scales, cosine decay without warm-up, batch 64, shuffled each epoch:

- zeropoint: `zeropoint train` from its PTQ result (MSE activation ranges calibrated on the same
  samples), scales learned with LSQ / LSQ+; the exported QDQ model is evaluated in ONNX Runtime.
- PyTorch: every Conv2d and Linear of the converted model gets learnable fake quantizers from
  torch.ao's LSQ kernels (`torch._fake_quantize_learnable_per_channel_affine` on weights,
  `..._per_tensor_affine` on the layer's input, gradient scale 1/sqrt(N·Qp) as LSQ says), started
  from min-max ranges over 1000 samples; evaluated as fake-quantized in PyTorch.

Each tool runs at each thread count (RAYON_NUM_THREADS / torch.set_num_threads); the time per
epoch is the training loop's, without loading or calibration.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
A1 = ROOT.parent / "shared" / "assets" / "models" / "ccexam_mnist_cnn.onnx"
MNIST = ROOT.parent / "shared" / "assets" / "data" / "mnist"
MEAN, STD = 0.1307, 0.3081
BATCH = 64


def idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def images(name):
    x = idx(MNIST / f"{name}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32), idx(MNIST / f"{name}-labels-idx1-ubyte.gz", 8)


def zeropoint_run(a, threads, work, seed):
    import onnxruntime as ort

    out = work / f"zp_t{threads}_s{seed}.onnx"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(a.zeropoint), "train", str(A1), "--data", str(MNIST / "train-images-idx3-ubyte.gz"), "--labels",
           str(MNIST / "train-labels-idx1-ubyte.gz"), "--samples", str(a.samples), "--mean", str(MEAN), "--std",
           str(STD), "--weights", f"int{a.bits}", "--activations", f"uint{a.bits}", "--epochs", str(a.epochs),
           "--batch-size", str(BATCH), "--lr", str(a.lr), "--seed", str(seed), "--json", "-o", str(out)]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"zeropoint train failed: {r.stderr.strip()}")
    total = time.time() - t
    epochs = json.loads(r.stdout)["epochs"]
    x, y = images("t10k")
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    logits = np.concatenate([s.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return {"top1": 100.0 * float(np.mean(logits.argmax(1) == y)),
            "epoch_seconds": float(np.mean([e["seconds"] for e in epochs])), "total_seconds": total}


def torch_worker(a):
    """Runs under the PyTorch venv: QAT of the converted model; prints one JSON line."""
    import onnx
    import onnx2torch
    import torch

    torch.set_num_threads(a.threads_one)
    torch.manual_seed(a.seed)
    qmax_w, qmin_w, qmax_a = 2 ** (a.bits - 1) - 1, -(2 ** (a.bits - 1)), 2 ** a.bits - 1

    class Quantized(torch.nn.Module):
        """A Conv2d or Linear whose weight (per output channel, symmetric) and input (per tensor,
        with a zero-point) go through torch.ao's learnable (LSQ) fake quantization."""

        def __init__(self, layer, x):
            super().__init__()
            self.layer = layer
            w = layer.weight.detach()
            c = w.shape[0]
            self.w_scale = torch.nn.Parameter((w.abs().reshape(c, -1).amax(1) / qmax_w).clamp_min(1e-8))
            self.w_zero = torch.zeros(c)
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = max((hi - lo) / qmax_a, 1e-8)
            self.a_scale = torch.nn.Parameter(torch.tensor([scale]))
            self.a_zero = torch.nn.Parameter(torch.tensor([float(round(-lo / scale))]))
            self.w_grad = 1.0 / (w[0].numel() * qmax_w) ** 0.5
            self.a_grad = 1.0 / (x[0].numel() * qmax_a) ** 0.5

        def forward(self, x):
            x = torch._fake_quantize_learnable_per_tensor_affine(x, self.a_scale, self.a_zero, 0, qmax_a,
                                                                  self.a_grad)
            w = torch._fake_quantize_learnable_per_channel_affine(self.layer.weight, self.w_scale, self.w_zero, 0,
                                                                   qmin_w, qmax_w, self.w_grad)
            if isinstance(self.layer, torch.nn.Conv2d):
                return self.layer._conv_forward(x, w, self.layer.bias)
            return torch.nn.functional.linear(x, w, self.layer.bias)

    model = onnx2torch.convert(onnx.load(str(A1)))
    x_train, y_train = images("train")
    x_train, y_train = torch.from_numpy(x_train[:a.samples]), torch.from_numpy(y_train[:a.samples].astype(np.int64))
    calib = x_train[:1000]
    inputs = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach())) for n, m in layers]
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    for n, m in layers:
        parent = model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model
        setattr(parent, n.rsplit(".", 1)[-1], Quantized(m, inputs[n]))
    steps = a.epochs * ((len(x_train) + BATCH - 1) // BATCH)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(a.seed)
    seconds = []
    model.train()
    for _ in range(a.epochs):
        t = time.time()
        for batch in torch.randperm(len(x_train), generator=g).split(BATCH):
            loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds.append(time.time() - t)
    model.eval()
    x, y = images("t10k")
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)])
    top1 = 100.0 * float((logits.argmax(1).numpy() == y).mean())
    print(json.dumps({"top1": top1, "epoch_seconds": float(np.mean(seconds)), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def torch_run(a, threads, seed):
    cmd = [str(a.torch_python), __file__, "--torch-worker", "--threads-one", str(threads), "--samples", str(a.samples),
           "--epochs", str(a.epochs), "--bits", str(a.bits), "--lr", str(a.lr), "--seed", str(seed)]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode != 0:
        sys.exit(f"PyTorch QAT failed: {r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["total_seconds"] = time.time() - t
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=ROOT / "target" / "release" / "zeropoint", type=Path)
    p.add_argument("--torch-python", default=ROOT / ".cache" / "torch-venv" / "bin" / "python", type=Path)
    p.add_argument("--samples", default=10000, type=int)
    p.add_argument("--epochs", default=2, type=int)
    p.add_argument("--bits", default=4, type=int)
    p.add_argument("--lr", default=1e-3, type=float)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seeds", default="0", help="seeds (shuffling, and PyTorch's initial state) for the first "
                   "thread count; the other thread counts run the first seed")
    p.add_argument("--seed", default=0, type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", default=ROOT / ".cache" / "qat-compare", type=Path)
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads-one", default=1, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_worker:
        return torch_worker(a)
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"MNIST CNN (A1), W{a.bits}A{a.bits} QAT on {a.samples} training images, {a.epochs} epochs, batch {BATCH}, "
          f"Adam {a.lr:g} with cosine decay; top-1 on the 10 000 test images")
    print("| tool | threads | seed | top-1 % | s / epoch | whole run s |")
    print("|---|---|---|---|---|---|")
    seeds = [int(s) for s in a.seeds.split(",")]
    top1 = {"zeropoint": [], "PyTorch": []}
    for k, threads in enumerate(int(t) for t in a.threads.split(",")):
        for seed in seeds if k == 0 else seeds[:1]:
            for tool, run in (("zeropoint", lambda: zeropoint_run(a, threads, a.work, seed)),
                              ("PyTorch", lambda: torch_run(a, threads, seed))):
                r = run()
                if k == 0:
                    top1[tool].append(r["top1"])
                extra = f" (torch {r['torch']}, {r['threads']} threads)" if "torch" in r else ""
                print(f"| {tool}{extra} | {threads} | {seed} | {r['top1']:.2f} | {r['epoch_seconds']:.1f} | "
                      f"{r['total_seconds']:.1f} |", flush=True)
    for tool, values in top1.items():
        print(f"{tool}: mean top-1 {np.mean(values):.3f} % over seeds {a.seeds} (min {min(values):.2f}, "
              f"max {max(values):.2f})")


if __name__ == "__main__":
    main()
