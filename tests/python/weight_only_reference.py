"""`zeropoint quantize --mode weight-only` checked against independent numpy versions of its algorithms and in
ONNX Runtime.

Usage: weight_only_reference.py ZEROPOINT DIR

On a small two-layer model (an embedding table looked up by `ids` and added to `x`, a LayerNormalization, a MatMul
with K = 80, not a multiple of the block, then ReLU and a transB Gemm with a bias) and 256 correlated calibration
rows with an outlier channel:

- each export is read back with numpy, from the ONNX specifications alone (blocked DequantizeLinear, after a Gather
  of the table's rows; MatMulNBits' and GatherBlockQuantized's packing, per the contrib operators' documentation),
  and ONNX Runtime's output equals numpy's forward pass with the weights so read; QDQ exports pass onnx.checker;
  MatMulNBits and QDQ carry the same weights; the table is 4-bit with --embedding-bits 4;
- RTN: the codes, scales and zero-points are those of a numpy round-to-nearest on each block's min-max;
- GPTQ: a numpy GPTQ written from the paper (Frantar et al. 2022, Algorithm 1, one column at a time without lazy
  batches, H = 2XᵀX/n from the float model's layer inputs, 1% dampening) gives the same codes (≥ 99%) and the same
  output error (within 2%), and both have a lower output error than RTN; likewise with act-order; with
  --gptq-sequential, the same numpy GPTQ on the inputs of the partially quantized model (the 8-bit table's lookups
  for fc1, and those through the quantized fc1 for fc2, computed from the export) gives the same codes;
- HQQ: a numpy version of the half-quadratic solver (p = 0.7, β = 10, κ = 1.01, 20 iterations, each block stopping
  when its mean |error| stops falling) gives the same zero-points (to 1e-4, in ≥ 95% of blocks: where two steps'
  errors tie to rounding, summation order decides) and codes;
- AWQ: a numpy version (s = mean|x|^α normalized by √(max·min), α on a grid of 20 minimizing Σ δᵀHδ with
  δ = W − diag(1/s)·RTN(diag(s)W)) picks the same α and scales; the exported model divides the input by s (in the
  LayerNormalization's scale and bias for fc1, which only fc1 reads; with a Mul before fc2) and ONNX Runtime's output
  equals numpy's forward pass with it; its output error is below RTN's; AWQ's clipping search (each block of an
  output column clipped to ±r·max|w|, r in 1, 0.95, ..., 0.55, by the least δᵀH_bbδ; a column keeps it only where
  its error fell) clips the same blocks as a numpy version, on fc2 (fc1's K is not whole blocks);
- GPTQ writes the same bytes at 1 and 2 threads, and calibrates a model declaring a fixed batch of 1 without
  --batch 1;
- zeropoint's own executor (`zeropoint run`: MatMulNBits, GatherBlockQuantized, blocked DequantizeLinear) gives
  ONNX Runtime's outputs;
- bad requests (GPTQ without data, 3 bits as MatMulNBits, symmetric HQQ) fail with one line and exit status 1.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K1, N1, N2, BLOCK, BITS, V = 80, 64, 48, 32, 4, 50
GAMMA = np.linspace(0.5, 2.0, K1).astype(np.float32)
GAMMA[7] = 8.0  # an outlier channel, as transformers' normalized activations have (where AWQ pays)
BETA = np.linspace(-0.2, 0.2, K1).astype(np.float32)


def layer_norm(x, gamma=GAMMA, beta=BETA):
    x = x.astype(np.float64)
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return ((x - m) / np.sqrt(v + 1e-5) * gamma + beta).astype(np.float32)
FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def zeropoint(exe, *args, env=None, ok=True):
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)
    if ok and run.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args))} failed: {run.stderr}")
    return run


def build(d):
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((K1, N1)) * 0.2).astype(np.float32)
    w1[3, :] *= 6.0  # an input row with large weights
    w2 = (rng.standard_normal((N2, N1)) * 0.2).astype(np.float32)  # Gemm transB: [N, K]
    c = (rng.standard_normal(N2) * 0.1).astype(np.float32)
    emb = (rng.standard_normal((V, K1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="lookup"),
             helper.make_node("Add", ["x", "e"], ["xs"], name="add"),
             helper.make_node("LayerNormalization", ["xs", "gamma", "beta"], ["xe"], name="norm"),
             helper.make_node("MatMul", ["xe", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "c"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K1]),
                                       helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N2])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                           numpy_helper.from_array(c, "c"), numpy_helper.from_array(emb, "emb"),
                           numpy_helper.from_array(GAMMA, "gamma"), numpy_helper.from_array(BETA, "beta")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = d / "two_layers.onnx"
    onnx.save(m, path)
    # Correlated inputs: a few latent factors mixed into every feature, plus noise.
    z = rng.standard_normal((256, 6)).astype(np.float32)
    x = (z @ rng.standard_normal((6, K1)).astype(np.float32) + 0.3 * rng.standard_normal((256, K1))).astype(np.float32)
    ids = rng.integers(0, V, 256).astype(np.int64)
    np.savez(d / "calib.npz", x=x, ids=ids)
    return path, x, ids, emb, w1, w2.T.copy(), c


def forward(x, ids, emb, w1, w2, c):
    return np.maximum(layer_norm(x + emb[ids]) @ w1, 0) @ w2 + c


# ---------------------------------------------------------------------------------------------- reading the exports
def read_qdq(path):
    """{weight name: [K, N] float} from blocked DequantizeLinear nodes, per the ONNX specification."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        q = inits[n.input[0]].astype(np.float64)
        s = inits[n.input[1]].astype(np.float64)
        z = inits[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] else np.zeros_like(s)
        axis, bs = a["axis"], a["block_size"]
        s, z = np.repeat(s, bs, axis)[: q.shape[0]] if axis == 0 else np.repeat(s, bs, axis)[:, : q.shape[1]], \
            np.repeat(z, bs, axis)[: q.shape[0]] if axis == 0 else np.repeat(z, bs, axis)[:, : q.shape[1]]
        w = ((q - z) * s).astype(np.float32)
        consumer = next(c for c in m.graph.node if n.output[0] in c.input)
        out[consumer.name] = w if axis == 0 else w.T
    # A table: its rows' codes, scales and zero-points gathered, then dequantized along the last axis.
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            t = [inits[producer[i].input[0]].astype(np.float64) for i in n.input if i]
            q, s = t[0], t[1]
            z = t[2] if len(t) > 2 else np.zeros_like(s)
            bs = a["block_size"]
            out[n.output[0]] = ((q - np.repeat(z, bs, 1)[:, :q.shape[1]]) * np.repeat(s, bs, 1)[:, :q.shape[1]]).astype(
                np.float32)
    return out, m


def read_nbits(path):
    """{node name: [K, N] float, codes [K, N], zeros [blocks, N], scales [blocks, N]} from MatMulNBits nodes."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "GatherBlockQuantized":
            out[n.output[0]] = dict(w=read_gather(n, inits))
        if n.op_type != "MatMulNBits":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        k, nn, bits, bs = a["K"], a["N"], a["bits"], a["block_size"]
        blocks = (k + bs - 1) // bs
        b = inits[n.input[1]].reshape(nn, blocks, bs * bits // 8)
        per = 8 // bits
        codes = np.zeros((nn, blocks * bs), np.int64)
        for t in range(per):
            codes[:, t::per] = ((b >> (bits * t)) & ((1 << bits) - 1)).reshape(nn, -1)
        scales = inits[n.input[2]].reshape(nn, blocks).astype(np.float64)
        if len(n.input) > 3 and n.input[3]:
            zp = inits[n.input[3]]
            if zp.dtype == np.uint8:
                zp = zp.reshape(nn, -1)
                z = np.zeros((nn, zp.shape[1] * per), np.float64)
                for t in range(per):
                    z[:, t::per] = (zp >> (bits * t)) & ((1 << bits) - 1)
                zeros = z[:, :blocks]
            else:
                zeros = zp.reshape(nn, blocks).astype(np.float64)
        else:
            zeros = np.full((nn, blocks), 2 ** (bits - 1), np.float64)
        w = (codes - np.repeat(zeros, bs, 1)) * np.repeat(scales, bs, 1)
        out[n.name] = dict(w=w[:, :k].T.astype(np.float32), codes=codes[:, :k].T, zeros=zeros.T, scales=scales.T)
    return out, m


def read_gather(n, inits):
    """The [rows, D] table of a GatherBlockQuantized (gather_axis 0, quantize_axis 1): rows packed low bits first,
    zero points packed likewise per row, 2^(bits-1) when absent."""
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    bits, bs = a["bits"], a["block_size"]
    data, scales = inits[n.input[0]], inits[n.input[2]].astype(np.float64)
    rows, blocks = scales.shape
    per = 8 // bits
    codes = np.zeros((rows, data.shape[1] * per), np.int64)
    for t in range(per):
        codes[:, t::per] = (data >> (bits * t)) & ((1 << bits) - 1)
    d = blocks * bs if codes.shape[1] >= blocks * bs else codes.shape[1]
    if len(n.input) > 3 and n.input[3]:
        zp = inits[n.input[3]]
        z = np.zeros((rows, zp.shape[1] * per), np.float64)
        for t in range(per):
            z[:, t::per] = (zp >> (bits * t)) & ((1 << bits) - 1)
        z = z[:, :blocks]
    else:
        z = np.full((rows, blocks), 2 ** (bits - 1), np.float64)
    w = (codes[:, :d] - np.repeat(z, bs, 1)[:, :d]) * np.repeat(scales, bs, 1)[:, :d]
    return w.astype(np.float32)


def engine_matches_ort(exe, model, feeds, d):
    """zeropoint's own executor (`zeropoint run`) against ONNX Runtime without graph optimizations (which may fuse
    a DequantizeLinear into a MatMul computed at another precision): the largest difference over the outputs."""
    np.savez(d / "feeds.npz", **feeds)
    out = d / "engine"
    zeropoint(exe, "run", model, "-i", d / "feeds.npz", "-o", out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    diff = 0.0
    for name, y in zip(names, s.run(None, feeds)):
        z = np.load(out / (name + ".npy"))
        diff = max(diff, float(np.abs(y.astype(np.float64) - z).max()))
    return diff


def ort_run(path, x, ids):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x, "ids": ids})[0]


# ------------------------------------------------------------------------------------------------ numpy algorithms
def minmax_params(col):
    lo, hi = min(col.min(), 0.0), max(col.max(), 0.0)
    qmax = 2 ** BITS - 1
    s = np.float32((np.float64(hi) - np.float64(lo)) / qmax) if hi > lo else np.float32(1.0)
    z = float(np.clip(np.round(-np.float64(lo) / np.float64(s)), 0, qmax))
    return s, z


def quant(v, s, z):
    return np.clip(np.round(v / s + z), 0, 2 ** BITS - 1)


def rtn(w):
    k, n = w.shape
    codes, scales, zeros = np.zeros((k, n)), [], []
    for b in range(0, k, BLOCK):
        row_s, row_z = [], []
        for j in range(n):
            s, z = minmax_params(w[b:b + BLOCK, j])
            codes[b:b + BLOCK, j] = quant(w[b:b + BLOCK, j], s, z)
            row_s.append(s)
            row_z.append(z)
        scales.append(row_s)
        zeros.append(row_z)
    scales, zeros = np.array(scales, np.float64), np.array(zeros)
    deq = (codes - np.repeat(zeros, BLOCK, 0)[:k]) * np.repeat(scales, BLOCK, 0)[:k]
    return codes, deq


def gptq(w, x, act_order=False, damp=0.01):
    """GPTQ, Algorithm 1 of the paper, one input row (the paper's column) at a time: quantize, then spread the
    error over the rows not yet quantized with the upper Cholesky factor of H⁻¹."""
    w = w.astype(np.float64).copy()
    k, n = w.shape
    h = 2.0 * x.T.astype(np.float64) @ x.astype(np.float64) / len(x)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[dead] = 0
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    static = None
    if act_order:  # group parameters from the weight before any update
        static = [[minmax_params(w[b:b + BLOCK, j].astype(np.float32)) for j in range(n)] for b in range(0, k, BLOCK)]
    w, h = w[perm], h[perm][:, perm]
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, H⁻¹ = UᵀU
    codes, deq = np.zeros((k, n)), np.zeros((k, n))
    params = {}
    for i in range(k):
        row = perm[i]
        g = row // BLOCK
        if not act_order and row % BLOCK == 0:
            params[g] = [minmax_params(w[i:i + BLOCK, j].astype(np.float32)) for j in range(n)]
        p = static[g] if act_order else params[g]
        s = np.array([q[0] for q in p], np.float64)
        z = np.array([q[1] for q in p])
        c = np.clip(np.round(w[i].astype(np.float32) / s.astype(np.float32) + z), 0, 2 ** BITS - 1)
        q = (c - z) * s
        codes[row], deq[row] = c, q
        err = (w[i] - q) / u[i, i]
        w[i + 1:] -= np.outer(u[i, i + 1:], err)
    return codes, deq


def hqq(w, p=0.7, beta0=10.0, kappa=1.01, iters=20):
    k, n = w.shape
    zeros = np.zeros(((k + BLOCK - 1) // BLOCK, n))
    scales = np.zeros_like(zeros)
    for b in range(0, k, BLOCK):
        for j in range(n):
            v = w[b:b + BLOCK, j].astype(np.float64)
            s, z = minmax_params(w[b:b + BLOCK, j])
            s = float(s)
            beta, best = beta0, (np.inf, z)
            for _ in range(iters):
                q = quant(v, s, z)
                err = np.mean(np.abs(v - s * (q - z)))
                if err < best[0]:
                    best = (err, z)
                else:
                    break
                r = v - s * (q - z)
                we = np.sign(r) * np.maximum(np.abs(r) - (np.abs(r) + 1e-8) ** (p - 1) / beta, 0)
                z = np.mean(q - (v - we) / s)
                beta *= kappa
            zeros[b // BLOCK, j], scales[b // BLOCK, j] = best[1], s
    return zeros


def awq(w, x, grid=20):
    """AWQ's scale search: (alpha, s) minimizing the output error of RTN(diag(s)W)/s on x."""
    h = 2.0 * x.T.astype(np.float64) @ x.astype(np.float64) / len(x)
    sx = np.abs(x.astype(np.float64)).mean(0)

    def error(s):
        q = rtn((w * s[:, None].astype(np.float32)).astype(np.float32))[1] / s[:, None]
        d = w.astype(np.float64) - q
        return float(np.sum(d * (h @ d)))

    best = (0.0, np.ones(len(sx), np.float32), error(np.ones(len(sx), np.float32)))
    for a in range(1, grid):
        t = np.maximum(sx, 1e-8) ** (a / grid)
        s = (t / np.sqrt(t.max() * t.min())).astype(np.float32)
        e = error(s)
        if e < best[2]:
            best = (a / grid, s, e)
    return best


SHRINK = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55]


def awq_clip(w, x):
    """AWQ's clipping search (the reference code's auto_clip) on a [K, N] weight whose input is x: each block of
    each output column clipped to ±r·max|w| for the r in SHRINK with the least δᵀH_bbδ over the block's inputs,
    δ = w − RTN(clipped w); a column keeps its clipping only if its summed error fell. Returns the clipped weight and
    how many blocks were clipped."""
    k, n = w.shape
    h = 2.0 * x.T.astype(np.float64) @ x.astype(np.float64) / len(x)
    blocks = range(0, k, BLOCK)

    def clamped(r):  # r[b, j]: the ratio of block b of column j
        out = w.copy()
        for bi, b in enumerate(blocks):
            m = np.abs(w[b:b + BLOCK]).max(0) * r[bi].astype(np.float32)
            out[b:b + BLOCK] = np.clip(w[b:b + BLOCK], -m, m)
        return out

    def errors(r):  # e[b, j]
        d = w.astype(np.float64) - rtn(clamped(r))[1]
        return np.array([[d[b:b + BLOCK, j] @ h[b:b + BLOCK, b:b + BLOCK] @ d[b:b + BLOCK, j] for j in range(n)]
                         for b in blocks])

    shape = (len(blocks), n)
    tries = [errors(np.full(shape, np.float32(r))) for r in SHRINK]
    pick = np.argmin(np.stack(tries), axis=0)  # the first of equal errors, as zeropoint keeps it
    best = np.array(SHRINK, np.float32)[pick]
    keep = errors(best).sum(0) < tries[0].sum(0)  # per column
    best[:, ~keep] = 1.0
    return clamped(best), int(((pick > 0) & keep[None, :]).sum())


def out_err(x, w, q):
    return float(np.sum((x @ (w.astype(np.float64) - q)) ** 2))


def check_awq(exe, d, model, weights, x, ids, emb, c, inputs):
    import json
    out = d / "awq.onnx"
    run = zeropoint(exe, "quantize", model, "--mode", "weight-only", "--method", "awq", "--weights", weights,
                    "--calib", d / "calib.npz", "--json", "-o", out)
    report = {tuple(a["layers"]): a for a in json.loads(run.stdout)["awq"]}
    nb = read_nbits(out)[0]
    m = onnx.load(out)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    inverse, scaled, clipped, blocks = {}, [], 0, 0
    for name, (xi, w) in inputs.items():
        alpha, s, err = awq(w, xi)
        node = next(n for n in m.graph.node if n.name == name)
        before = producer.get(node.input[0])
        if before is not None and before.op_type == "LayerNormalization":  # 1/s folded into its scale and bias
            inv = inits[before.input[1]] / GAMMA
            folded = np.allclose(inits[before.input[2]], BETA * inv, rtol=1e-6, atol=1e-7)
            check(folded and name == "fc1", f"awq {name}: 1/s folded into the LayerNormalization's scale and bias")
        elif before is not None and before.op_type == "Mul":
            inv = inits[before.input[1]]
            check(name == "fc2", f"awq {name}: 1/s in a Mul before the layer")
        else:
            inv = np.ones(len(s), np.float32)
        inverse[name] = inv
        got = report[(name,)]["alpha"]
        check(abs(got - alpha) < 1e-9 and np.allclose(1 / inv, s, rtol=1e-5),
              f"awq {name}: alpha {got:.2f} and the scales are numpy's (alpha {alpha:.2f})")
        scaled_w = (w * s[:, None]).astype(np.float32)
        if len(w) % BLOCK == 0:  # AWQ's clipping search runs where K is whole blocks: fc2
            scaled_w, n_clipped = awq_clip(scaled_w, (xi / s).astype(np.float32))
            clipped += n_clipped
            blocks += scaled_w.size // BLOCK
        codes = rtn(scaled_w)[0]
        check(np.mean(nb[name]["codes"] == codes) >= 0.999, f"awq {name}: codes are RTN's of diag(s)W, clipped")
        e, plain = out_err(xi, w, nb[name]["w"] * inv[:, None]), out_err(xi, w, rtn(w)[1])
        check(e < plain if alpha > 0 else e <= plain * (1 + 1e-6),
              f"awq {name}: output error {e:.4g} vs RTN's {plain:.4g}")
        scaled.append(alpha > 0)
    check(any(scaled), "awq scales at least one layer of this model (alpha > 0)")
    got = json.loads(run.stdout)["awq_clipped_blocks"]
    check(got == [clipped, blocks] and 0 < clipped < blocks,
          f"awq: {got[0]} of {got[1]} blocks clipped, numpy's search {clipped} of {blocks}")
    y = ort_run(out, x, ids)
    table = read_gather(next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized"), inits)
    normed = layer_norm(x + table[ids], GAMMA * inverse["fc1"], BETA * inverse["fc1"])
    ref = np.maximum(normed @ nb["fc1"]["w"], 0) * inverse["fc2"] @ nb["fc2"]["w"] + c
    check(np.allclose(y, ref, rtol=1e-4, atol=1e-4), f"awq: ONNX Runtime runs x/s through the scaled weights "
          f"(max |diff| {np.abs(y - ref).max():.1e})")


# ------------------------------------------------------------------------------------------------------------ main
def main():
    exe, d = Path(sys.argv[1]), Path(sys.argv[2])
    model, x, ids, emb, w1, w2, c = build(d)
    xe = layer_norm(x + emb[ids])  # the float model's input to fc1
    r = np.maximum(xe @ w1, 0)  # and to fc2
    inputs = {"fc1": (xe, w1), "fc2": (r, w2)}
    weights = f"uint{BITS},asym,per-block={BLOCK}"
    got = {}
    for method in ["rtn", "gptq", "hqq"]:
        for fmt in ["qdq", "matmulnbits"]:
            out = d / f"{method}.{fmt}.onnx"
            zeropoint(exe, "quantize", model, "--mode", "weight-only", "--method", method, "--format", fmt,
                      "--weights", weights, "--embedding-bits", "4", "--calib", d / "calib.npz", "-o", out)
            read = read_qdq(out)[0] if fmt == "qdq" else {k: v["w"] for k, v in read_nbits(out)[0].items()}
            if fmt == "qdq":
                onnx.checker.check_model(onnx.load(out), full_check=True)
            y = ort_run(out, x, ids)
            ref = forward(x, ids, read["e"], read["fc1"], read["fc2"], c)
            check(np.allclose(y, ref, rtol=1e-4, atol=1e-4) and set(read) == {"fc1", "fc2", "e"},
                  f"{method} {fmt}: ONNX Runtime runs the weights numpy reads from the file "
                  f"(max |diff| {np.abs(y - ref).max():.2e})")
            got[method, fmt] = read
            diff = engine_matches_ort(exe, out, {"x": x, "ids": ids}, d)
            check(diff < 1e-4, f"{method} {fmt}: zeropoint's executor runs it as ONNX Runtime does (max |diff| {diff:.1e})")
        if method != "hqq":
            same = all(np.array_equal(got[method, "qdq"][n], got[method, "matmulnbits"][n]) for n in ["fc1", "fc2", "e"])
            check(same, f"{method}: MatMulNBits and QDQ carry the same weights")
    nb = read_nbits(d / "rtn.matmulnbits.onnx")[0]
    table = rtn(emb.T.copy())[1].T
    check(np.allclose(nb["e"]["w"], table, atol=1e-6), "rtn table: equal numpy's round to nearest per row block")
    for name, (xi, w) in inputs.items():
        codes, deq = rtn(w)
        check(np.array_equal(nb[name]["codes"], codes) and np.allclose(nb[name]["w"], deq, atol=1e-6),
              f"rtn {name}: codes and parameters equal numpy's round to nearest")
    for act_order in [False, True]:
        tag = "gptq, act-order" if act_order else "gptq"
        if act_order:
            out = d / "gptq_act.onnx"
            zeropoint(exe, "quantize", model, "--mode", "weight-only", "--method", "gptq", "--act-order",
                      "--weights", weights, "--calib", d / "calib.npz", "-o", out)
            mine = read_nbits(out)[0]
        else:
            mine = read_nbits(d / "gptq.matmulnbits.onnx")[0]
        for name, (xi, w) in inputs.items():
            codes, deq = gptq(w, xi, act_order)
            same = float(np.mean(mine[name]["codes"] == codes))
            e_mine, e_ref, e_rtn = out_err(xi, w, mine[name]["w"]), out_err(xi, w, deq), out_err(xi, w, rtn(w)[1])
            check(same >= 0.99 and abs(e_mine - e_ref) <= 0.02 * e_ref,
                  f"{tag} {name}: {100 * same:.2f}% of codes as numpy's GPTQ, output error {e_mine:.4g} vs {e_ref:.4g}")
            check(e_mine < e_rtn and e_ref < e_rtn, f"{tag} {name}: output error below RTN's ({e_mine:.4g} < {e_rtn:.4g})")
    # Sequential GPTQ: each layer's Hessian from the inputs of the model with every layer before it quantized: fc1's
    # from the 8-bit table's lookups, fc2's from those through the quantized fc1, both read back from the export.
    out = d / "gptq_seq.onnx"
    zeropoint(exe, "quantize", model, "--mode", "weight-only", "--method", "gptq", "--gptq-sequential",
              "--weights", weights, "--calib", d / "calib.npz", "-o", out)
    seq, m = read_nbits(out)
    table = read_gather(next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized"),
                        {t.name: numpy_helper.to_array(t) for t in m.graph.initializer})
    xq = layer_norm(x + table[ids])
    for name, xi, w in (("fc1", xq, w1), ("fc2", np.maximum(xq @ seq["fc1"]["w"], 0), w2)):
        codes, _ = gptq(w, xi)
        same = float(np.mean(seq[name]["codes"] == codes))
        check(same >= 0.99, f"gptq, sequential {name}: {100 * same:.2f}% of codes as numpy's GPTQ on the partially "
              f"quantized model's inputs")
    float_codes = read_nbits(d / "gptq.matmulnbits.onnx")[0]["fc2"]["codes"]
    check(not np.array_equal(seq["fc2"]["codes"], float_codes), "gptq, sequential fc2: other codes than with the "
          "float model's inputs")
    hq = read_nbits(d / "hqq.matmulnbits.onnx")[0]
    for name, (xi, w) in inputs.items():
        z = hqq(w)
        # Where two iterations' errors tie to rounding, summation order decides which one stops: a few blocks may
        # end one step apart.
        same = float(np.mean(np.abs(hq[name]["zeros"] - z) < 1e-4))
        check(same >= 0.95, f"hqq {name}: {100 * same:.1f}% of zero-points equal numpy's solver's")
        s = hq[name]["scales"]
        ref_codes = quant(w, np.repeat(s, BLOCK, 0)[:K1 if name == "fc1" else N1], np.repeat(z, BLOCK, 0)[:w.shape[0]])
        check(np.mean(hq[name]["codes"] == ref_codes) >= 0.999, f"hqq {name}: codes equal numpy's")
    check_awq(exe, d, model, weights, x, ids, emb, c, inputs)
    # A model exported with a fixed batch of one takes its calibration samples one at a time.
    m = onnx.load(model)
    for i in m.graph.input:
        i.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, d / "batch_one.onnx")
    run = zeropoint(exe, "quantize", d / "batch_one.onnx", "--mode", "weight-only", "--method", "gptq",
                    "--calib", d / "calib.npz", "-o", d / "batch_one.w4.onnx", ok=False)
    check(run.returncode == 0, f"a model with a fixed batch of 1 calibrates with the default batch: {run.stderr.strip()}")
    outs = []
    for threads in ["1", "2"]:
        out = d / f"gptq_t{threads}.onnx"
        zeropoint(exe, "quantize", model, "--mode", "weight-only", "--method", "gptq", "--weights", weights,
                  "--calib", d / "calib.npz", "-o", out, env={**os.environ, "RAYON_NUM_THREADS": threads})
        outs.append(out.read_bytes())
    check(outs[0] == outs[1], "gptq: the same bytes at 1 and 2 threads")
    bad = [(["--method", "gptq"], "GPTQ needs calibration data"),
           (["--weights", "uint3,asym,per-block=32"], "MatMulNBits and GatherBlockQuantized run 2, 4 or 8 bits"),
           (["--method", "hqq", "--weights", "int4,sym,per-block=32"], "HQQ optimizes the zero-point")]
    for args, message in bad:
        out = d / "bad.onnx"
        run = zeropoint(exe, "quantize", model, "--mode", "weight-only", *args, "-o", out, ok=False)
        lines = run.stderr.strip().splitlines()
        check(run.returncode == 1 and len(lines) == 1 and message in lines[0] and not out.exists(),
              f"refused in one line: {lines[0] if lines else '(nothing)'}")
    if FAILED:
        sys.exit(f"weight-only reference: {len(FAILED)} checks failed")
    print("weight-only reference: all checks passed")


if __name__ == "__main__":
    main()
