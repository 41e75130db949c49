#!/usr/bin/env python3
"""Seeds for the `gguf_files` fuzz target: small GGUF files with llama-style metadata and
F32/F16/BF16, legacy (Q4_0..Q8_0) and K-quant (Q2_K..Q6_K) tensors, written byte by byte as
ggml's `gguf_write_out` lays them out.

    python3 fuzz/gguf_seeds.py fuzz/corpus/gguf_files

Quantized blocks hold random codes behind small finite f16 scales, so that they dequantize to
finite values and reach the quantizers.
"""

import random
import struct
import sys
from pathlib import Path

# GGUF metadata value types.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}

# ggml type: (id, elements per block, bytes per block, byte offsets of f16 scales in a block).
GGML = {
    "F32": (0, 1, 4, None),
    "F16": (1, 1, 2, None),
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q8_0": (8, 32, 34, [0]),
    "Q2_K": (10, 256, 84, [80, 82]),
    "Q3_K": (11, 256, 110, [108]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
    "I32": (26, 1, 4, None),
    "BF16": (30, 1, 2, None),
}


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(ty, v):
    if ty == STRING:
        return string(v)
    if ty == ARRAY:
        elem, items = v
        return struct.pack("<IQ", elem, len(items)) + b"".join(value(elem, x) for x in items)
    return struct.pack(SCALAR[ty], v)


def tensor_data(rng, ty, n):
    _, block, size, scales = GGML[ty]
    if ty in ("F32", "F16"):
        return struct.pack("<%d%s" % (n, "f" if ty == "F32" else "e"),
                           *(rng.gauss(0, 0.05) for _ in range(n)))
    if ty == "BF16":
        return b"".join(struct.pack("<f", rng.gauss(0, 0.05))[2:] for _ in range(n))
    if ty == "I32":
        return struct.pack("<%di" % n, *(rng.randrange(-1000, 1000) for _ in range(n)))
    out = bytearray()
    for _ in range(n // block):
        b = bytearray(rng.getrandbits(8) for _ in range(size))
        for at in scales:
            b[at:at + 2] = struct.pack("<e", rng.uniform(0.0005, 0.01))
        out += b
    return bytes(out)


def gguf(metadata, tensors, seed, version=3, alignment=32):
    """metadata: [(key, type, value)]; tensors: [(name, dims (row first), ggml type)]."""
    rng = random.Random(seed)
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(metadata))
    for key, ty, v in metadata:
        out += string(key) + struct.pack("<I", ty) + value(ty, v)
    pad = lambda n: -n % alignment
    datas, offset = [], 0
    for name, dims, ty in tensors:
        n = 1
        for d in dims:
            n *= d
        data = tensor_data(rng, ty, n)
        out += string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<q", d) for d in dims)
        out += struct.pack("<IQ", GGML[ty][0], offset)
        datas.append(data)
        offset += len(data) + pad(len(data))
    if tensors:
        out += b"\0" * pad(len(out))
    for data in datas:
        out += data + b"\0" * pad(len(data))
    return out


def llama_meta(arch="llama", layers=1, heads=4, heads_kv=2, embd=256, extra=()):
    tokens = ["<unk>", "<s>", "</s>", "a", "b", "<0x0A>", "\u2581the", "!"]
    return [
        ("general.architecture", STRING, arch),
        ("general.name", STRING, "tiny"),
        ("general.file_type", U32, 1),
        (f"{arch}.block_count", U32, layers),
        (f"{arch}.context_length", U32, 128),
        (f"{arch}.embedding_length", U32, embd),
        (f"{arch}.feed_forward_length", U32, 2 * embd),
        (f"{arch}.attention.head_count", U32, heads),
        (f"{arch}.attention.head_count_kv", *((ARRAY, (U32, heads_kv)) if isinstance(heads_kv, list)
                                              else (U32, heads_kv))),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        (f"{arch}.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", ARRAY, (STRING, tokens)),
        ("tokenizer.ggml.scores", ARRAY, (F32, [-float(i) for i in range(len(tokens))])),
        ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3] + [1] * (len(tokens) - 3))),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.add_bos_token", BOOL, True),
        *extra,
    ]


def layer(i, row, ty, kv_rows=2, ff=4, ffn_down_row=None):
    p = f"blk.{i}."
    return [
        (p + "attn_norm.weight", [row], "F32"),
        (p + "attn_q.weight", [row, 4], ty),
        (p + "attn_k.weight", [row, kv_rows], ty),
        (p + "attn_v.weight", [row, kv_rows], ty),
        (p + "attn_output.weight", [row, 4], ty),
        (p + "ffn_norm.weight", [row], "F32"),
        (p + "ffn_gate.weight", [row, ff], ty),
        (p + "ffn_up.weight", [row, ff], ty),
        (p + "ffn_down.weight", [ffn_down_row or row, 2], ty),
    ]


def seeds():
    yield "llama_f16", gguf(
        llama_meta(),
        [("token_embd.weight", [256, 4], "F32"), *layer(0, 256, "F16"),
         ("output_norm.weight", [256], "F32"), ("output.weight", [256, 4], "F16")],
        1,
    )
    yield "llama_f32_tied_2layers", gguf(
        llama_meta(layers=2, embd=64),
        [("token_embd.weight", [64, 8], "F32"), *layer(0, 64, "F32"), *layer(1, 64, "F32"),
         ("output_norm.weight", [64], "F32")],
        2,
    )
    yield "llama_quantized", gguf(
        llama_meta(layers=2, extra=[("general.quantization_version", U32, 2)]),
        [("token_embd.weight", [256, 2], "Q8_0"),
         ("blk.0.attn_q.weight", [256, 2], "Q4_K"),
         ("blk.0.attn_k.weight", [256, 1], "Q4_0"),
         ("blk.0.attn_v.weight", [256, 1], "Q8_0"),
         ("blk.0.attn_output.weight", [256, 2], "Q6_K"),
         ("blk.0.ffn_down.weight", [256, 2], "Q5_K"),
         ("blk.1.attn_v.weight", [256, 1], "Q3_K"),
         ("blk.1.ffn_gate.weight", [256, 2], "Q2_K"),
         ("blk.1.ffn_up.weight", [64, 2], "Q4_1"),
         ("blk.1.ffn_down.weight", [64, 2], "Q5_0"),
         ("blk.1.attn_q.weight", [64, 2], "Q5_1"),
         ("output.weight", [256, 2], "Q4_K"),
         ("output_norm.weight", [256], "F32")],
        3,
    )
    # Rows that 256 does not divide (the fallback types), a 64-byte alignment, GGUF v2, BF16,
    # an integer tensor, a scalar and an empty tensor.
    yield "odd_rows_v2", gguf(
        llama_meta(embd=96, extra=[("general.alignment", U32, 64)]),
        [("token_embd.weight", [96, 3], "F16"), *layer(0, 96, "BF16", ffn_down_row=40),
         ("blk.0.rope_freqs.weight", [48], "F32"), ("positions", [8], "I32"),
         ("scalar.weight", [], "F32"), ("empty.weight", [32, 0], "F32")],
        4, version=2, alignment=64,
    )
    # Eight experts: attn_v and attn_k go to Q8_0, the ffn rules read the layer from the name.
    p = "blk.0."
    yield "moe", gguf(
        llama_meta(extra=[("llama.expert_count", U32, 8), ("llama.expert_used_count", U32, 2)],
                   embd=32),
        [("token_embd.weight", [32, 4], "F16"),
         (p + "attn_q.weight", [32, 2], "F16"), (p + "attn_k.weight", [32, 2], "F16"),
         (p + "attn_v.weight", [32, 2], "F16"), (p + "attn_output.weight", [32, 2], "F16"),
         (p + "ffn_gate_inp.weight", [32, 8], "F32"),
         (p + "ffn_gate_exps.weight", [32, 2, 8], "F16"),
         (p + "ffn_up_exps.weight", [32, 2, 8], "F16"),
         (p + "ffn_down_exps.weight", [32, 2, 8], "F16")],
        5,
    )
    # Falcon: fused qkv, and its own output and ffn_down rules; per-layer head counts.
    yield "falcon", gguf(
        llama_meta(arch="falcon", layers=1, heads_kv=[1], embd=256),
        [("token_embd.weight", [256, 2], "F16"),
         ("blk.0.attn_norm.weight", [256], "F32"), ("blk.0.attn_norm.bias", [256], "F32"),
         ("blk.0.attn_qkv.weight", [256, 3], "F16"),
         ("blk.0.attn_output.weight", [256, 2], "F16"),
         ("blk.0.ffn_up.weight", [256, 2], "F16"), ("blk.0.ffn_down.weight", [256, 2], "F16"),
         ("output.weight", [256, 2], "Q8_0")],
        6,
    )
    # A 70B-like llama (80 layers, grouped-query attention) with one layer's tensors.
    yield "llama_80_layers", gguf(
        llama_meta(layers=80, heads=64, heads_kv=8, embd=256),
        [*layer(0, 256, "F16", kv_rows=1, ff=1)],
        7,
    )
    yield "metadata_only", gguf(
        llama_meta(extra=[("u64", U64, 2**64 - 1), ("i64", I64, -2**63), ("f64", F64, 0.5),
                          ("u8", U8, 255), ("i8", I8, -1), ("u16", U16, 65535),
                          ("i16", I16, -32768), ("empty", ARRAY, (U32, [])),
                          ("bytes", STRING, b"\xff\x00a")]),
        [],
        8,
    )


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus/gguf_files")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds():
        (out / f"{name}.gguf").write_bytes(data)
        print(f"{name}.gguf: {len(data)} bytes")


if __name__ == "__main__":
    main()
