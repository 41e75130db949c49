#!/usr/bin/env python3
"""zeropoint gguf next to llama.cpp's llama-quantize on one model, preset by preset: byte-identical or not, file size,
bits per weight, quantize wall time of each (same thread count, measured in the same run), and, given a text, the
perplexity llama.cpp's own llama-perplexity measures on each output (docs/gguf.md).

Usage: python3 scripts/gguf_compare.py --model MODEL-F16.gguf [--zeropoint target/release/zeropoint]
       [--llama-bin DIR] [--presets Q8_0,Q4_K_M,...] [--threads 2] [--runs 1]
       [--text EVAL.txt --ctx 512 --chunks 8] [--calib CALIB.txt --calib-chunks 16] [--imatrix FILE] [--keep DIR]

--llama-bin defaults to what scripts/build-llama-cpp builds (and prints). With --calib, llama-imatrix computes an
importance matrix on that text and every preset is run again with it (both tools, --imatrix); --imatrix FILE does the
same with an importance matrix made before (no llama-imatrix run); with --text, each
output's perplexity is measured (llama-perplexity, --chunks windows of --ctx tokens). Needs no Python package.
"""

import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L",
           "Q3_K_M", "Q3_K_S", "Q2_K"]


def gguf_elements(path):
    """Total element count of a GGUF file's tensors (header only)."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)
    pos = 8
    n_tensors, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16

    def string(pos):
        (n,) = struct.unpack_from("<Q", data, pos)
        return pos + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(pos, ty):
        if ty == 8:
            return string(pos)
        if ty == 9:
            elem, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if elem == 8:
                for _ in range(n):
                    pos = string(pos)
                return pos
            return pos + n * sizes[elem]
        return pos + sizes[ty]

    for _ in range(n_kv):
        pos = string(pos)
        (ty,) = struct.unpack_from("<I", data, pos)
        pos = value(pos + 4, ty)
    total = 0
    for _ in range(n_tensors):
        pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", data, pos)
        dims = struct.unpack_from("<%dq" % n_dims, data, pos + 4)
        pos += 4 + 8 * n_dims + 4 + 8
        count = 1
        for d in dims:
            count *= d
        total += count
    return total


def run(cmd, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out.stdout + out.stderr, seconds


def perplexity(bin_dir, model, args):
    text, _ = run([os.path.join(bin_dir, "llama-perplexity"), "-m", model, "-f", args.text, "-c", str(args.ctx),
                   "--chunks", str(args.chunks), "-t", str(args.threads), "-b", str(args.ctx)])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
    return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))


def quantize_both(args, bin_dir, preset, work, imatrix):
    ours, theirs = os.path.join(work, f"zp-{preset}.gguf"), os.path.join(work, f"llama-{preset}.gguf")
    extra = ["--imatrix", imatrix] if imatrix else []
    zp_s, lq_s = [], []
    for _ in range(args.runs):
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
        zp_s.append(run([args.zeropoint, "gguf", args.model, "-o", ours, "--type", preset] + extra, env=env)[1])
        lq_s.append(run([os.path.join(bin_dir, "llama-quantize")] + extra + [args.model, theirs, preset,
                                                                           str(args.threads)])[1])
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        same = a.read() == b.read()
    return ours, theirs, same, min(zp_s), min(lq_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    # Build it with `cargo build --release -p zeropoint-cli` (target/debug holds an unoptimized build
    # after a plain `cargo build`).
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target/release/zeropoint"))
    ap.add_argument("--llama-bin")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1, help="quantize each this many times, keep the fastest")
    ap.add_argument("--text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--calib")
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--imatrix")
    ap.add_argument("--keep")
    args = ap.parse_args()
    bin_dir = args.llama_bin or run([os.path.join(ROOT, "scripts/build-llama-cpp")])[0].strip().splitlines()[-1]
    work = args.keep or tempfile.mkdtemp(prefix="gguf-compare-")
    os.makedirs(work, exist_ok=True)
    elements = gguf_elements(args.model)
    print(f"model {args.model}: {elements / 1e6:.1f} M weights, {os.path.getsize(args.model) / 1e6:.1f} MB; "
          f"{args.threads} threads; llama.cpp from {bin_dir}")
    if args.text:
        ppl, err = perplexity(bin_dir, args.model, args)
        print(f"float perplexity {ppl:.4f} +/- {err:.4f} ({args.chunks} x {args.ctx} tokens of {args.text})")
    imatrices = [None]
    if args.imatrix:
        imatrices.append(args.imatrix)
    elif args.calib:
        imatrix = os.path.join(work, "imatrix.gguf")
        run([os.path.join(bin_dir, "llama-imatrix"), "-m", args.model, "-f", args.calib, "-o", imatrix, "-c",
             str(args.ctx), "--chunks", str(args.calib_chunks), "-t", str(args.threads), "-b", str(args.ctx)])
        imatrices.append(imatrix)
    cols = "| preset | imatrix | byte-identical | MB | bits/weight (file) | zeropoint s | llama-quantize s | time ratio |"
    print()
    print(cols + (" perplexity (zeropoint) |" if args.text else ""))
    print("|" + "---|" * (cols.count("|") - 1 + (1 if args.text else 0)))
    for imatrix in imatrices:
        for preset in args.presets.split(","):
            if preset == "Q2_K_S" and not imatrix:
                continue
            sub = os.path.join(work, "imatrix" if imatrix else "plain")
            os.makedirs(sub, exist_ok=True)
            ours, _, same, zp_s, lq_s = quantize_both(args, bin_dir, preset, sub, imatrix)
            size = os.path.getsize(ours)
            row = (f"| {preset} | {'yes' if imatrix else 'no'} | {'yes' if same else '**no**'} | {size / 1e6:.2f} | "
                   f"{size * 8 / elements:.3f} | {zp_s:.2f} | {lq_s:.2f} | {zp_s / lq_s:.2f} |")
            if args.text:
                ppl, err = perplexity(bin_dir, ours, args)
                row += f" {ppl:.4f} +/- {err:.4f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
