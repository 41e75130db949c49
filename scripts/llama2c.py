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
import re
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
    """The GGUF, written to a temporary file renamed into place (removed if anything fails)."""
    tmp = out + ".tmp"
    try:
        gguf_file(cfg, w, shared, vocab, tmp, name)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def gguf_file(cfg, w, shared, vocab, tmp, name):
    import gguf

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


def write_onnx(cfg, w, out):
    """The model as an fp32 ONNX decoder (opset 17, no KV cache): input_ids and attention_mask [batch, seq] in, logits
    [batch, seq, vocab] out, the form scripts/decoder_perplexity.py measures. Each projection is a MatMul with its
    weight transposed to [in, out] (what weight-only quantizers take); the tied embedding is stored twice, as the
    Gather table and as the LM head's [dim, vocab] MatMul weight, as exporters write a tied model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    heads, head, layers = cfg["heads"], cfg["dim"] // cfg["heads"], cfg["layers"]
    kv = cfg["kv_heads"]
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def rmsnorm(x, weight, name):
        mean = op("ReduceMean", [op("Mul", [x, x], f"{name}/sq")], f"{name}/mean", axes=[-1])
        rms = op("Sqrt", [op("Add", [mean, "eps"], f"{name}/add")], f"{name}/rms")
        return op("Mul", [op("Div", [x, rms], f"{name}/div"), const(f"{name}.weight", weight)], f"{name}/out")

    def split_heads(x, n, name):  # [b, s, n*head] -> [b, n, s, head]
        r = op("Reshape", [x, const(f"{name}/shape", np.array([0, 0, n, head], np.int64))], f"{name}/reshape")
        return op("Transpose", [r], f"{name}/heads", perm=[0, 2, 1, 3])

    def rotate(x, name):  # adjacent pairs (x0, x1) of each head turned by the position's angle
        pairs = op("Reshape", [x, const(f"{name}/pairs", np.array([0, 0, 0, head // 2, 2], np.int64))], f"{name}/p")
        nodes.append(helper.make_node("Split", [pairs, "two_ones"], [f"{name}/x0", f"{name}/x1"], name=f"{name}/split", axis=-1))
        x0, x1 = (op("Squeeze", [f"{name}/x{i}", "minus_one"], f"{name}/s{i}") for i in (0, 1))
        r0 = op("Sub", [op("Mul", [x0, "cos"], f"{name}/a"), op("Mul", [x1, "sin"], f"{name}/b")], f"{name}/r0")
        r1 = op("Add", [op("Mul", [x0, "sin"], f"{name}/c"), op("Mul", [x1, "cos"], f"{name}/d")], f"{name}/r1")
        u0, u1 = (op("Unsqueeze", [r, "minus_one"], f"{name}/u{i}") for i, r in ((0, r0), (1, r1)))
        both = op("Concat", [u0, u1], f"{name}/both", axis=-1)
        return op("Reshape", [both, const(f"{name}/back", np.array([0, 0, 0, head], np.int64))], f"{name}/out")

    const("eps", np.array(1e-5, np.float32))
    const("two_ones", np.array([1, 1], np.int64))
    const("minus_one", np.array([-1], np.int64))
    const("zero", np.array([0], np.int64))
    const("one", np.array([1], np.int64))
    # Positions 0..seq-1: the rotary tables and the causal mask sliced to the input's length.
    seq = op("Slice", [op("Shape", ["input_ids"], "shape"), "one", op("Add", ["one", "one"], "two")], "seq")
    table = lambda n, v: op("Slice", [const(n, v), "zero", seq, "zero"], f"{n}/slice")  # noqa: E731
    nodes.append(helper.make_node("Identity", [table("cos_table", w["freq_real"])], ["cos"], name="cos"))
    nodes.append(helper.make_node("Identity", [table("sin_table", w["freq_imag"])], ["sin"], name="sin"))
    causal = np.triu(np.full((cfg["seq_len"], cfg["seq_len"]), -1e9, np.float32), 1)
    rows = op("Slice", [const("causal_table", causal), "zero", seq, "zero"], "causal/rows")
    causal = op("Slice", [rows, "zero", seq, "one"], "causal")
    pad = op("Cast", [op("Unsqueeze", ["attention_mask", const("axes12", np.array([1, 2], np.int64))], "mask/u")],
             "mask/f", to=TensorProto.FLOAT)
    pad = op("Mul", [op("Sub", [pad, const("f1", np.array(1, np.float32))], "mask/sub"),
                     const("big", np.array(1e9, np.float32))], "mask/pad")
    mask = op("Add", [causal, pad], "mask")
    x = op("Gather", [const("token_embd", w["tok"]), "input_ids"], "embed")
    scale = const("scale", np.array(1 / head**0.5, np.float32))
    for i in range(layers):
        L = f"layers.{i}"  # noqa: N806
        h = rmsnorm(x, w["rms_att"][i], f"{L}.attn_norm")
        proj = lambda h, key, name: op("MatMul", [h, const(f"{L}.{name}.weight", w[key][i].T)], f"{L}/{name}")  # noqa: E731
        q = rotate(split_heads(proj(h, "wq", "wq"), heads, f"{L}/q"), f"{L}/rq")
        k = rotate(split_heads(proj(h, "wk", "wk"), kv, f"{L}/k"), f"{L}/rk")
        v = split_heads(proj(h, "wv", "wv"), kv, f"{L}/v")
        if kv != heads:
            sys.exit("grouped-query attention is not exported")
        kt = op("Transpose", [k], f"{L}/kt", perm=[0, 1, 3, 2])
        scores = op("Add", [op("Mul", [op("MatMul", [q, kt], f"{L}/qk"), scale], f"{L}/scaled"), mask], f"{L}/masked")
        att = op("MatMul", [op("Softmax", [scores], f"{L}/softmax", axis=-1), v], f"{L}/att")
        att = op("Transpose", [att], f"{L}/att_t", perm=[0, 2, 1, 3])
        att = op("Reshape", [att, const(f"{L}/merge", np.array([0, 0, cfg["dim"]], np.int64))], f"{L}/merged")
        x = op("Add", [x, op("MatMul", [att, const(f"{L}.wo.weight", w["wo"][i].T)], f"{L}/wo")], f"{L}/res1")
        h = rmsnorm(x, w["rms_ffn"][i], f"{L}.ffn_norm")
        gate = proj(h, "w1", "w1")
        silu = op("Mul", [gate, op("Sigmoid", [gate], f"{L}/sigmoid")], f"{L}/silu")
        up = op("Mul", [silu, proj(h, "w3", "w3")], f"{L}/up")
        x = op("Add", [x, op("MatMul", [up, const(f"{L}.w2.weight", w["w2"][i].T)], f"{L}/w2")], f"{L}/res2")
    h = rmsnorm(x, w["rms_final"], "norm")
    nodes.append(helper.make_node("MatMul", [h, const("lm_head.weight", w["wcls"].T)], ["logits"], name="lm_head"))
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask")]
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg["vocab"]])
    graph = helper.make_graph(nodes, "stories15M", ids, [logits], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    try:
        onnx.save(model, out + ".tmp")
        check_onnx(cfg, w, out + ".tmp")
        os.replace(out + ".tmp", out)
    finally:
        if os.path.exists(out + ".tmp"):
            os.remove(out + ".tmp")


def check_onnx(cfg, w, path):
    """The ONNX model in ONNX Runtime against llama2.c's forward pass in numpy, on a window of 64 tokens with the last
    16 padded away in a second row: the same log-probabilities where the mask lets tokens in."""
    import onnxruntime as ort

    ids = np.array([[1] + [(97 * i) % cfg["vocab"] for i in range(1, 64)]] * 2, np.int64)
    mask = np.ones_like(ids)
    mask[1, 48:] = 0
    logits = ort.InferenceSession(path).run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    f = cast(w, np.float64)
    worst = max(np.abs(logp[0] - forward(cfg, f, ids[0], [])).max(),
                np.abs(logp[1, :48] - forward(cfg, f, ids[1, :48], [])).max())
    if worst > 1e-3:
        sys.exit(f"{path}: ONNX Runtime's log-probabilities differ from llama2.c's by {worst}")
    print(f"ONNX Runtime against llama2.c: largest |log p difference| {worst:.1e}")


def encode(vocab, text):
    """SentencePiece BPE by scores, as llama2.c's run.c and llama.cpp's SPM tokenizer encode: a space before the text,
    spaces as '▁', one token per character (its UTF-8 bytes where the vocabulary lacks it), then the best-scoring
    merge of two neighbours (the leftmost of equals), again and again. No piece of the vocabulary has a '▁' after
    another character, so no merge crosses into a word's leading '▁'s and each word is encoded alone. BOS not
    included."""
    tokens, scores, types = vocab
    ids = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, UNKNOWN)}
    assert not any(re.search("[^\u2581]\u2581", t) for t in ids), "a piece joins two words"
    done, out = {}, []
    for word in re.findall("\u2581*[^\u2581]+|\u2581+", (" " + text).replace(" ", "\u2581")):
        if word not in done:
            w = [i for ch in word for i in ([ids[ch]] if ch in ids else [3 + b for b in ch.encode("utf-8")])]
            while True:
                pairs = [(scores[m], -i, m) for i in range(len(w) - 1) if (m := ids.get(tokens[w[i]] + tokens[w[i + 1]]))]
                if not pairs:
                    break
                _, i, m = max(pairs)
                w[-i : -i + 2] = [m]
            done[word] = w
        out.extend(done[word])
    return out


def windows(vocab, text, n_ctx):
    """The text's tokens cut into windows of n_ctx, each starting with BOS in place of its first token, as
    llama-perplexity runs them (the last, partial window dropped): an int64 array [windows, n_ctx]."""
    ids = [1] + encode(vocab, text)
    n = len(ids) // n_ctx
    out = np.array(ids[: n * n_ctx], np.int64).reshape(n, n_ctx)
    out[:, 0] = 1
    return out


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
    p.add_argument("--onnx", action="store_true", help="write the model as an fp32 ONNX decoder to -o")
    p.add_argument("--tokenize", metavar="TEXT", help="write TEXT's tokens in windows of --ctx to -o (.npy)")
    p.add_argument("--ctx", type=int, default=256)
    a = p.parse_args()
    cfg, w, shared = read_checkpoint(a.model)
    if a.verify:
        # llama.cpp keeps 16-bit log-probabilities: agreement to a few hundredths is what a correct file gives.
        sys.exit(0 if verify(cfg, w, a.verify) < 0.05 else 1)
    if not a.output:
        p.error("-o OUT is needed (or --verify LOGITS)")
    vocab = read_tokenizer(a.tokenizer, cfg["vocab"])
    if a.onnx:
        return write_onnx(cfg, w, a.output)
    if a.tokenize:
        return np.save(a.output, windows(vocab, open(a.tokenize, encoding="utf-8").read(), a.ctx))
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
