#!/usr/bin/env python3
"""A llama2.c checkpoint (Karpathy's `model.bin` + `tokenizer.bin`, e.g. the TinyStories model stories15M) as an F32
GGUF of llama.cpp's `llama` architecture, written with the `gguf` package (llama.cpp's own writer, from PyPI).

This is the job of llama.cpp's `convert-llama2c-to-ggml` example, which the llama-cpp-python sdist does not build. The
weights are copied as they are: llama2.c rotates adjacent pairs of each head's dimensions, as llama.cpp's `llama`
graph does, so unlike a Hugging Face checkpoint no Q/K permutation is needed. `--verify` runs llama2.c's forward pass
in numpy on the tokens of a llama-perplexity `--kl-divergence-base` file made from the GGUF and compares the log
probabilities, which checks the conversion (tensor order, rotary layout, norms, tokenizer) against the source.

`--sample` writes text sampled from the model (tests/data/stories15m holds what it wrote).

Usage: .venv/bin/python scripts/llama2c.py MODEL.bin TOKENIZER.bin -o OUT.gguf
       .venv/bin/python scripts/llama2c.py MODEL.bin TOKENIZER.bin --verify LOGITS.bin
       .venv/bin/python scripts/llama2c.py MODEL.bin TOKENIZER.bin --sample TOKENS --seed S -o OUT.txt
"""

import argparse
import os
import struct
import sys

import numpy as np

# gguf's token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def read_checkpoint(path):
    """llama2.c's legacy (version 0) export: 7 int32 of config, then every tensor in f32, in a fixed order."""
    data = np.fromfile(path, dtype=np.uint8)
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28].tobytes())
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // heads
    kv = kv_heads * head
    values = data[28:].view("<f4")
    shapes = [
        ("tok", (vocab, dim)),
        ("rms_att", (layers, dim)),
        ("wq", (layers, dim, dim)),
        ("wk", (layers, kv, dim)),
        ("wv", (layers, kv, dim)),
        ("wo", (layers, dim, dim)),
        ("rms_ffn", (layers, dim)),
        ("w1", (layers, hidden, dim)),
        ("w2", (layers, dim, hidden)),
        ("w3", (layers, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_real", (seq_len, head // 2)),
        ("freq_imag", (seq_len, head // 2)),
    ]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    w, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        if at + n > values.size:
            sys.exit(f"{path}: truncated: tensor {name} {shape} runs past the end of the file")
        w[name] = values[at : at + n].reshape(shape)
        at += n
    if at != values.size:
        sys.exit(f"{path}: {values.size - at} values after the last tensor: not a llama2.c version-0 checkpoint")
    w["wcls"] = w.get("wcls", w["tok"])
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab, seq_len=seq_len)
    return cfg, w, shared


def read_tokenizer(path, vocab):
    """llama2.c's tokenizer.bin: the SentencePiece pieces with '▁' written as ' ', byte pieces as the raw byte, and
    BOS/EOS as '\\n<s>\\n' and '\\n</s>\\n'; each piece behind its score and length. Returned as llama.cpp spells
    the SentencePiece vocabulary."""
    data = open(path, "rb").read()
    at, tokens, scores, types = 4, [], [], []
    for i in range(vocab):
        if at + 8 > len(data):
            sys.exit(f"{path}: truncated at token {i} of {vocab}")
        score, n = struct.unpack_from("<fi", data, at)
        piece = data[at + 8 : at + 8 + n]
        at += 8 + n
        if i == 0:
            text, kind = "<unk>", UNKNOWN
        elif i in (1, 2):
            text, kind = ("<s>", "</s>")[i - 1], CONTROL
        elif 3 <= i < 259:
            text, kind = f"<0x{i - 3:02X}>", BYTE
        else:
            text, kind = piece.decode("utf-8").replace(" ", "\u2581"), NORMAL
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    return tokens, scores, types


def write_gguf(cfg, w, shared, vocab, out, name):
    import gguf

    tmp = out + ".tmp"
    g = gguf.GGUFWriter(tmp, "llama")
    g.add_name(name)
    g.add_context_length(cfg["seq_len"])
    g.add_embedding_length(cfg["dim"])
    g.add_feed_forward_length(cfg["hidden"])
    g.add_block_count(cfg["layers"])
    g.add_head_count(cfg["heads"])
    g.add_head_count_kv(cfg["kv_heads"])
    g.add_rope_dimension_count(cfg["dim"] // cfg["heads"])
    g.add_rope_freq_base(10000.0)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_file_type(gguf.LlamaFileType.ALL_F32)
    tokens, scores, types = vocab
    g.add_tokenizer_model("llama")
    g.add_token_list(tokens)
    g.add_token_scores(scores)
    g.add_token_types(types)
    g.add_unk_token_id(0)
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_add_bos_token(True)
    g.add_add_eos_token(False)
    g.add_tensor("token_embd.weight", w["tok"])
    for i in range(cfg["layers"]):
        for gguf_name, key in [
            ("attn_norm", "rms_att"),
            ("attn_q", "wq"),
            ("attn_k", "wk"),
            ("attn_v", "wv"),
            ("attn_output", "wo"),
            ("ffn_norm", "rms_ffn"),
            ("ffn_gate", "w1"),
            ("ffn_down", "w2"),
            ("ffn_up", "w3"),
        ]:
            g.add_tensor(f"blk.{i}.{gguf_name}.weight", np.ascontiguousarray(w[key][i]))
    g.add_tensor("output_norm.weight", w["rms_final"])
    if not shared:
        g.add_tensor("output.weight", w["wcls"])
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    os.replace(tmp, out)


def rmsnorm(x, weight):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * weight


def forward(cfg, f, tokens, cache, pos=0):
    """llama2.c's model.py forward pass over `tokens` at positions pos.., with f the weights in the wanted float type
    and `cache` each layer's keys and values so far (a list, empty at pos 0, extended here): the log-probabilities
    at every new position."""
    n, heads, kv_heads = len(tokens), cfg["heads"], cfg["kv_heads"]
    head = cfg["dim"] // heads
    cos, sin = f["freq_real"][pos : pos + n][:, None, :], f["freq_imag"][pos : pos + n][:, None, :]

    def rotate(x):  # x: [n, heads, head]; rotates adjacent pairs, as llama2.c's apply_rotary_emb
        re, im = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = re * cos - im * sin
        out[..., 1::2] = re * sin + im * cos
        return out

    x = f["tok"][tokens]
    mask = np.triu(np.full((n, pos + n), -np.inf, dtype=x.dtype), pos + 1)
    for i in range(cfg["layers"]):
        h = rmsnorm(x, f["rms_att"][i])
        q = rotate((h @ f["wq"][i].T).reshape(n, heads, head))
        k = rotate((h @ f["wk"][i].T).reshape(n, kv_heads, head))
        v = (h @ f["wv"][i].T).reshape(n, kv_heads, head)
        if len(cache) == i:
            cache.append((k, v))
        else:
            cache[i] = tuple(np.concatenate([old, new]) for old, new in zip(cache[i], (k, v)))
        k, v = (np.repeat(t, heads // kv_heads, axis=1) for t in cache[i])
        s = np.einsum("qhd,khd->hqk", q, k) / head**0.5 + mask  # a Python float keeps float32 float32
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", p, v).reshape(n, -1) @ f["wo"][i].T
        h = rmsnorm(x, f["rms_ffn"][i])
        a = h @ f["w1"][i].T
        x = x + ((a / (1 + np.exp(-a))) * (h @ f["w3"][i].T)) @ f["w2"][i].T
    logits = rmsnorm(x, f["rms_final"]) @ f["wcls"].T
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def cast(w, dtype):
    return {k: v.astype(dtype) for k, v in w.items()}


def sample(cfg, w, vocab, n_tokens, seed):
    """Stories sampled from the model at temperature 1, each from BOS to EOS or the context's end, until n_tokens
    tokens: text in the model's own domain, for calibration and evaluation (no TinyStories text is in the package
    registries), one after another."""
    f, rng, stories, total = cast(w, np.float32), np.random.default_rng(seed), [], 0
    pieces = [bytes([int(t[3:5], 16)]) if ty == BYTE else t.replace("\u2581", " ").encode() for t, ty in
              zip(vocab[0], vocab[2])]
    while total < n_tokens:
        cache, token, out = [], 1, []
        for pos in range(cfg["seq_len"]):
            p = np.exp(forward(cfg, f, [token], cache, pos)[0].astype(np.float64))
            token = int(rng.choice(len(p), p=p / p.sum()))
            if token in (1, 2):
                break
            out.append(token)
        total += len(out) + 1
        stories.append(b"".join(pieces[t] for t in out).decode("utf-8", "replace").strip())
    return "\n".join(stories) + "\n"


def verify(cfg, w, logits_path):
    """Compares llama.cpp's log-probabilities on the GGUF (a llama-perplexity --kl-divergence-base file) with
    llama2.c's forward pass on the same tokens, chunk by chunk."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gguf_gptq_compare import read_logits

    _, chunks = read_logits(logits_path)
    n_ctx, _, n_chunk = np.fromfile(logits_path, "<i4", 3, offset=8)
    windows = np.fromfile(logits_path, "<i4", n_chunk * n_ctx, offset=20).reshape(n_chunk, n_ctx)
    worst, f = 0.0, cast(w, np.float64)
    for window, theirs in zip(windows, chunks):
        window[0] = 1  # llama-perplexity starts every window with BOS and saves the text's token
        ours = forward(cfg, f, window, [])[n_ctx - 1 - len(theirs) : n_ctx - 1]
        # llama.cpp stores a log-probability below about -20 as its floor: those are left out.
        kept = theirs > -15
        worst = max(worst, float(np.abs(ours - theirs)[kept].max()))
    print(f"{n_chunk} chunks of {n_ctx} tokens: largest |log p(llama.cpp) - log p(llama2.c)| = {worst:.4f} "
          "(where llama.cpp's log p > -15)")
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("tokenizer")
    p.add_argument("-o", "--output")
    p.add_argument("--name", default="stories15M")
    p.add_argument("--verify", metavar="LOGITS", help="a llama-perplexity --kl-divergence-base file of the GGUF")
    p.add_argument("--sample", type=int, metavar="TOKENS", help="write about this many tokens of stories to -o")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    cfg, w, shared = read_checkpoint(a.model)
    if a.verify:
        # llama.cpp keeps 16-bit log-probabilities: agreement to a few hundredths is what a correct file gives.
        sys.exit(0 if verify(cfg, w, a.verify) < 0.05 else 1)
    if not a.output:
        p.error("-o OUT is needed (or --verify LOGITS)")
    vocab = read_tokenizer(a.tokenizer, cfg["vocab"])
    if a.sample:
        text = sample(cfg, w, vocab, a.sample, a.seed)
        with open(a.output + ".tmp", "w") as out:
            out.write(text)
        os.replace(a.output + ".tmp", a.output)
        print(f"{a.output}: {len(text)} characters")
        return
    write_gguf(cfg, w, shared, vocab, a.output, a.name)
    print(f"{a.output}: {cfg}")


if __name__ == "__main__":
    main()
