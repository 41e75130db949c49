#!/usr/bin/env python3
"""Int8 quantization of MiniLM-L3, int8 and static: zeropoint's `quantize --mode dynamic` against ONNX Runtime's
quantize_dynamic in its configurations (per-tensor and per-channel, int8 and uint8 weights), zeropoint's dynamic and
static W8A8 models with and without SmoothQuant (`--smoothquant`), measured in one run (docs/transformers.md). ONNX Runtime's static
quantizer on this model is in scripts/ptq_compare.py (it breaks the model with every calibrator).

Usage: .venv/bin/python scripts/dynamic_compare.py [--zeropoint target/release/zeropoint] [--rounds 15] [--rows 'TEXT|TEXT']

On x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernels sum pairs of products in int16 with saturation: the
7-bit-weight rows (and ORT's reduce_range) are the configurations that cannot saturate there.

Evaluation: the 50 Lee documents of scripts/ptq_compare.py, embedding cosine against float and Pearson of the 1225
pair similarities with the human scores, in ONNX Runtime. Latency: one pass over the 50 documents on one thread,
the median of --rounds interleaved rounds: every model (float included) is loaded first, and each round runs one
pass of each, in an order that rotates from round to round, so that the machine's drift over the run (other
processes, frequency) falls on every model alike. Measured one model after another, the static W8A8 model read
2.20x float in a run where interleaved runs read 2.34-2.41x. Quantize time and peak memory: wall clock and maximum resident size of the quantizing
process (/usr/bin/time). Static calibration: the 200 pang_lee_polarity sentences of ptq_compare.py, one unpadded
sentence per file (a folder of .npz). Needs .cache/shared/minilm-l3 (../shared/assets/fetch-minilm-l3.sh).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def ort_job(src, dst, per_channel, weight_type, reduce_range):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(src, dst, per_channel=per_channel == "1", reduce_range=reduce_range == "1",
                     weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8)


def interleaved_latency(paths, feeds, rounds):
    """Median seconds of one pass over `feeds` per model (1 thread), over `rounds` rounds of one pass of every model
    each, after one warm-up pass of each."""
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(p, o, providers=["CPUExecutionProvider"]) for p in paths]
    times = [[] for _ in sessions]
    for r in range(rounds + 1):
        for k in range(len(sessions)):
            i = (k + r) % len(sessions)
            t = time.perf_counter()
            for f in feeds:
                sessions[i].run(None, f)
            if r > 0:
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--rows", help="measure only the rows whose label contains one of these texts (separated by '|')")
    p.add_argument("--ort-job", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.ort_job:
        return ort_job(*a.ort_job)
    from ptq_compare import B2
    from weight_only_compare import timed
    task = B2(os.path.join(ROOT, ".cache", "shared"))
    ref = task.outputs(task.src)
    feeds = task.latency_feeds()
    fm = task.metrics(ref, ref)
    zp = [a.zeropoint, "quantize", task.src, "--mode", "dynamic"]
    me = [sys.executable, os.path.abspath(__file__), "--ort-job", task.src]
    jobs = [("zeropoint per-channel", zp),
            ("zeropoint per-channel, MSE ranges", zp + ["--weight-range", "mse"]),
            ("zeropoint per-tensor", zp + ["--weights", "int8,sym,per-tensor"]),
            # x86 without VNNI: ORT's uint8 x int8 kernels saturate int16 pair sums; 7-bit weights cannot.
            ("zeropoint per-channel, 7-bit weights", zp + ["--weights", "int7,sym,per-channel"]),
            ("zeropoint per-channel, float tables", zp + ["--exclude", "Gather"]),
            ("zeropoint per-channel, --per-token", zp + ["--per-token"]),
            ("zeropoint per-channel, --per-token, 7-bit weights", zp + ["--per-token", "--weights", "int7,sym,per-channel"])]
    calib = os.path.join(tempfile.mkdtemp(), "calib")
    os.makedirs(calib)
    for i, f in enumerate(task.calib_feeds()):
        np.savez(os.path.join(calib, f"{i:04d}.npz"), **f)
    jobs += [("zeropoint per-channel, SmoothQuant", zp + ["--calib", calib, "--smoothquant"]),
             ("zeropoint per-channel, SmoothQuant, 7-bit weights",
              zp + ["--calib", calib, "--smoothquant", "--weights", "int7,sym,per-channel"])]
    st = [a.zeropoint, "quantize", task.src, "--calib", calib]
    jobs += [("zeropoint static W8A8", st),
             ("zeropoint static, SmoothQuant a searched", st + ["--smoothquant"]),
             ("zeropoint static, SmoothQuant a=0.5", st + ["--smoothquant", "0.5"]),
             ("zeropoint static, SmoothQuant a=0.7", st + ["--smoothquant", "0.7"]),
             ("zeropoint static, SmoothQuant a=0.8", st + ["--smoothquant", "0.8"]),
             ("zeropoint static, --target-sqnr 26", st + ["--target-sqnr", "26"]),
             ("zeropoint static, SmoothQuant searched, --target-sqnr 26", st + ["--smoothquant", "--target-sqnr", "26"]),
             ("zeropoint static, SmoothQuant a=0.7, --target-sqnr 26", st + ["--smoothquant", "0.7", "--target-sqnr", "26"])]
    jobs += [(f"ORT quantize_dynamic {'per-channel' if pc == '1' else 'per-tensor'} {wt}", me + ["{dst}", pc, wt, "0"])
             for pc in ["0", "1"] for wt in ["int8", "uint8"]]
    jobs += [("ORT quantize_dynamic per-channel int8, reduce_range", me + ["{dst}", "1", "int8", "1"]),
             ("zeropoint static W8A8, 7-bit weights", st + ["--weights", "int7,sym,per-channel"]),
             ("zeropoint static, SmoothQuant searched, --target-sqnr 26, 7-bit weights",
              st + ["--smoothquant", "--target-sqnr", "26", "--weights", "int7,sym,per-channel"])]
    jobs = [j for j in jobs if a.rows is None or any(r in j[0] for r in a.rows.split("|"))]
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as work:
        for i, (label, cmd) in enumerate(jobs):
            dst = os.path.join(work, f"{i}.onnx")
            cmd = [dst if c == "{dst}" else c for c in cmd] + (["-o", dst] if label.startswith("zeropoint") else [])
            try:
                secs, peak, _ = timed(cmd)
                m = task.metrics(task.outputs(dst), ref)
            except Exception as e:  # a configuration ONNX Runtime cannot run is reported, not fatal
                print(f"{label:56} not run: {str(e).strip().splitlines()[-1][:120]}")
                continue
            rows.append(dict(method=label, cos_mean=m["cos_mean"], cos_min=m["cos_min"], pearson=m["lee_pearson"],
                             mb=os.path.getsize(dst) / 1e6, seconds=secs, peak_mb=peak))
            paths.append(dst)
        f_lat, *lats = interleaved_latency([task.src] + paths, feeds, a.rounds)
    print(f"{'MiniLM-L3, int8':56} {'cos mean':>8} {'cos min':>8} {'Pearson':>8} {'MB':>6} {'latency':>8} "
          f"{'vs float':>8} {'time s':>7} {'peak MB':>7}")
    print(f"{'float':56} {1:8.4f} {1:8.4f} {fm['lee_pearson']:8.4f} {os.path.getsize(task.src) / 1e6:6.2f} "
          f"{f_lat * 1e3:6.1f}ms {1:7.2f}x {'-':>7} {'-':>7}")
    for row, lat in zip(rows, lats):
        row.update(latency_ms=lat * 1e3, speedup=f_lat / lat)
        print(f"{row['method']:56} {row['cos_mean']:8.4f} {row['cos_min']:8.4f} {row['pearson']:8.4f} {row['mb']:6.2f} "
              f"{lat * 1e3:6.1f}ms {row['speedup']:7.2f}x {row['seconds']:7.1f} {row['peak_mb']:7.0f}")
    print(json.dumps(dict(float_latency_ms=f_lat * 1e3, rounds=a.rounds, rows=rows)))


if __name__ == "__main__":
    main()
