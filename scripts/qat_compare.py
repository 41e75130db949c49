#!/usr/bin/env python3
"""QAT in zeropoint against QAT in PyTorch on the same ONNX model, data, epochs, schedule and bits
(issue 13; docs/qat.md has the tables).

Usage: .venv/bin/python scripts/qat_compare.py [--model mnist|lcnet] [--zeropoint target/release/zeropoint]
       [--samples N] [--epochs E] [--bits 4] [--threads 1,2] [--seeds 0] [--lr LR]
       [--torch-python .cache/torch-venv/bin/python]

Needs PyTorch: Debian's python3-torch 1.13 (`apt-get install python3-torch python3-torchvision`, for
/usr/bin/python3) and onnx2torch from PyPI in a venv that sees them (--no-deps, or pip replaces
Debian's torch, a pre-release version to it, with the newest one from PyPI):
  /usr/bin/python3 -m venv --system-site-packages .cache/torch-venv
  .cache/torch-venv/bin/pip install --no-deps onnx2torch "onnx<1.18" "ml-dtypes<0.5" "protobuf<5" "numpy<2"

--model mnist (the default): the shared MNIST CNN (A1), converted to PyTorch with onnx2torch. The
data: the first --samples (10000) MNIST training images with their labels, normalized
(x/255 - 0.1307)/0.3081; the test: all 10 000 MNIST test images. Both tools train W{bits}A{bits}
(signed per-channel weights, unsigned per-tensor activations with a zero-point) with cross-entropy,
Adam at --lr (1e-3) for weights, biases and scales, cosine decay without warm-up, batch 64, shuffled
each epoch, 2 epochs:

- zeropoint: `zeropoint train` from its PTQ result (MSE activation ranges calibrated on the same
  samples), scales learned with LSQ / LSQ+; the exported QDQ model is evaluated in ONNX Runtime.
- PyTorch: every Conv2d and Linear of the converted model gets learnable fake quantizers from
  torch.ao's LSQ kernels (`torch._fake_quantize_learnable_per_channel_affine` on weights,
  `..._per_tensor_affine` on the layer's input, gradient scale 1/sqrt(N·Qp) as LSQ says), started
  from min-max ranges over 1000 samples; evaluated as fake-quantized in PyTorch.

--model lcnet: PP-LCNet (A4, the shared depthwise CNN: 13 depthwise Convs, HardSwish, two
squeeze-excitation blocks), on the crops of scripts/qat_lcnet.py: the first --samples (256)
training crops, unlabelled; evaluated on its 64 held-out crops and MANIFEST's four page crops
(top-1 agreement and max |delta p| against the float model). Both tools distill the float model
(KL of the softmaxes of the logits, temperature 1), Adam at --lr (1e-4), batch 8, 3 epochs, W4A4 as
above. zeropoint starts from its PTQ with MSE weight and activation ranges; PyTorch from MSE weight and activation
ranges too (a grid search of each channel's or tensor's clipping range on the weights and on the
calibration inputs), its BatchNorms folded into the Convs and its final MatMul + Add made a Gemm
before conversion (the same function; checked in ONNX Runtime) so that onnx2torch gives Conv2d and
Linear layers.

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
sys.path.insert(0, str(ROOT / "scripts"))
A1 = ROOT.parent / "shared" / "assets" / "models" / "ccexam_mnist_cnn.onnx"
MNIST = ROOT.parent / "shared" / "assets" / "data" / "mnist"
MEAN, STD = 0.1307, 0.3081
# Per model: training samples, epochs, learning rate, batch.
DEFAULTS = {"mnist": (10000, 2, 1e-3, 64), "lcnet": (256, 3, 1e-4, 8)}


def idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def images(name):
    x = idx(MNIST / f"{name}-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    return ((x - np.float32(MEAN)) / np.float32(STD)).astype(np.float32), idx(MNIST / f"{name}-labels-idx1-ubyte.gz", 8)


def lcnet_for_torch(work, x, ref):
    """A4 with each BatchNormalization folded into its Conv and MatMul + Add made a Gemm, so that
    onnx2torch gives Conv2d and Linear layers; checked in ONNX Runtime against A4's outputs `ref`
    on `x`."""
    import onnx
    from onnx import helper, numpy_helper

    from qat_lcnet import A4

    m = onnx.load(str(A4))
    g = m.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    drop = set()
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer[bn.input[0]]
        assert conv.op_type == "Conv" and len(conv.input) == 2, conv.name
        w = numpy_helper.to_array(init[conv.input[1]])
        gamma, beta, mean, var = (numpy_helper.to_array(init[n]) for n in bn.input[1:])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        init[conv.input[1]].CopyFrom(numpy_helper.from_array((w * k[:, None, None, None]).astype(np.float32),
                                                             conv.input[1]))
        bias = conv.input[1] + "_folded_bias"
        g.initializer.append(numpy_helper.from_array((beta - mean * k).astype(np.float32), bias))
        conv.input.append(bias)
        conv.output[0] = bn.output[0]
        drop.add(bn.name)
    matmul = next(n for n in g.node if n.op_type == "MatMul")
    add = next(n for n in g.node if n.op_type == "Add" and n.input[0] == matmul.output[0])
    w = numpy_helper.to_array(init[matmul.input[1]])
    init[matmul.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), matmul.input[1]))
    gemm = helper.make_node("Gemm", [matmul.input[0], matmul.input[1], add.input[1]], [add.output[0]], transB=1)
    nodes = [gemm if n is matmul else n for n in g.node if n.name not in drop and n is not add]
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    path = work / "lcnet_torch.onnx"
    onnx.save(m, str(path))
    from qat_lcnet import run
    d = float(np.abs(run(path, x) - ref).max())
    assert d < 1e-4, f"the folded model differs from A4 by {d}"
    return path


def prepare(a):
    """The evaluation data (saved for the PyTorch worker) and what scores it."""
    if a.model == "mnist":
        x, y = images("t10k")
        np.save(a.work / "mnist_eval.npy", x)
        a.eval_path = a.work / "mnist_eval.npy"
        return lambda p: {"top1": 100.0 * float(np.mean(p.argmax(1) == y))}
    from qat_lcnet import A4, dataset, metrics, run
    a.train_path, x, y, held = dataset(a.work, a.samples, 64)
    a.eval_path = a.work / "lcnet_eval.npy"
    np.save(a.eval_path, x)
    ref = run(A4, x)
    a.torch_onnx = lcnet_for_torch(a.work, x, ref)
    return lambda p: metrics(p, ref, y, held)


def zeropoint_run(a, threads, seed):
    import onnxruntime as ort

    out = a.work / f"zp_{a.model}_t{threads}_s{seed}.onnx"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if a.model == "mnist":
        model, data = A1, ["--data", str(MNIST / "train-images-idx3-ubyte.gz"), "--labels",
                           str(MNIST / "train-labels-idx1-ubyte.gz"), "--samples", str(a.samples), "--mean",
                           str(MEAN), "--std", str(STD)]
    else:
        from qat_lcnet import A4
        model, data = A4, ["--data", str(a.train_path), "--weight-range", "mse", "--activation-range", "mse"]
    cmd = [str(a.zeropoint), "train", str(model), *data, "--weights", f"int{a.bits}", "--activations",
           f"uint{a.bits}", "--epochs", str(a.epochs), "--batch-size", str(a.batch), "--lr", str(a.lr), "--seed",
           str(seed), "--json", "-o", str(out)]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"zeropoint train failed: {r.stderr.strip()}")
    total = time.time() - t
    epochs = json.loads(r.stdout)["epochs"]
    x = np.load(a.eval_path)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    outputs = np.concatenate([s.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return outputs, {"epoch_seconds": [e["seconds"] for e in epochs], "total_seconds": total}


def torch_worker(a):
    """Runs under the PyTorch venv: QAT of the converted model; saves its outputs on the
    evaluation data to --out and prints one JSON line."""
    import copy

    import onnx
    import onnx2torch
    import torch

    torch.set_num_threads(a.threads_one)
    torch.manual_seed(a.seed)
    qmax_w, qmin_w, qmax_a = 2 ** (a.bits - 1) - 1, -(2 ** (a.bits - 1)), 2 ** a.bits - 1

    def mse_range(values, lo, hi, qmin, qmax):
        """The clipping range [r·lo, r·hi] with the least fake-quantization MSE on `values` (a
        grid with a zero-point; symmetric where lo = -hi)."""
        best = None
        for r in np.linspace(0.2, 1.0, 41):
            scale = max((hi - lo) * r / (qmax - qmin), 1e-8)
            zero = np.round(qmin - lo * r / scale)
            q = np.clip(np.round(values / scale) + zero, qmin, qmax)
            err = float(np.mean((scale * (q - zero) - values) ** 2))
            if best is None or err < best[0]:
                best = (err, lo * r, hi * r)
        return float(best[1]), float(best[2])

    class Quantized(torch.nn.Module):
        """A Conv2d or Linear whose weight (per output channel, symmetric) and input (per tensor,
        with a zero-point) go through torch.ao's learnable (LSQ) fake quantization."""

        def __init__(self, layer, lo, hi, per_sample, mse):
            super().__init__()
            self.layer = layer
            w = layer.weight.detach()
            c = w.shape[0]
            peak = w.abs().reshape(c, -1).amax(1)
            if mse:  # each channel's symmetric range [-t, t] with the least MSE
                rows = w.reshape(c, -1).numpy()
                peak = torch.tensor([mse_range(r, -float(t), float(t), -qmax_w, qmax_w)[1]
                                     for r, t in zip(rows, peak)], dtype=torch.float32)
            self.w_scale = torch.nn.Parameter((peak / qmax_w).clamp_min(1e-8))
            self.w_zero = torch.zeros(c)
            scale = max((hi - lo) / qmax_a, 1e-8)
            self.a_scale = torch.nn.Parameter(torch.tensor([scale]))
            self.a_zero = torch.nn.Parameter(torch.tensor([float(round(-lo / scale))]))
            self.w_grad = 1.0 / (w[0].numel() * qmax_w) ** 0.5
            self.a_grad = 1.0 / (per_sample * qmax_a) ** 0.5

        def forward(self, x):
            x = torch._fake_quantize_learnable_per_tensor_affine(x, self.a_scale, self.a_zero, 0, qmax_a,
                                                                  self.a_grad)
            w = torch._fake_quantize_learnable_per_channel_affine(self.layer.weight, self.w_scale, self.w_zero, 0,
                                                                   qmin_w, qmax_w, self.w_grad)
            if isinstance(self.layer, torch.nn.Conv2d):
                return self.layer._conv_forward(x, w, self.layer.bias)
            return torch.nn.functional.linear(x, w, self.layer.bias)

    if a.model == "mnist":
        model = onnx2torch.convert(onnx.load(str(A1)))
        x_train, y_train = images("train")
        x_train, y_train = torch.from_numpy(x_train[:a.samples]), torch.from_numpy(y_train[:a.samples].astype(np.int64))
        teacher, init = None, a.torch_init or "minmax"
    else:
        model = onnx2torch.convert(onnx.load(a.torch_onnx))
        x_train = torch.from_numpy(np.load(a.train)[:a.samples])
        teacher, init = copy.deepcopy(model).eval(), a.torch_init or "mse"
    seen = {}  # layer name -> [min, max, per-sample elements, sampled values]

    def observe(n, x):
        x = x.detach()
        s = seen.setdefault(n, [0.0, 0.0, x[0].numel(), []])
        s[0], s[1] = min(s[0], float(x.min())), max(s[1], float(x.max()))
        s[3].append(x.flatten()[::max(1, x.numel() // 65536)].numpy().copy())

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: observe(n, i[0])) for n, m in layers]
    with torch.no_grad():
        for calib in x_train[:1000].split(64):
            model(calib)
    for h in hooks:
        h.remove()
    for n, m in layers:
        lo, hi, per_sample, values = seen[n]
        if init == "mse":
            lo, hi = mse_range(np.concatenate(values), lo, hi, 0, qmax_a)
        parent = model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model
        setattr(parent, n.rsplit(".", 1)[-1], Quantized(m, lo, hi, per_sample, init == "mse"))
    steps = a.epochs * ((len(x_train) + a.batch - 1) // a.batch)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(a.seed)
    seconds = []
    model.train()
    for _ in range(a.epochs):
        t = time.time()
        for batch in torch.randperm(len(x_train), generator=g).split(a.batch):
            x = x_train[batch]
            if teacher is None:
                loss = torch.nn.functional.cross_entropy(model(x), y_train[batch])
            else:
                # KL on the logits: the log of a Softmax's output is its input less a constant per row.
                with torch.no_grad():
                    target = torch.log(teacher(x).clamp_min(torch.finfo(torch.float32).tiny))
                student = torch.log(model(x).clamp_min(torch.finfo(torch.float32).tiny))
                loss = torch.nn.functional.kl_div(torch.log_softmax(student, 1), torch.log_softmax(target, 1),
                                                  log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds.append(time.time() - t)
    model.eval()
    x = torch.from_numpy(np.load(a.eval))
    with torch.no_grad():
        np.save(a.out, torch.cat([model(x[i:i + 500]) for i in range(0, len(x), 500)]).numpy())
    print(json.dumps({"epoch_seconds": seconds, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "init": init}))


def torch_run(a, threads, seed):
    out = a.work / f"torch_{a.model}_t{threads}_s{seed}.npy"
    cmd = [str(a.torch_python), __file__, "--torch-worker", "--model", a.model, "--threads-one", str(threads),
           "--samples", str(a.samples), "--epochs", str(a.epochs), "--bits", str(a.bits), "--lr", str(a.lr),
           "--batch", str(a.batch), "--seed", str(seed), "--eval", str(a.eval_path), "--out", str(out)]
    if a.model == "lcnet":
        cmd += ["--train", str(a.train_path), "--torch-onnx", str(a.torch_onnx)]
    if a.torch_init:
        cmd += ["--torch-init", a.torch_init]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode != 0:
        sys.exit(f"PyTorch QAT failed: {r.stderr.strip()[-2000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    info["total_seconds"] = time.time() - t
    return np.load(out), info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mnist", choices=sorted(DEFAULTS))
    p.add_argument("--zeropoint", default=ROOT / "target" / "release" / "zeropoint", type=Path)
    p.add_argument("--torch-python", default=ROOT / ".cache" / "torch-venv" / "bin" / "python", type=Path)
    p.add_argument("--samples", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--bits", default=4, type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch", type=int)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seeds", default="0", help="seeds (shuffling, and PyTorch's initial state) for the first "
                   "thread count; the other thread counts run the first seed")
    p.add_argument("--torch-init", choices=["minmax", "mse"],
                   help="PyTorch's initial weight and activation ranges (default: minmax for mnist, mse for lcnet)")
    p.add_argument("--tools", default="zeropoint,PyTorch", help="which tools run (comma-separated)")
    p.add_argument("--work", default=ROOT / ".cache" / "qat-compare", type=Path)
    p.add_argument("--seed", default=0, type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads-one", default=1, type=int, help=argparse.SUPPRESS)
    for hidden in ("--eval", "--out", "--train", "--torch-onnx"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    for k, v in zip(("samples", "epochs", "lr", "batch"), DEFAULTS[a.model]):
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.torch_worker:
        return torch_worker(a)
    a.work.mkdir(parents=True, exist_ok=True)
    score = prepare(a)
    if a.model == "mnist":
        print(f"MNIST CNN (A1), W{a.bits}A{a.bits} QAT on {a.samples} training images, {a.epochs} epochs, batch "
              f"{a.batch}, Adam {a.lr:g} with cosine decay; top-1 on the 10 000 test images")
        print("| tool | threads | seed | top-1 % | s / epoch (each) | whole run s |")
        show = lambda m: f"{m['top1']:.2f}"  # noqa: E731
        summary = lambda m: m["top1"]  # noqa: E731
    else:
        print(f"PP-LCNet (A4), W{a.bits}A{a.bits} QAT distilled on {a.samples} unlabelled crops, {a.epochs} epochs, "
              f"batch {a.batch}, Adam {a.lr:g} with cosine decay; against float on 64 held-out crops and 4 pages")
        print("| tool | threads | seed | held-out agree, max \\|dp\\| | pages agree, max \\|dp\\| | s / epoch (each) | whole run s |")
        show = lambda m: (f"{m['heldout']['agree']}/{m['heldout']['n']}, {m['heldout']['max_dp']:.3f} | "  # noqa: E731
                          f"{m['pages']['agree']}/{m['pages']['n']}, {m['pages']['max_dp']:.3f}")
        summary = lambda m: m["heldout"]["agree"]  # noqa: E731
    print("|---|---|---|---|---|---|" + ("" if a.model == "mnist" else "---|"))
    seeds = [int(s) for s in a.seeds.split(",")]
    results = {"zeropoint": [], "PyTorch": []}
    for k, threads in enumerate(int(t) for t in a.threads.split(",")):
        for seed in seeds if k == 0 else seeds[:1]:
            for tool, run in (("zeropoint", lambda: zeropoint_run(a, threads, seed)),
                              ("PyTorch", lambda: torch_run(a, threads, seed))):
                if tool not in a.tools.split(","):
                    continue
                outputs, r = run()
                m = score(outputs)
                if k == 0:
                    results[tool].append(summary(m))
                extra = f" (torch {r['torch']}, {r['threads']} threads, {r['init']} init)" if "torch" in r else ""
                each = "/".join(f"{e:.2f}" for e in r["epoch_seconds"])
                print(f"| {tool}{extra} | {threads} | {seed} | {show(m)} | {np.mean(r['epoch_seconds']):.1f} ({each}) | "
                      f"{r['total_seconds']:.1f} |", flush=True)
    for tool, values in ((t, v) for t, v in results.items() if v):
        print(f"{tool}: mean {'top-1 %' if a.model == 'mnist' else 'held-out agreement'} {np.mean(values):.3f} over "
              f"seeds {a.seeds} (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
