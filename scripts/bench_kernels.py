#!/usr/bin/env python3
"""numpy's in-place equivalents of zeropoint's kernels, on the same sizes, and the table.

Usage: bench_kernels.py ZEROPOINT_JSONL [--quick]

Reads zeropoint's results (JSON lines from `cargo bench --bench kernels -- --json`), measures numpy
in this same run, and prints GB/s of f32 input with the ratios. Two numpy versions of each kernel:

  in-place   the ufunc sequence (divide, rint, clip, cast, ...) over the whole array, writing into
             preallocated buffers: what a numpy user writes;
  blocked    the same sequence over blocks of 256K elements that stay in cache: numpy's best.

numpy's elementwise ufuncs run on one thread, so its columns are single-threaded in every row.
Every case is timed REPS times and the fastest run kept.
"""

import json
import sys
import time

import numpy as np

REPS = 7
BLOCK = 1 << 18


def best(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def over(n, block, step):
    """Runs step(lo, hi) over [0, n) whole (block None) or in blocks."""
    if block is None:
        return lambda: step(0, n)
    return lambda: [step(i, min(i + block, n)) for i in range(0, n, block)]


def cases(quick):
    n = (1 << 22) if quick else (64 << 20)
    side = 1024 if quick else 4096
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(n, dtype=np.float32) * 1.7).astype(np.float32)
    s = np.float32(np.abs(x).max() / 127)
    tmp = np.empty_like(x)
    q = np.empty(n, dtype=np.int8)
    dst = np.empty_like(x)
    buf = x.copy()
    out = {}

    def copy(a, b):
        np.copyto(dst[a:b], x[a:b])

    scratch = np.empty(BLOCK, dtype=np.float32)

    def work(a, b):
        """The temporary for elements a..b: a window of the big buffer when run whole, the small
        cache-resident scratch buffer when run in blocks."""
        return tmp[a:b] if b - a > BLOCK else scratch[: b - a]

    def quantize(a, b):
        t = work(a, b)
        np.divide(x[a:b], s, out=t)
        np.rint(t, out=t)
        np.clip(t, -128, 127, out=t)
        np.copyto(q[a:b], t, casting="unsafe")

    def dequantize(a, b):
        np.multiply(q[a:b], s, out=tmp[a:b], dtype=np.float32)  # z = 0: (q - z)·s in one ufunc

    def fake_quant(a, b):
        t = buf[a:b]
        np.divide(t, s, out=t)
        np.rint(t, out=t)
        np.clip(t, -128, 127, out=t)
        np.multiply(t, s, out=t)

    for name, step in [
        ("copy f32", copy),
        ("quantize per-tensor int8", quantize),
        ("dequantize per-tensor int8", dequantize),
        ("fake-quant per-tensor int8 (in place)", fake_quant),
    ]:
        out[name] = (4 * n, n, step)

    m = (rng.standard_normal((side, side), dtype=np.float32) * 1.7).astype(np.float32)
    mtmp = np.empty_like(m)
    mq = np.empty(m.shape, dtype=np.int8)
    sc = (np.abs(m).max(axis=1, keepdims=True) / 127).astype(np.float32)

    mscratch = np.empty((max(1, BLOCK // side), side), dtype=np.float32)

    def per_channel(a, b):  # rows a..b
        t = mtmp[a:b] if b - a > len(mscratch) else mscratch[: b - a]
        np.divide(m[a:b], sc[a:b], out=t)
        np.rint(t, out=t)
        np.clip(t, -128, 127, out=t)
        np.copyto(mq[a:b], t, casting="unsafe")

    blocks = m.reshape(side, side // 32, 32)
    btmp = np.empty_like(blocks)
    bq = np.empty(blocks.shape, dtype=np.int8)
    sb = (np.abs(blocks).max(axis=2, keepdims=True) / 7).astype(np.float32)
    packed = np.empty((side, side // 32, 16), dtype=np.uint8)
    lo = np.empty_like(packed)

    bscratch = np.empty((max(1, BLOCK // side),) + blocks.shape[1:], dtype=np.float32)

    def per_block_int4(a, b):  # rows a..b
        t = btmp[a:b] if b - a > len(bscratch) else bscratch[: b - a]
        np.divide(blocks[a:b], sb[a:b], out=t)
        np.rint(t, out=t)
        np.clip(t, -8, 7, out=t)
        np.copyto(bq[a:b], t, casting="unsafe")
        u = bq[a:b].view(np.uint8)
        np.bitwise_and(u[..., 0::2], 0x0F, out=lo[a:b])
        np.left_shift(u[..., 1::2], 4, out=packed[a:b])
        np.bitwise_or(packed[a:b], lo[a:b], out=packed[a:b])

    rows_per_block = max(1, BLOCK // side)
    out["quantize per-channel int8 (axis 0)"] = (4 * side * side, side, per_channel)
    out["quantize per-block-32 int4 (packed)"] = (4 * side * side, side, per_block_int4)
    return out, rows_per_block


def main():
    zp_file = sys.argv[1]
    quick = "--quick" in sys.argv
    reps = 3 if quick else REPS
    zp = [json.loads(line) for line in open(zp_file) if line.startswith("{")]
    table, rows_per_block = cases(quick)
    inplace, blocked = {}, {}
    for name, (nbytes, units, step) in table.items():
        block = rows_per_block if units < 1 << 20 else BLOCK
        inplace[name] = nbytes / best(over(units, None, step), reps) / 1e9
        blocked[name] = nbytes / best(over(units, block, step), reps) / 1e9
    # Each kernel is compared with a copy of as many bytes: the flat cases with the 64M-value copy, the
    # matrix cases (per-channel, per-block, ggml rows) with the matrix-sized one.
    copies = {(r["bytes"], r["threads"]): r["gbps"] for r in zp
              if r["name"].startswith("copy f32")}
    head = f"{'kernel':<38} {'threads':>7} {'zeropoint':>9} {'numpy':>6} {'numpy':>7} {'x numpy':>8} {'x numpy':>8} {'% of':>5}"
    print(head)
    print(f"{'(GB/s of f32 input)':<38} {'':>7} {'':>9} {'in-pl.':>6} {'blocked':>7} {'in-pl.':>8} {'blocked':>8} {'copy':>5}")
    for r in zp:
        name, t, g = r["name"], r["threads"], r["gbps"]
        if name in inplace:
            numpy_cols = (f"{inplace[name]:>6.2f} {blocked[name]:>7.2f} "
                          f"{g / inplace[name]:>8.2f} {g / blocked[name]:>8.2f}")
        else:  # ggml's block formats have no numpy equivalent here
            numpy_cols = f"{'-':>6} {'-':>7} {'-':>8} {'-':>8}"
        copy = copies[(r["bytes"], t)]
        print(f"{name:<38} {t:>7} {g:>9.2f} {numpy_cols} {100 * g / copy:>4.0f}%")
    print(f"copy f32: zeropoint's one memcpy per thread of a buffer of the same size, same thread count. "
          f"numpy {np.__version__}, single-threaded ufuncs; {'quick (cache-resident) sizes' if quick else '64M values, 4096x4096 matrices'}.")


if __name__ == "__main__":
    main()
