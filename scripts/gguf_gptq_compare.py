#!/usr/bin/env python3
"""GPTQ and AWQ inside ggml's formats (`zeropoint gguf --calib [--awq] [--method rtn]`) against llama.cpp's own best at
the same size: llama-quantize with and without an importance matrix from llama-imatrix on the same calibration text. For each preset: file size, bits
per weight, quantize wall time, and what llama.cpp's llama-perplexity measures on held-aside text: perplexity, mean KL
divergence from the float model's next-token distribution, and how often the top token is the float model's (docs/gguf.md).

Usage: python3 scripts/gguf_gptq_compare.py --model MODEL-F32.gguf --calib CALIB.txt --text EVAL.txt
       [--presets Q4_K_M,Q4_0,...] [--zeropoint target/release/zeropoint] [--llama-bin DIR] [--threads 2]
       [--ctx 512] [--chunks 8] [--calib-chunks 32] [--keep DIR] [--imatrix FILE]
       [--methods llama-quantize,imatrix,gptq,awq+gptq,awq,rtn]

--methods picks the rows: llama-quantize plain and with the importance matrix (imatrix), and zeropoint with GPTQ (gptq),
AWQ then GPTQ (awq+gptq), both with GPTQ's act-order (zeropoint's default) and without it (gptq-noact,
awq+gptq-noact), AWQ then weighted rounding (awq),
weighted rounding alone (rtn). --imatrix reuses an
importance matrix llama-imatrix made on the same text instead of computing it again.

Both tools see the same calibration text: llama-imatrix and zeropoint each take --calib-chunks windows of --ctx tokens
of it. Needs numpy (the test venv's: .venv/bin/python).
"""

import argparse
import os
import re
import subprocess
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# zeropoint's rows: the flags after --calib.
ZEROPOINT_FLAGS = {
    "gptq": [],
    "gptq-noact": ["--no-act-order"],
    "awq+gptq": ["--awq"],
    "awq+gptq-noact": ["--awq", "--no-act-order"],
    "awq": ["--awq", "--method", "rtn"],
    "awq-noclip": ["--awq", "--method", "rtn", "--no-awq-clip"],
    "rtn": ["--method", "rtn"],
}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
    return p.stdout + p.stderr


def timed(cmd):
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t


def read_logits(path):
    """A llama-perplexity --kl-divergence-base file: tokens and, per scored position, the log-probabilities (16-bit)."""
    data = open(path, "rb").read()
    assert data[:8] == b"_logits_", f"{path}: not a llama-perplexity logits file"
    n_ctx, n_vocab, n_chunk = np.frombuffer(data, "<i4", 3, 8)
    tokens = np.frombuffer(data, "<i4", n_chunk * n_ctx, 20).reshape(n_chunk, n_ctx)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    recs = np.frombuffer(data, "<u2", offset=20 + 4 * n_chunk * n_ctx).reshape(n_chunk, n_ctx - 1 - first, nv)
    head = recs[:, :, :4].copy().view("<f4")
    scale, min_lp = head[:, :, 0:1], head[:, :, 1:2]
    logp = min_lp + scale * recs[:, :, 4:4 + n_vocab].astype(np.float32)
    return tokens[:, first + 1:], logp


def evaluate(bin_dir, model, base, work, args):
    """Perplexity, mean KL divergence from the float model and same-top-token rate, from the log-probabilities
    llama-perplexity saves (its printed summary can lose its last lines at exit, a race in llama.cpp's logger)."""
    saved = os.path.join(work, os.path.basename(model) + ".logits")
    save_logits(bin_dir, model, saved, args)
    tokens, q = read_logits(saved)
    _, p = read_logits(base)
    nll = -np.take_along_axis(q, tokens[:, :, None], axis=2)
    kld = (np.exp(p) * (p - q)).sum(axis=2)
    top = (p.argmax(axis=2) == q.argmax(axis=2)).mean()
    os.remove(saved)
    return float(np.exp(nll.mean())), float(kld.mean()), float(kld.std() / np.sqrt(kld.size)), 100 * float(top)


def save_logits(bin_dir, model, path, args):
    run([os.path.join(bin_dir, "llama-perplexity"), "-m", model, "-f", args.text, "-c", str(args.ctx),
         "--chunks", str(args.chunks), "-t", str(args.threads), "--kl-divergence-base", path])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--presets", default="Q4_K_M,Q4_0,Q3_K_M,Q2_K,Q5_K_M,Q6_K")
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target/release/zeropoint"))
    ap.add_argument("--llama-bin")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--keep")
    ap.add_argument("--imatrix")
    ap.add_argument("--methods", default="llama-quantize,imatrix,gptq")
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(ZEROPOINT_FLAGS) - {"llama-quantize", "imatrix"}
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}")
    bin_dir = args.llama_bin or run([os.path.join(ROOT, "scripts/build-llama-cpp")]).strip().splitlines()[-1]
    work = args.keep or tempfile.mkdtemp(prefix="gguf-gptq-")
    os.makedirs(work, exist_ok=True)
    base = os.path.join(work, "float.logits")
    save_logits(bin_dir, args.model, base, args)
    tokens, p = read_logits(base)
    float_ppl = float(np.exp(-np.take_along_axis(p, tokens[:, :, None], axis=2).mean()))
    imatrix, imatrix_note = args.imatrix, f"importance matrix {args.imatrix}"
    if imatrix is None and "imatrix" in methods:
        imatrix = os.path.join(work, "imatrix.gguf")
        imatrix_s = timed([os.path.join(bin_dir, "llama-imatrix"), "-m", args.model, "-f", args.calib, "-o", imatrix,
                           "-c", str(args.ctx), "--chunks", str(args.calib_chunks), "-b", str(args.ctx),
                           "-t", str(args.threads)])
        imatrix_note = f"llama-imatrix took {imatrix_s:.1f} s"
    print(f"model {args.model}; calibration {args.calib} ({args.calib_chunks} x {args.ctx} tokens), evaluation "
          f"{args.text} ({args.chunks} x {args.ctx}); {args.threads} threads; {imatrix_note}; "
          f"float perplexity {float_ppl:.4f}")
    print()
    print("| preset | method | MB | bits/weight | quantize s | perplexity | mean KLD | same top token % |")
    print("|---|---|---|---|---|---|---|---|")
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    for preset in args.presets.split(","):
        files = []
        for method in methods:
            out = os.path.join(work, f"{preset}-{method}.gguf")
            if method in ZEROPOINT_FLAGS:
                cmd = [args.zeropoint, "gguf", args.model, "-o", out, "--type", preset, "--calib", args.calib,
                       "--calib-chunks", str(args.calib_chunks), "--calib-ctx", str(args.ctx)]
                t = time.perf_counter()
                p = subprocess.run(cmd + ZEROPOINT_FLAGS[method], capture_output=True, text=True, env=env)
                seconds = time.perf_counter() - t
                if p.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
                label = f"zeropoint {method}"
            else:
                cmd = [os.path.join(bin_dir, "llama-quantize")]
                if method == "imatrix":
                    cmd += ["--imatrix", imatrix]
                seconds = timed(cmd + [args.model, out, preset, str(args.threads)])
                label = "llama-quantize" + (" + imatrix" if method == "imatrix" else "")
            files.append((label, out, seconds))
        for method, out, seconds in files:
            ppl, kld, kld_err, top = evaluate(bin_dir, out, base, work, args)
            size = os.path.getsize(out)
            print(f"| {preset} | {method} | {size / 1e6:.2f} | {size * 32 / os.path.getsize(args.model):.3f} | "
                  f"{seconds:.1f} | {ppl:.4f} | {kld:.5f} ± {kld_err:.5f} | {top:.2f} |", flush=True)


if __name__ == "__main__":
    main()
