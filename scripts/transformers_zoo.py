#!/usr/bin/env python3
"""Dynamic, static and weight-only quantization of the zoo models that carry MatMul, Gemm, Conv or Gather weights:
zeropoint (`quantize --mode dynamic`, with and without `--smoothquant`, and with `--per-token`; static W8A8 with and
without `--smoothquant`; `--mode weight-only` with RTN, GPTQ and HQQ) against ONNX Runtime's own tools
(quantize_dynamic per-channel and per-tensor; MatMulNBitsQuantizer's DEFAULT round-to-nearest on MatMul only and on
MatMul and Gather), measured in one run.

Usage: .venv/bin/python scripts/transformers_zoo.py [--zeropoint PATH] [--models a,b] [--zoo .cache/zoo]
       [--inputs DIR] [--samples 32] [--runs 5] [--json PATH]

For every model and configuration, in ONNX Runtime (CPUExecutionProvider), on the model's synthetic eval.npz
(scripts/zoo_inputs.py; generated into --inputs with --samples samples where missing):
  * cosine similarity between float and quantized outputs over all eval samples (each output flattened), per float
    output, and output SQNR in dB (10 log10 of signal over error energy); integer and bool outputs get the fraction of
    elements that match exactly instead (shown as "=NN.N%");
  * file size in MB (the model file and any external-data files beside it);
  * latency ratio float / quantized (> 1: the quantized model is faster): one thread (intra_op_num_threads=1), one
    sample per run, median of --runs passes over the eval samples after a warm-up pass;
  * quantize wall time and peak resident memory of the quantizing process (/usr/bin/time -f "%e %M"); the ONNX Runtime
    quantizers run in a child process of this script, so that their time and memory are their own.
Accuracy is measured on the whole eval batch at once, unless the model declares a fixed batch dimension of 1 (then
one sample per run). A configuration that fails (quantizer error, ONNX Runtime cannot load or run the result) is
reported as "failed: <one line>"; a model that is missing, has too few such weights, or whose inputs zoo_inputs.py
does not produce is skipped with a note. Tables are printed in markdown, all numbers written to --json.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS = ["anr-encoder", "anr-decoder", "lac-bigru", "ppocr-v5-rec", "ddddocr-ocr", "magika", "malviz-resnet18"]
WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}  # operator -> index of its weight input
HEADER = ["configuration", "cosine", "SQNR dB", "MB", "latency ratio", "quantize s", "peak MB"]


class Skip(Exception):
    """A model this run cannot measure; the message is the note printed for it."""


# ---------------------------------------------------------------------------------------------------- ORT peers --

def ort_job(kind, src, dst):
    """One ONNX Runtime quantization, in its own process (see configurations)."""
    import onnx
    if kind in ("dynamic-per-channel", "dynamic-per-tensor"):
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(src, dst, per_channel=kind == "dynamic-per-channel", weight_type=QuantType.QInt8)
        return
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    ops = {"op_types_to_quantize": ("MatMul", "Gather")} if kind == "nbits-gather" else {}
    cfg = mq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, bits=4, **ops)
    q = mq.MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=32, is_symmetric=False, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(dst, use_external_data_format=False)


def configurations(zeropoint, src, calib):
    """(label, command) per configuration; "{dst}" stands for the output path. zeropoint calibrates a model with a
    fixed batch of 1 one sample per batch by itself."""
    zp = [zeropoint, "quantize", src]
    gptq = ["gptq", "--calib", calib]
    wo = zp + ["--mode", "weight-only", "--method"]
    me = [sys.executable, os.path.abspath(__file__), "--ort-job"]
    return [
        ("zeropoint dynamic", zp + ["--mode", "dynamic", "-o", "{dst}"]),
        ("zeropoint dynamic --conv-integer", zp + ["--mode", "dynamic", "--conv-integer", "-o", "{dst}"]),
        ("zeropoint dynamic --smoothquant", zp + ["--mode", "dynamic", "--calib", calib, "--smoothquant", "-o", "{dst}"]),
        ("zeropoint dynamic --per-token", zp + ["--mode", "dynamic", "--per-token", "-o", "{dst}"]),
        ("zeropoint static W8A8", zp + ["--calib", calib, "-o", "{dst}"]),
        ("zeropoint static --smoothquant", zp + ["--calib", calib, "--smoothquant", "-o", "{dst}"]),
        ("ORT quantize_dynamic per-channel", me + ["dynamic-per-channel", src, "{dst}"]),
        ("ORT quantize_dynamic per-tensor", me + ["dynamic-per-tensor", src, "{dst}"]),
        ("zeropoint weight-only rtn", wo + ["rtn", "-o", "{dst}"]),
        ("zeropoint weight-only gptq", wo + gptq + ["-o", "{dst}"]),
        ("zeropoint weight-only hqq", wo + ["hqq", "-o", "{dst}"]),
        ("ORT MatMulNBits default", me + ["nbits", src, "{dst}"]),
        ("ORT MatMulNBits + Gather", me + ["nbits-gather", src, "{dst}"]),
    ]


def quantize(cmd, timeout):
    """Runs cmd under /usr/bin/time: (seconds, peak MB). Raises RuntimeError with the failure's last line."""
    try:
        r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s")
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    if r.returncode != 0:
        msg = [x for x in lines if not x.startswith("TIME ") and not x.startswith("Command exited")]
        raise RuntimeError(msg[-1].strip() if msg else f"exit status {r.returncode}")
    secs, kb = [x for x in lines if x.startswith("TIME ")][-1].split()[1:3]
    return float(secs), int(kb) / 1024


# ------------------------------------------------------------------------------------------------ model facts --

def model_file(zoo, name):
    folder = os.path.join(zoo, name)
    if not os.path.isdir(folder):
        raise Skip(f"not in {zoo}")
    onnx_files = sorted(f for f in os.listdir(folder) if f.endswith(".onnx"))
    if not onnx_files:
        raise Skip(f"no .onnx file in {folder}")
    return os.path.join(folder, onnx_files[0])


def weight_mb(path):
    """MB of the initializers and Constant tensors that are MatMul/Gemm/Conv weights or Gather tables."""
    import onnx
    from onnx import helper
    m = onnx.load(path, load_external_data=False)
    tensors = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    tensors[n.output[0]] = a.t
    used = {n.input[WEIGHT_OPS[n.op_type]] for n in m.graph.node
            if n.op_type in WEIGHT_OPS and len(n.input) > WEIGHT_OPS[n.op_type]}
    total = 0
    for name in used & tensors.keys():
        t = tensors[name]
        total += int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total / 1e6


def size_mb(folder):
    """MB of everything in folder (a model and its external data)."""
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e6


def session(path, threads=None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def fixed_batch_one(sess):
    """True when an input declares its first dimension as the constant 1."""
    return any(len(i.shape) > 0 and i.shape[0] == 1 for i in sess.get_inputs())


# ----------------------------------------------------------------------------------------------------- inputs --

def load_eval(args, name, sess):
    """The model's calib.npz path and its eval arrays (input name -> batch-first array), generating them if missing."""
    folder = os.path.join(args.inputs, name)
    if not os.path.exists(os.path.join(folder, "eval.npz")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "zoo_inputs.py"), args.zoo, args.inputs,
                            "--samples", str(args.samples), "--models", name], capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            err = [x for x in r.stderr.splitlines() if x.strip()]
            raise Skip(f"zoo_inputs.py produces no inputs: {err[-1] if err else r.returncode}")
    d = np.load(os.path.join(folder, "eval.npz"))
    wanted = [i.name for i in sess.get_inputs()]
    missing = [w for w in wanted if w not in d.files]
    if missing:
        raise Skip(f"eval.npz lacks input(s) {', '.join(missing)}")
    return os.path.join(folder, "calib.npz"), {w: d[w] for w in wanted}


def split_samples(arrays):
    """One feed per sample: every array sliced [i:i+1] along its first (batch) dimension."""
    n = min(a.shape[0] for a in arrays.values() if a.ndim > 0)
    return [{k: (a[i:i + 1] if a.ndim > 0 else a) for k, a in arrays.items()} for i in range(n)]


# ---------------------------------------------------------------------------------------------- measurement --

def outputs(path, arrays, per_sample):
    """Output name -> array over all eval samples (per-sample results concatenated along the batch axis)."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    feeds = split_samples(arrays) if per_sample else [arrays]
    runs = [sess.run(None, f) for f in feeds]
    return {n: np.concatenate([np.asarray(r[i]).reshape(-1) for r in runs]) for i, n in enumerate(names)}


def compare(ref, got):
    """Per output: cosine and SQNR (float outputs) or exact-match fraction (integer and bool outputs)."""
    result = {}
    for name, r in ref.items():
        q = got[name]
        if r.shape != q.shape:
            raise RuntimeError(f"output {name}: {q.size} elements, float has {r.size}")
        if not np.issubdtype(r.dtype, np.floating):
            result[name] = {"match": float(np.mean(r == q))}
            continue
        r64, q64 = r.astype(np.float64), q.astype(np.float64)
        denom = np.linalg.norm(r64) * np.linalg.norm(q64)
        cos = float(r64 @ q64 / denom) if denom > 0 else float(np.array_equal(r64, q64))
        err = np.sum((r64 - q64) ** 2)
        sqnr = float(10 * np.log10(np.sum(r64 ** 2) / err)) if err > 0 else None  # None: no error at all
        result[name] = {"cosine": cos, "sqnr_db": sqnr}
    return result


def latency(path, arrays, runs):
    """Median seconds of one pass over the eval samples, one sample per run, one thread, after a warm-up pass."""
    sess = session(path, threads=1)
    feeds = split_samples(arrays)
    passes = []
    for k in range(runs + 1):
        t = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        if k:  # pass 0 is the warm-up
            passes.append(time.perf_counter() - t)
    return float(np.median(passes))


def one_line(e):
    """The last line of an error, without ONNX Runtime's "Load model from PATH failed:" preamble, at most 200 chars."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
    return re.sub(r"Load model from \S+ failed:", "", lines[-1])[:200]


def measure_config(label, cmd, work, arrays, per_sample, ref, float_latency, args):
    """One configuration: quantize, then accuracy, size and latency; a failure becomes the row's status."""
    folder = os.path.join(work, label.replace(" ", "_").replace("+", "p"))
    os.makedirs(folder)
    dst = os.path.join(folder, "model.onnx")
    row = {"configuration": label}
    try:
        row["quantize_s"], row["peak_mb"] = quantize([dst if c == "{dst}" else c for c in cmd], args.timeout)
        row["outputs"] = compare(ref, outputs(dst, arrays, per_sample))
        row["mb"] = size_mb(folder)
        row["latency_s"] = latency(dst, arrays, args.runs)
        row["latency_ratio"] = float_latency / row["latency_s"]
        row["status"] = "ok"
    except Exception as e:  # reported, not fatal
        row["status"] = "failed: " + one_line(e)
    shutil.rmtree(folder, ignore_errors=True)
    return row


def measure_model(args, name, work):
    """All configurations of one model: {model facts, float row, rows}. Raises Skip."""
    src = model_file(args.zoo, name)
    wmb = weight_mb(src)
    if wmb < args.min_weight_mb:
        raise Skip(f"only {wmb:.2f} MB of MatMul/Gemm/Conv/Gather weights (< {args.min_weight_mb})")
    sess = session(src)
    per_sample = fixed_batch_one(sess)
    calib, arrays = load_eval(args, name, sess)
    ref = outputs(src, arrays, per_sample)
    f_lat = latency(src, arrays, args.runs)
    kinds = {n: ("float" if np.issubdtype(a.dtype, np.floating) else str(a.dtype)) for n, a in ref.items()}
    result = {"model": name, "file": os.path.relpath(src, ROOT), "weight_mb": wmb,
              "float_mb": size_mb(os.path.dirname(src)), "float_latency_s": f_lat, "per_sample": per_sample,
              "samples": int(next(iter(arrays.values())).shape[0]), "outputs": kinds, "rows": []}
    print(f"  {name}: float {f_lat * 1e3 / result['samples']:.2f} ms/sample", file=sys.stderr, flush=True)
    for label, cmd in configurations(args.zeropoint, src, calib):
        row = measure_config(label, cmd, work, arrays, per_sample, ref, f_lat, args)
        print(f"    {label}: {row['status']}", file=sys.stderr, flush=True)
        result["rows"].append(row)
    return result


# ---------------------------------------------------------------------------------------------------- tables --

def cells(row, kinds):
    """Cosine and SQNR cells: one value per output, in output order, joined with ' / '."""
    cos, sqnr = [], []
    for name, kind in kinds.items():
        m = row["outputs"][name]
        if kind == "float":
            cos.append(f"{m['cosine']:.5f}")
            sqnr.append("inf" if m["sqnr_db"] is None else f"{m['sqnr_db']:.1f}")
        else:
            cos.append(f"={100 * m['match']:.1f}%")
    return " / ".join(cos), " / ".join(sqnr) or "-"


def table(result):
    kinds = result["outputs"]
    lines = [f"### {result['model']} ({result['file']}, {result['weight_mb']:.1f} MB of weights, "
             f"{result['samples']} eval samples{', one per run' if result['per_sample'] else ''}; "
             f"float {result['float_latency_s'] * 1e3 / result['samples']:.2f} ms/sample)",
             "outputs: " + ", ".join(f"{n} ({k})" for n, k in kinds.items()), "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    fc, fs = cells({"outputs": {n: {"cosine": 1.0, "sqnr_db": None, "match": 1.0} for n in kinds}}, kinds)
    lines.append(f"| float | {fc} | {fs} | {result['float_mb']:.2f} | 1.00 | - | - |")
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['configuration']} | {row['status']} | | | | | |")
            continue
        c, s = cells(row, kinds)
        lines.append(f"| {row['configuration']} | {c} | {s} | {row['mb']:.2f} | {row['latency_ratio']:.2f} | "
                     f"{row['quantize_s']:.1f} | {row['peak_mb']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main --

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo model names, or 'all'")
    p.add_argument("--zoo", default=os.path.join(ROOT, ".cache", "zoo"))
    p.add_argument("--inputs", default=os.path.join(ROOT, ".cache", "transformers-zoo-inputs"),
                   help="zoo_inputs.py output folder")
    p.add_argument("--samples", type=int, default=32, help="samples per split when generating inputs")
    p.add_argument("--runs", type=int, default=5, help="timed latency passes (median)")
    p.add_argument("--min-weight-mb", type=float, default=1.0)
    p.add_argument("--timeout", type=int, default=1800, help="seconds one quantization may take")
    p.add_argument("--json", default=os.path.join(ROOT, ".cache", "transformers_zoo.json"))
    p.add_argument("--ort-job", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    a = p.parse_args()
    a.zeropoint, a.zoo, a.inputs = (os.path.abspath(x) for x in (a.zeropoint, a.zoo, a.inputs))
    return a


def model_names(args):
    if args.models != "all":
        return [m.strip() for m in args.models.split(",") if m.strip()]
    return sorted(d for d in os.listdir(args.zoo) if d != "pkgs" and os.path.isdir(os.path.join(args.zoo, d)))


def main():
    args = parse_args()
    if args.ort_job:
        return ort_job(*args.ort_job)
    results, notes = [], []
    with tempfile.TemporaryDirectory(prefix="transformers_zoo.") as work:
        for name in model_names(args):
            try:
                result = measure_model(args, name, work)
            except Skip as e:
                notes.append(f"{name}: skipped, {e}")
                print(notes[-1] + "\n", flush=True)
                continue
            results.append(result)
            print(table(result) + "\n", flush=True)
    if notes:
        print("Skipped:\n" + "\n".join(f"* {n}" for n in notes))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"zeropoint": args.zeropoint, "runs": args.runs, "models": results, "notes": notes}, f, indent=1)
    print(f"numbers: {args.json}")


if __name__ == "__main__":
    main()
