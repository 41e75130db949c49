#!/usr/bin/env python3
"""Builds a decoder of a real model's shape with random weights, to measure what quantizing a model of
that size costs: `quantize --mode weight-only --method gptq` wall time and peak memory (issue 14's "GPTQ on
a 0.5B model in <= 10 minutes with peak memory <= 2x the float model"). No float 0.5B model is in the
package registries; time and memory depend on the shapes, not on the weights' values, so random weights
measure them. Accuracy does not transfer: random weights have no outlier channels.

    .cache/torch-venv/bin/python scripts/decoder_scale.py build OUT_DIR [--shape qwen2.5-0.5b]
    python3 scripts/decoder_scale.py measure OUT_DIR [--zeropoint BIN] [--windows 16] [--ctx 512]

`build` writes OUT_DIR/decoder.onnx (+ decoder.onnx.data: the weights as external data), a Llama/Qwen2
decoder without KV cache: input_ids [batch, seq] int64 in, logits [batch, seq, vocab] out; RMSNorm,
rotary embeddings, grouped-query causal attention (q/k/v biases as Qwen2 has them), SwiGLU, the
embedding tied to the LM head (stored once; the head reads it through a Transpose). Weights are normal
with std 0.02 (Hugging Face's initializer), seeded. Needs torch and onnx (the torch venv of
scripts/qat_compare.py has both).

`measure` writes OUT_DIR/calib.npz (random token windows, seeded) and runs zeropoint's 4-bit GPTQ
(blocks of 32, asymmetric, batch 1) and RTN under /usr/bin/time, printing wall time, peak RSS and their
ratio to the float model's size.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHAPES = {
    # Qwen2.5-0.5B's config.json: 494M parameters with the tied embedding counted once.
    "qwen2.5-0.5b": dict(vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, qkv_bias=True),
    # SmolLM2-135M's, for a cross-check against the dequantized model of scripts/smollm2_onnx.py.
    "smollm2-135m": dict(vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, ffn=1536, qkv_bias=False),
    # A two-layer toy, to test the script.
    "tiny": dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, qkv_bias=True),
}


def build(out, shape):
    import torch
    from torch import nn

    c = SHAPES[shape]
    torch.manual_seed(0)
    head_dim = c["hidden"] // c["heads"]

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            h, kv = c["hidden"], c["kv_heads"] * head_dim
            self.norm1, self.norm2 = RMSNorm(h), RMSNorm(h)
            self.q = nn.Linear(h, h, bias=c["qkv_bias"])
            self.k = nn.Linear(h, kv, bias=c["qkv_bias"])
            self.v = nn.Linear(h, kv, bias=c["qkv_bias"])
            self.o = nn.Linear(h, h, bias=False)
            self.gate = nn.Linear(h, c["ffn"], bias=False)
            self.up = nn.Linear(h, c["ffn"], bias=False)
            self.down = nn.Linear(c["ffn"], h, bias=False)

        def forward(self, x, cos, sin, mask):
            b, s, _ = x.shape
            y = self.norm1(x)
            q = self.q(y).view(b, s, c["heads"], head_dim).transpose(1, 2)
            k = self.k(y).view(b, s, c["kv_heads"], head_dim).transpose(1, 2)
            v = self.v(y).view(b, s, c["kv_heads"], head_dim).transpose(1, 2)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            rep = c["heads"] // c["kv_heads"]
            # repeat_interleave exports as sequence operators; expand + reshape is the same.
            k = k[:, :, None].expand(b, c["kv_heads"], rep, s, head_dim).reshape(b, c["heads"], s, head_dim)
            v = v[:, :, None].expand(b, c["kv_heads"], rep, s, head_dim).reshape(b, c["heads"], s, head_dim)
            a = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5 + mask, dim=-1) @ v
            x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
            y = self.norm2(x)
            return x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(c["vocab"], c["hidden"])
            self.layers = nn.ModuleList(Layer() for _ in range(c["layers"]))
            self.norm = RMSNorm(c["hidden"])
            inv = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2).float() / head_dim))
            self.register_buffer("inv_freq", inv, persistent=False)

        def forward(self, ids):
            s = ids.shape[1]
            pos = torch.arange(s, dtype=torch.float32)
            f = torch.outer(pos, self.inv_freq)
            e = torch.cat((f, f), dim=-1)
            cos, sin = e.cos(), e.sin()
            mask = (pos[None, :] > pos[:, None]).float() * -1e9
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.norm(x) @ self.embed.weight.t()

    model = Decoder().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
    params = sum(p.numel() for p in model.parameters())
    os.makedirs(out, exist_ok=True)
    dst = os.path.join(out, "decoder.onnx")
    t = time.time()
    ids = torch.randint(0, c["vocab"], (1, 8))
    tmp = os.path.join(out, "export")
    os.makedirs(tmp, exist_ok=True)
    raw = os.path.join(tmp, "decoder.onnx")
    torch.onnx.export(model, (ids,), raw, input_names=["input_ids"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})
    # One external-data file, whatever the exporter chose (it writes one file per tensor for large models).
    import onnx

    m = onnx.load(raw)
    if os.path.exists(dst + ".data"):
        os.remove(dst + ".data")  # onnx.save appends to an existing data file
    onnx.save(m, dst, save_as_external_data=True, all_tensors_to_one_file=True, location="decoder.onnx.data",
              size_threshold=1024)
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)
    size = os.path.getsize(dst) + os.path.getsize(dst + ".data")
    json.dump(dict(shape=shape, params=params, bytes=size, **c), open(os.path.join(out, "decoder.json"), "w"), indent=1)
    print(f"wrote {dst}: {params / 1e6:.1f}M parameters, {size / 1e6:.1f} MB, in {time.time() - t:.0f} s")


def timed(cmd):
    t = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + cmd, capture_output=True, text=True)
    if t.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{t.stderr[-2000:]}")
    wall, kb = t.stderr.strip().splitlines()[-1].split()
    return float(wall), int(kb) * 1024


def measure(out, zp, windows, ctx, methods):
    import numpy as np

    info = json.load(open(os.path.join(out, "decoder.json")))
    calib = os.path.join(out, "calib.npz")
    ids = np.random.default_rng(0).integers(0, info["vocab"], (windows, ctx), dtype=np.int64)
    np.savez(calib, input_ids=ids)
    src = os.path.join(out, "decoder.onnx")
    print(f"{info['shape']}: {info['params'] / 1e6:.1f}M parameters, float model {info['bytes'] / 1e6:.1f} MB; "
          f"calibration {windows} x {ctx} tokens")
    print("| method | quantize s | peak MB | peak / float | output MB |")
    print("|---|---|---|---|---|")
    for method in methods:
        dst = os.path.join(out, f"q4-{method}.onnx")
        # "gptq+awq": GPTQ after AWQ's scaling.
        base, *extra = method.split("+")
        cmd = [zp, "quantize", src, "--mode", "weight-only", "--weights", "uint4,asym,per-block=32",
               "--method", base, "-o", dst] + [f"--{e}" for e in extra]
        if method != "rtn":
            cmd += ["--calib", calib, "--batch", "1"]
        wall, peak = timed(cmd)
        size = sum(os.path.getsize(p) for p in (dst, dst + ".data") if os.path.exists(p))
        print(f"| {method} | {wall:.1f} | {peak / 1e6:.0f} | {peak / info['bytes']:.2f}x | {size / 1e6:.1f} |",
              flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    b.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    m = sub.add_parser("measure")
    m.add_argument("out")
    m.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    m.add_argument("--windows", type=int, default=16)
    m.add_argument("--ctx", type=int, default=512)
    m.add_argument("--methods", default="rtn,gptq", help="comma-separated: rtn, gptq, awq, hqq, gptq+awq, ...")
    a = p.parse_args()
    if a.cmd == "build":
        build(a.out, a.shape)
    else:
        measure(a.out, a.zeropoint, a.windows, a.ctx, a.methods.split(","))


if __name__ == "__main__":
    main()
