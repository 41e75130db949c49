"""Seeds for the hf_checkpoints fuzz target: tiny Llama checkpoint folders packed as the target
reads them (config.json, tokenizer.json, tokenizer.model, tokenizer_config.json, each behind a
2-byte little-endian length, then model.safetensors).

    python3 fuzz/hf_seeds.py fuzz/corpus/hf_checkpoints
"""

import json
import os
import struct
import sys

import numpy as np


def safetensors(tensors, dtype="F32"):
    header, blobs, off = {}, [], 0
    for name, x in tensors:
        raw = x.astype({"F32": "<f4", "F16": "<f2"}[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(x.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def sentencepiece(pieces):
    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    model = b""
    for text, score, ty in pieces:
        t = text.encode()
        msg = b"\x0a" + varint(len(t)) + t + b"\x15" + struct.pack("<f", score) + b"\x18" + varint(ty)
        model += b"\x0a" + varint(len(msg)) + msg
    return model


def pack(files, weights):
    out = b""
    for content in files:
        out += struct.pack("<H", len(content)) + content
    return out + weights


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    hidden, heads, kv, ff, vocab = 8, 2, 1, 16, 12
    hd = hidden // heads
    tensors = [("model.embed_tokens.weight", rng.normal(size=(vocab, hidden)))]
    p = "model.layers.0."
    tensors += [
        (p + "input_layernorm.weight", np.ones(hidden)),
        (p + "self_attn.q_proj.weight", rng.normal(size=(heads * hd, hidden))),
        (p + "self_attn.q_proj.bias", rng.normal(size=heads * hd)),
        (p + "self_attn.k_proj.weight", rng.normal(size=(kv * hd, hidden))),
        (p + "self_attn.v_proj.weight", rng.normal(size=(kv * hd, hidden))),
        (p + "self_attn.o_proj.weight", rng.normal(size=(hidden, hidden))),
        (p + "post_attention_layernorm.weight", np.ones(hidden)),
        (p + "mlp.gate_proj.weight", rng.normal(size=(ff, hidden))),
        (p + "mlp.up_proj.weight", rng.normal(size=(ff, hidden))),
        (p + "mlp.down_proj.weight", rng.normal(size=(hidden, ff))),
        ("model.norm.weight", np.ones(hidden)),
    ]
    config = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "intermediate_size": ff,
        "num_hidden_layers": 1, "num_attention_heads": heads, "num_key_value_heads": kv,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": vocab,
        "bos_token_id": 0, "eos_token_id": 1,
    }
    llama3 = dict(config, rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 32})
    vocab_json = {c: i + 3 for i, c in enumerate("abcdefgh")}
    bpe = {
        "added_tokens": [
            {"id": 0, "content": "<|endoftext|>", "special": True},
            {"id": 1, "content": "<|im_end|>", "special": True},
            {"id": 2, "content": "<tool>", "special": False},
        ],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel", "use_regex": True}]},
        "post_processor": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab_json, "merges": ["a b", ["c d", "e"]]},
    }
    tok_config = {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "{{x}}"}
    spm = sentencepiece([("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("<0x00>", 0, 6)] +
                        [(c, -float(i), 1) for i, c in enumerate("abcdefgh")])
    j = lambda v: json.dumps(v).encode()
    seeds = {
        "bpe": pack([j(config), j(bpe), b"", j(tok_config)], safetensors(tensors)),
        "bpe-f16-llama3": pack([j(llama3), j(bpe), b"", b""], safetensors(tensors, "F16")),
        "sentencepiece": pack([j(config), b"", spm, j({"add_bos_token": True, "added_tokens_decoder": {"3": {"content": "<x>"}}})], safetensors(tensors)),
        "tied-no-tokenizer": pack([j(config), b"", b"", b""], safetensors(tensors[:1] + tensors[-1:])),
    }
    for name, data in seeds.items():
        open(os.path.join(out, name), "wb").write(data)
        print(name, len(data))


if __name__ == "__main__":
    main(sys.argv[1])
