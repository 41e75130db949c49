#!/usr/bin/env python3
"""Weight-only quantization of MiniLM-L3: zeropoint (RTN, RTN with MSE ranges, HQQ, GPTQ, AWQ; embedding tables at 8 bits
by default, at the weights' bits, or float) against ONNX Runtime's own weight-only tooling
(onnxruntime.quantization.matmul_nbits_quantizer: its DEFAULT round-to-nearest on MatMul only or on MatMul and
Gather, the RTN, GPTQ and HQQ configurations), on the same calibration data, measured in one run
(docs/transformers.md).

Usage: .venv/bin/python scripts/weight_only_compare.py [--zeropoint target/release/zeropoint] [--bits 4] [--block 32]
       [--symmetric] [--runs 5] [--only zp,ort]

Calibration: the 200 pang_lee_polarity sentences of scripts/ptq_compare.py (zeropoint: one padded array; ORT's
GPTQ: one unpadded sentence per batch, its data reader's form). Evaluation: the 50 Lee documents, embedding cosine
against float and Pearson of the 1225 pair similarities with the human scores, in ONNX Runtime. Latency: one pass over
the 50 documents on one thread (median of --runs). Quantize time and peak memory: wall clock and maximum resident
size of the quantizing process (/usr/bin/time). Needs .cache/shared/minilm-l3 (../shared/assets/fetch-minilm-l3.sh).
ORT's GPTQ and HQQ configurations import PyTorch, which the project's venv does not install: give a Python that has
it with --ort-python (a venv with torch, numpy, onnx, onnxruntime, onnx-ir and tokenizers), or they are reported as
not run.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def timed(cmd):
    """Runs cmd under /usr/bin/time: (seconds, peak MB, stdout)."""
    r = subprocess.run(["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("TIME ")]
        raise RuntimeError(lines[-1] if lines else f"exit status {r.returncode}")
    line = [x for x in r.stderr.splitlines() if x.startswith("TIME ")][-1].split()
    return float(line[1]), int(line[2]) / 1024, r.stdout


def ort_job(algo, src, dst, bits, block, symmetric, calib):
    """One ONNX Runtime weight-only quantization (run in its own process, so that its time and memory are its own)."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mq
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds, self.i = feeds, 0

        def get_next(self):
            if self.i >= len(self.feeds):
                return None
            self.i += 1
            return self.feeds[self.i - 1]

        def rewind(self):
            self.i = 0

    if algo == "default":
        cfg = mq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits)
    elif algo == "default+gather":
        cfg = mq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=symmetric, bits=bits,
                                              op_types_to_quantize=("MatMul", "Gather"))
    elif algo == "rtn":
        cfg = mq.RTNWeightOnlyQuantConfig()
    elif algo == "gptq":
        d = np.load(calib)
        feeds = [{k: d[k][i:i + 1][:, :int(d["attention_mask"][i].sum())] for k in d.files} for i in range(len(d["input_ids"]))]
        cfg = mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(feeds), block_size=128)
    elif algo == "hqq":
        cfg = mq.HQQWeightOnlyQuantConfig(block_size=block, bits=bits)
    q = mq.MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=block, is_symmetric=symmetric, algo_config=cfg)
    q.process()
    q.model.save_model_to_file(dst, use_external_data_format=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--only", default="zp,ort")
    p.add_argument("--ort-python", default=sys.executable,
                   help="the Python that runs ONNX Runtime's quantizer (its GPTQ and HQQ configurations import torch)")
    p.add_argument("--ort-job", nargs=4, metavar=("ALGO", "SRC", "DST", "CALIB"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_job:
        algo, src, dst, calib = a.ort_job
        return ort_job(algo, src, dst, a.bits, a.block, a.symmetric, calib)
    # Here, not at the top: the quantizing child processes above may run in a Python without its dependencies.
    from ptq_compare import B2, latency
    task = B2(os.path.join(ROOT, ".cache", "shared"))
    ref = task.outputs(task.src)
    feeds = task.latency_feeds()
    f_lat = latency(task.src, feeds, a.runs)
    fm = task.metrics(ref, ref)
    print(f"MiniLM-L3, {a.bits}-bit {'symmetric' if a.symmetric else 'asymmetric'} weights in blocks of {a.block}")
    print(f"{'method':34} {'cos mean':>8} {'cos min':>8} {'Pearson':>8} {'MB':>6} {'latency':>8} {'vs float':>8} "
          f"{'time s':>7} {'peak MB':>7}")
    print(f"{'float':34} {1:8.4f} {1:8.4f} {fm['lee_pearson']:8.4f} {os.path.getsize(task.src) / 1e6:6.2f} "
          f"{f_lat * 1e3:6.1f}ms {1:7.2f}x {'-':>7} {'-':>7}")
    weights = f"{'int' if a.symmetric else 'uint'}{a.bits},{'sym' if a.symmetric else 'asym'},per-block={a.block}"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        calib = task.zp_calib(work)[1]
        jobs = []
        if "zp" in a.only:
            # Data-free methods run without --calib (it would only feed their report).
            base = [a.zeropoint, "quantize", task.src, "--mode", "weight-only", "--weights", weights]
            gptq = base + ["--method", "gptq", "--calib", calib]
            jobs += [("zeropoint RTN", base + ["--method", "rtn"]),
                     (f"zeropoint RTN, {a.bits}-bit tables", base + ["--method", "rtn", "--embedding-bits", str(a.bits)]),
                     ("zeropoint RTN, float tables", base + ["--method", "rtn", "--exclude", "Gather"]),
                     ("zeropoint RTN, MSE ranges", base + ["--method", "rtn", "--weight-range", "mse"]),
                     ("zeropoint GPTQ", gptq),
                     ("zeropoint GPTQ, act-order", gptq + ["--act-order"]),
                     ("zeropoint GPTQ, MSE ranges", gptq + ["--weight-range", "mse"]),
                     (f"zeropoint GPTQ, {a.bits}-bit tables", gptq + ["--embedding-bits", str(a.bits)]),
                     ("zeropoint AWQ", base + ["--method", "awq", "--calib", calib]),
                     ("zeropoint AWQ, no clipping", base + ["--method", "awq", "--calib", calib, "--no-awq-clip"]),
                     ("zeropoint AWQ + GPTQ", gptq + ["--awq"])]
            if not a.symmetric:
                jobs.append(("zeropoint HQQ", base + ["--method", "hqq"]))
        if "ort" in a.only:
            me = [a.ort_python, os.path.abspath(__file__), "--bits", str(a.bits), "--block", str(a.block)]
            me += ["--symmetric"] if a.symmetric else []
            jobs += [("ORT DEFAULT (RTN)", me + ["--ort-job", "default", task.src, "{dst}", calib]),
                     (f"ORT DEFAULT, {a.bits}-bit tables", me + ["--ort-job", "default+gather", task.src, "{dst}", calib]),
                     ("ORT RTN config", me + ["--ort-job", "rtn", task.src, "{dst}", calib]),
                     ("ORT GPTQ config", me + ["--ort-job", "gptq", task.src, "{dst}", calib]),
                     ("ORT HQQ config", me + ["--ort-job", "hqq", task.src, "{dst}", calib])]
        for i, (label, cmd) in enumerate(jobs):
            dst = os.path.join(work, f"{i}.onnx")
            cmd = [dst if c == "{dst}" else c for c in cmd]
            if label.startswith("zeropoint"):
                cmd += ["-o", dst]
            try:
                secs, peak, _ = timed(cmd)
            except RuntimeError as e:
                print(f"{label:34} not run: {str(e)[:120]}")
                continue
            m = task.metrics(task.outputs(dst), ref)
            lat = latency(dst, feeds, a.runs)
            row = dict(method=label, cos_mean=m["cos_mean"], cos_min=m["cos_min"], pearson=m["lee_pearson"],
                       mb=os.path.getsize(dst) / 1e6, latency_ms=lat * 1e3, speedup=f_lat / lat, seconds=secs, peak_mb=peak)
            rows.append(row)
            print(f"{label:34} {m['cos_mean']:8.4f} {m['cos_min']:8.4f} {m['lee_pearson']:8.4f} {row['mb']:6.2f} "
                  f"{lat * 1e3:6.1f}ms {row['speedup']:7.2f}x {secs:7.1f} {peak:7.0f}", flush=True)
    print(json.dumps(dict(bits=a.bits, block=a.block, symmetric=a.symmetric, float_latency_ms=f_lat * 1e3, rows=rows)))


if __name__ == "__main__":
    main()
