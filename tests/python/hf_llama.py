"""Hugging Face Llama checkpoints for `zeropoint gguf`'s conversion tests, and the check that
llama.cpp runs the converted GGUF as the checkpoint means it.

    hf_llama.py make DIR --tokenizer {smollm,llama-bpe,sentencepiece} --dtype {F32,BF16,F16}
                [--shards N] [--seed S] [--tied]
    hf_llama.py check DIR LOGITS TEXT

`make` writes a small random Llama (grouped-query attention, SwiGLU, RMSNorm, rotary
embeddings) as transformers saves one: config.json, safetensors (sharded with an index when
N > 1), and a tokenizer trained on fixed text (tests/data/sotu) with the `tokenizers` or
`sentencepiece` library on tests/data/sotu: tokenizer.json + tokenizer_config.json, or tokenizer.model.

`check` reads the file `llama-perplexity --kl-divergence-base LOGITS` wrote for the converted
model on TEXT (its tokens and the log-probabilities of every scored position) and compares it
with an independent reference: the tokens the Hugging Face tokenizer gives for TEXT, and the
log-probabilities of a NumPy forward pass written from transformers' LlamaForCausalLM
(rotate-half rotary embeddings, the Hugging Face weight layout). A wrong rotary permutation, a
misnamed tensor or a wrong hyperparameter shows as a large difference.
"""

import argparse
import glob
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HIDDEN, LAYERS, HEADS, KV_HEADS, FF = 128, 2, 4, 2, 256
THETA, EPS = 10000.0, 1e-5

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus():
    """Washington's 1790-1793 addresses (tests/data/sotu): fixed text, so the tokenizers and the
    models stay the same from one commit to the next."""
    paths = sorted(glob.glob(os.path.join(ROOT, "tests", "data", "sotu", "179[0-3]_*.txt")))
    return [open(p, encoding="utf-8").read() for p in paths]


def bf16_round(x):
    """float32 -> bfloat16 bits, round to nearest even."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)


def encode(x, dtype):
    if dtype == "F32":
        return x.astype("<f4").tobytes()
    if dtype == "F16":
        return x.astype("<f2").tobytes()
    return bf16_round(x).astype("<u2").tobytes()


def decode(raw, dtype, shape):
    if dtype == "F32":
        return np.frombuffer(raw, "<f4").reshape(shape).astype(np.float64)
    if dtype == "F16":
        return np.frombuffer(raw, "<f2").reshape(shape).astype(np.float64)
    bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
    return bits.view(np.float32).reshape(shape).astype(np.float64)


def write_safetensors(path, tensors, dtype):
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in tensors:
        raw = encode(x, dtype)
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = decode(data[8 + n + a : 8 + n + b], info["dtype"], info["shape"])
    return out


def train_bpe(out_dir, style):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(ignore_merges=(style == "llama-bpe")))
    if style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    # A user-defined (not special) added token, and the ByteLevel post-processor transformers
    # models carry (it adds nothing: no BOS).
    from tokenizers import AddedToken, processors

    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    }
    json.dump(config, open(os.path.join(out_dir, "tokenizer_config.json"), "w"))
    return tok.get_vocab_size()


def train_sentencepiece(out_dir):
    import sentencepiece as spm

    text = os.path.join(out_dir, "train.txt")
    with open(text, "w", encoding="utf-8") as f:
        for doc in corpus():
            f.write(doc)
    # Identity normalization, whitespace kept: llama.cpp's SPM tokenizer normalizes nothing
    # but the spaces.
    spm.SentencePieceTrainer.train(
        input=text,
        model_prefix=os.path.join(out_dir, "tokenizer"),
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        max_sentence_length=1 << 20,
        minloglevel=2,
    )
    os.remove(text)
    os.remove(os.path.join(out_dir, "tokenizer.vocab"))
    json.dump(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False},
        open(os.path.join(out_dir, "tokenizer_config.json"), "w"),
    )
    return spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model")).vocab_size()


def make(args):
    os.makedirs(args.dir, exist_ok=True)
    if args.tokenizer == "sentencepiece":
        n_tokens = train_sentencepiece(args.dir)
        bos, eos = 1, 2
    else:
        n_tokens = train_bpe(args.dir, args.tokenizer)
        bos, eos = 0, 2
    # A few embedding rows past the tokenizer's tokens, as padded vocabularies have.
    vocab = n_tokens + 3
    rng = np.random.default_rng(args.seed)
    hd = HIDDEN // HEADS

    def w(rows, cols, std):
        return rng.normal(0, std, (rows, cols)).astype(np.float32)

    tensors = [("model.embed_tokens.weight", w(vocab, HIDDEN, 1.0))]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", (1 + 0.2 * rng.normal(size=HIDDEN)).astype(np.float32)),
            # Large query/key weights make attention sharp, so that a wrong rotary layout shows.
            (p + "self_attn.q_proj.weight", w(HEADS * hd, HIDDEN, args.qk_std)),
            (p + "self_attn.k_proj.weight", w(KV_HEADS * hd, HIDDEN, args.qk_std)),
            (p + "self_attn.v_proj.weight", w(KV_HEADS * hd, HIDDEN, 0.1)),
            (p + "self_attn.o_proj.weight", w(HIDDEN, HEADS * hd, 0.1)),
            (p + "post_attention_layernorm.weight", (1 + 0.2 * rng.normal(size=HIDDEN)).astype(np.float32)),
            (p + "mlp.gate_proj.weight", w(FF, HIDDEN, 0.1)),
            (p + "mlp.up_proj.weight", w(FF, HIDDEN, 0.1)),
            (p + "mlp.down_proj.weight", w(HIDDEN, FF, 0.1)),
            (p + "self_attn.rotary_emb.inv_freq", (1.0 / THETA ** (np.arange(0, hd, 2) / hd)).astype(np.float32)),
        ]
    tensors.append(("model.norm.weight", np.ones(HIDDEN, np.float32)))
    if not args.tied:
        tensors.append(("lm_head.weight", w(vocab, HIDDEN, 0.3)))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rms_norm_eps": EPS,
        "rope_theta": THETA,
        "vocab_size": vocab,
        "tie_word_embeddings": args.tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[args.dtype],
    }
    json.dump(config, open(os.path.join(args.dir, "config.json"), "w"), indent=2)
    if args.shards == 1:
        write_safetensors(os.path.join(args.dir, "model.safetensors"), tensors, args.dtype)
        return
    per = -(-len(tensors) // args.shards)
    weight_map = {}
    for s in range(args.shards):
        name = f"model-{s + 1:05d}-of-{args.shards:05d}.safetensors"
        part = tensors[s * per : (s + 1) * per]
        write_safetensors(os.path.join(args.dir, name), part, args.dtype)
        weight_map.update({t: name for t, _ in part})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(args.dir, "model.safetensors.index.json"), "w"))


def load_checkpoint(d):
    weights = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        weights.update(read_safetensors(f))
    return json.load(open(os.path.join(d, "config.json"))), weights


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(cfg, wts, tokens):
    """transformers' LlamaForCausalLM on one sequence, in float64: the logits of every position."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // n_head
    eps = cfg["rms_norm_eps"]
    t = len(tokens)
    x = wts["model.embed_tokens.weight"][tokens]
    inv_freq = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    angles = np.arange(t)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([angles, angles], -1))[:, None, :]
    sin = np.sin(np.concatenate([angles, angles], -1))[:, None, :]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, wts[p + "input_layernorm.weight"], eps)
        q = (h @ wts[p + "self_attn.q_proj.weight"].T).reshape(t, n_head, hd)
        k = (h @ wts[p + "self_attn.k_proj.weight"].T).reshape(t, n_kv, hd)
        v = (h @ wts[p + "self_attn.v_proj.weight"].T).reshape(t, n_kv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = np.empty((t, n_head, hd))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh, :] = (s / s.sum(-1, keepdims=True)) @ v[:, kv, :]
        x = x + out.reshape(t, n_head * hd) @ wts[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, wts[p + "post_attention_layernorm.weight"], eps)
        g = h @ wts[p + "mlp.gate_proj.weight"].T
        u = h @ wts[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ wts[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, wts["model.norm.weight"], eps)
    head = wts.get("lm_head.weight", wts["model.embed_tokens.weight"])
    return x @ head.T


def hf_tokens(d, text):
    if os.path.exists(os.path.join(d, "tokenizer.model")):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))
        return [sp.bos_id()] + sp.encode(text)
    from tokenizers import Tokenizer

    return Tokenizer.from_file(os.path.join(d, "tokenizer.json")).encode(text).ids


def check(args):
    cfg, wts = load_checkpoint(args.dir)
    data = open(args.logits, "rb").read()
    assert data[:8] == b"_logits_", "not a llama-perplexity logits file"
    n_ctx, n_vocab, n_chunk = struct.unpack("<iii", data[8:20])
    pos = 20
    tokens = np.frombuffer(data, "<i4", n_chunk * n_ctx, pos)
    pos += 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    first = n_ctx // 2
    text = open(args.text, encoding="utf-8").read()
    expected = hf_tokens(args.dir, text)[: n_chunk * n_ctx]
    if list(tokens) != list(expected):
        bad = next(i for i, (a, b) in enumerate(zip(tokens, expected)) if a != b)
        sys.exit(f"tokens differ at {bad}: llama.cpp {list(tokens[bad:bad + 8])}, Hugging Face {expected[bad:bad + 8]}")
    add_bos = os.path.exists(os.path.join(args.dir, "tokenizer.model"))
    worst, scored = 0.0, 0
    for c in range(n_chunk):
        seq = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if add_bos:
            seq[0] = cfg["bos_token_id"]
        logits = forward(cfg, wts, np.array(seq))
        for i in range(first, n_ctx - 1):
            rec = np.frombuffer(data, "<u2", nv, pos)
            pos += 2 * nv
            scale, min_lp = struct.unpack("<ff", rec[:4].tobytes())
            q = rec[4 : 4 + n_vocab].astype(np.float64)
            ref = logits[i] - logits[i].max()
            ref = ref - np.log(np.exp(ref).sum())
            # Logits more than 16 below the maximum are stored as 0: compare the others.
            kept = q > 0
            got = min_lp + scale * q
            worst = max(worst, float(np.abs(got[kept] - ref[kept]).max()))
            scored += 1
    print(json.dumps({"chunks": n_chunk, "n_ctx": n_ctx, "scored": scored, "tokens_equal": True, "max_abs_logprob_diff": worst}))
    if worst > args.tolerance:
        sys.exit(f"log-probabilities differ by {worst:.4g} (tolerance {args.tolerance})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--tokenizer", choices=["smollm", "llama-bpe", "sentencepiece"], required=True)
    m.add_argument("--dtype", choices=["F32", "BF16", "F16"], default="F32")
    m.add_argument("--shards", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--tied", action="store_true")
    m.add_argument("--qk-std", type=float, default=0.4, help="query/key weight scale (sharper attention when larger)")
    c = sub.add_parser("check")
    c.add_argument("dir")
    c.add_argument("logits")
    c.add_argument("text")
    c.add_argument("--tolerance", type=float, default=2e-3)
    args = ap.parse_args()
    make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    main()
