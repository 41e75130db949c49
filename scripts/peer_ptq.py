#!/usr/bin/env python3
"""The white paper's PTQ algorithms, zeropoint's against the peers' on the same models and data.

Peers: AIMET (aimet-onnx: CLE, AdaRound), AMD Quark (quark.onnx: CLE, bias correction,
AdaRound), NNCF (its ONNX backend: fast and full bias correction) and ONNX Runtime's
quantize_static (range setting only, every calibrator). Each pins its own onnx and torch, so
each runs in a venv of its own, one `--peer` per run; every run appends its rows to `--out`
(JSON lines) and `--table` prints them side by side:

    python3 -m venv /tmp/aimet && /tmp/aimet/bin/pip install aimet-onnx pillow
    python3 -m venv /tmp/quark && /tmp/quark/bin/pip install amd-quark pillow
    python3 -m venv /tmp/nncf && /tmp/nncf/bin/pip install nncf onnxruntime pillow
    cd /tmp && S=/work/main/scripts/peer_ptq.py
    for p in zeropoint ort; do /work/main/.venv/bin/python $S --peer $p --out peers.jsonl; done
    for p in nncf quark aimet; do PATH=/tmp/$p/bin:$PATH python $S --peer $p --out peers.jsonl; done
    /work/main/.venv/bin/python $S --table peers.jsonl

(Quark compiles its custom operators at first import and needs its venv's ninja on PATH.)
Keras' MobileNet v1 (`--models mobilenet-v1 --bits 8 --cle-relu6`) needs the files of
docs/algorithms.md under `--mobilenet` (scripts/tfjs_mobilenet.py writes the model).

Models and data are algorithms_compare.py's (A1, A3, A4, A5 from ../shared/assets; the zoo's
fsmn-vad on synthetic inputs; `--lcnet-crops` for A4 on 256 training / 68 held-out crops).
Weights int8 or int4, symmetric, per tensor or per channel; activations 8 bits, each tool's
best calibrator for the row where it has several; graph outputs as each tool leaves them, but
AIMET's, which it quantizes by default, are kept float. Score: output SQNR in dB against the float model on the evaluation data,
computed by ONNX Runtime with graph optimizations off (algorithms_compare.outputs), so that the
QDQ arithmetic is exact whatever the CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import algorithms_compare as ac  # noqa: E402

ALGORITHMS = ("plain", "cle", "bias correction", "adaround", "recipe")


def samples(feeds):
    """One dict per calibration sample, batch 1."""
    n = len(next(iter(feeds.values())))
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]


class Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of samples (Quark uses it too)."""

    def __init__(self, feeds):
        self.items, self.i = samples(feeds), 0

    def get_next(self):
        self.i += 1
        return self.items[self.i - 1] if self.i <= len(self.items) else None

    def rewind(self):
        self.i = 0


# Each peer: a function (model, calib, evals, bits, granularity, algorithm, work) -> list of
# (configuration label, path of the quantized model) or raises NotImplementedError when the tool
# has no such setting. The best label of a row is what the table shows.

def zeropoint(model, calib, bits, gran, algo, work, args):
    flags = {"plain": [], "cle": ["--cle"], "bias correction": ["--bias-correction"],
             "adaround": ["--adaround"], "recipe": ["--recipe", "standard"]}[algo]
    # `work` is the model's own folder: its calibration file is written once, for every row.
    calib_path = os.path.join(work, "calib.npz")
    if not os.path.exists(calib_path):
        np.savez(calib_path, **calib)
    cmd = [args.zeropoint, "quantize", model, "--calib", calib_path, "--weights", f"int{bits},sym,{gran}",
           "--batch", "1", "--report-samples", "0"]
    if args.cle_relu6 and algo in ("cle", "recipe"):
        flags = flags + ["--cle-relu6"]
    # Weight ranges: min-max (the default), MSE and fitted to the layers' outputs, as the peers'
    # best calibrator is taken; AdaRound keeps the default, the recipe takes MSE itself.
    out = []
    for ranges in (["minmax", "mse", "output"] if algo in ("plain", "cle", "bias correction") else ["default"]):
        path = os.path.join(work, f"zp.{ranges}.onnx")
        extra = [] if ranges == "default" else ["--weight-range", ranges]
        subprocess.run(cmd + ["-o", path] + flags + extra, check=True, capture_output=True)
        out.append((f"{ranges} weights, uint8 MSE activations", path))
    return out


def onnxruntime(model, calib, bits, gran, algo, work, args):
    if algo != "plain":
        raise NotImplementedError
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    out = []
    for method in (CalibrationMethod.MinMax, CalibrationMethod.Entropy, CalibrationMethod.Percentile):
        for act in (QuantType.QUInt8, QuantType.QInt8):
            dst = os.path.join(work, f"ort.{method.name}.{act.name}.onnx")
            quantize_static(model, dst, Reader(calib), quant_format=QuantFormat.QDQ, per_channel=gran == "per-channel",
                            activation_type=act, weight_type=QuantType.QInt4 if bits == 4 else QuantType.QInt8,
                            calibrate_method=method, extra_options={"WeightSymmetric": True})
            out.append((f"{method.name} {act.name}", dst))
    return out


def nncf(model, calib, bits, gran, algo, work, args):
    import nncf as n
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    if bits != 8 or algo not in ("plain", "bias correction"):
        raise NotImplementedError
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges
    out = []
    # NNCF's default range is the mean over samples of each one's min and max; MINMAX is the
    # overall extremes, and better on every model here.
    for ranges in ("MEAN_MINMAX", "MINMAX"):
        for preset in (n.QuantizationPreset.PERFORMANCE, n.QuantizationPreset.MIXED):
            for fast in ((True, False) if algo == "bias correction" else (True,)):
                adv = AdvancedQuantizationParameters(
                    disable_bias_correction=algo == "plain",
                    activations_range_estimator_params=getattr(Ranges, ranges),
                    weights_quantization_params=QuantizationParameters(per_channel=gran == "per-channel"))
                q = n.quantize(onnx.load(model), n.Dataset(samples(calib)), preset=preset,
                               subset_size=len(samples(calib)), fast_bias_correction=fast, advanced_parameters=adv)
                dst = os.path.join(work, f"nncf.{ranges}.{preset.value}.{fast}.onnx")
                onnx.save(q, dst)
                label = f"{preset.value} {ranges} activations" + ("" if algo == "plain" else ", fast" if fast else ", full")
                out.append((label, dst))
    return out


def quark(model, calib, bits, gran, algo, work, args):
    from quark.onnx import ModelQuantizer
    from quark.onnx.quantization.config.algorithm import AdaRoundConfig, BiasCorrectionConfig, CLEConfig
    from quark.onnx.quantization.config.config import QConfig
    from quark.onnx.quantization.config.spec import CalibMethod, Int8Spec, QLayerConfig, QuantGranularity, UInt8Spec
    if bits != 8 or algo == "recipe":
        raise NotImplementedError
    algos = {"plain": [], "cle": [CLEConfig()], "bias correction": [BiasCorrectionConfig()],
             "adaround": [AdaRoundConfig()]}[algo]
    # AdaRound takes minutes: only with the calibrator that did best without it.
    methods = [CalibMethod[args.quark_adaround_calib]] if algo == "adaround" else \
        [CalibMethod.MinMax, CalibMethod.Percentile, CalibMethod.MinMSE]
    out = []
    for method in methods:
        w = Int8Spec(quant_granularity=QuantGranularity.Channel if gran == "per-channel" else QuantGranularity.Tensor,
                     calibration_method=CalibMethod.MinMax)
        a = UInt8Spec(symmetric=False, calibration_method=method)
        cfg = QConfig(global_config=QLayerConfig(activation=a, weight=w), algo_config=algos)
        dst = os.path.join(work, f"quark.{method.name}.onnx")
        ModelQuantizer(cfg).quantize_model(model, dst, Reader(calib))
        out.append((f"uint8 {method.name} activations", dst))
    return out


def aimet(model, calib, bits, gran, algo, work, args):
    import onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
    from aimet_onnx.common.defs import QuantScheme
    from aimet_onnx.cross_layer_equalization import equalize_model
    if algo not in ("plain", "cle", "adaround"):
        raise NotImplementedError
    config = "default_config_per_channel.json" if gran == "per-channel" else "default_config.json"
    import aimet_onnx.common.quantsim_config as qc
    config = os.path.join(os.path.dirname(qc.__file__), config)
    schemes = [QuantScheme[args.aimet_adaround_scheme]] if algo == "adaround" else \
        [QuantScheme[name] for name in args.aimet_schemes.split(",")]
    out = []
    for scheme in schemes:
        m = onnx.load(model)
        if algo == "cle":
            equalize_model(m)  # folds BatchNorms first, then equalizes and absorbs high biases
        else:
            fold_all_batch_norms_to_weight(m)
        sim = QuantizationSimModel(m, param_type=f"int{bits}", activation_type="int8", quant_scheme=scheme,
                                   config_file=config)
        for name in (o.name for o in sim.model.model.graph.output):
            if name in sim.qc_quantize_op_dict:
                sim.qc_quantize_op_dict[name].enabled = False
        if algo == "adaround":
            apply_adaround(sim, samples(calib), num_iterations=args.aimet_iterations)
        sim.compute_encodings(samples(calib))
        dst = os.path.join(work, f"aimet.{scheme.name}.onnx")
        onnx.save(sim.to_onnx_qdq(), dst)
        out.append((f"8-bit {scheme.name} activations", dst))
    return out


PEERS = {"zeropoint": zeropoint, "ort": onnxruntime, "nncf": nncf, "quark": quark, "aimet": aimet}


def imagenet_samples(folder):
    """The 1000 images of EliSchwartz/imagenet-sample-images (one per class, `<wnid>_<name>.JPEG`;
    the label is the wnid's index in sorted order) as Keras' MobileNet takes them: shorter side
    to 256, centre crop of 224, RGB scaled to [-1, 1]."""
    from PIL import Image
    files = sorted(f for f in os.listdir(folder) if f.endswith(".JPEG"))
    wnids = sorted({f.split("_")[0] for f in files})
    xs = []
    for f in files:
        im = Image.open(os.path.join(folder, f)).convert("RGB")
        k = 256 / min(im.size)
        im = im.resize((max(224, round(im.size[0] * k)), max(224, round(im.size[1] * k))), Image.BILINEAR)
        left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
        xs.append((np.asarray(im.crop((left, top, left + 224, top + 224)), np.float32) / 127.5 - 1).transpose(2, 0, 1))
    return np.stack(xs), np.array([wnids.index(f.split("_")[0]) for f in files])


def data(name, args, work):
    """(model, calibration feeds, evaluation feeds, evaluation labels or None)."""
    if name == "mobilenet-v1":
        x, labels = imagenet_samples(os.path.join(args.mobilenet, "imagenet-sample-images"))
        calib = np.random.default_rng(0).permutation(len(x))[:args.mobilenet_calib]
        model = os.path.join(args.mobilenet, "mobilenet_v1_0.75_224.onnx")
        return model, {"input": x[calib]}, {"input": x}, labels
    return ac.model_data(name, work, args.zoo, args.lcnet_crops) + (None,)


def top1(outs, labels):
    """Top-1 in % of the first output with one score per class."""
    scores = next(o for o in outs if o.ndim == 2 and o.shape[1] >= labels.max() + 1)
    return round(100 * float(np.mean(scores.argmax(1) == labels)), 1)


def measure(args):
    peer = PEERS[args.peer]
    for name in args.models.split(","):
        work = tempfile.mkdtemp(prefix=f"peer_ptq_{args.peer}_")
        model, calib, evals, labels = data(name, args, work)
        ref = ac.outputs(model, evals)
        if labels is not None:
            print(json.dumps({"model": name, "float top-1": top1(ref, labels)}), flush=True)
        for bits in (int(b) for b in args.bits.split(",")):
            for gran in args.granularity.split(","):
                for algo in args.algorithms.split(","):
                    start = time.time()
                    try:
                        tried, accuracy = [], {}
                        for label, path in peer(model, calib, bits, gran, algo, work, args):
                            outs = ac.outputs(path, evals)
                            tried.append((label, ac.sqnr(ref, outs)))
                            if labels is not None:
                                accuracy[label] = top1(outs, labels)
                    except NotImplementedError:
                        continue
                    except Exception as e:  # a peer failing on a model is a result too
                        accuracy = {}
                        tried = [(f"fails: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}",
                                  float("nan"))]
                    label, best = max(tried, key=lambda t: -1e9 if np.isnan(t[1]) else t[1])
                    row = {"model": name + (" (crops)" if name == "a4" and args.lcnet_crops else ""),
                           "weights": f"int{bits} {gran}", "algorithm": algo, "peer": args.peer,
                           "sqnr": None if np.isnan(best) else round(best, 2), "best of": label,
                           "tried": {lb: round(s, 2) for lb, s in tried if not np.isnan(s)},
                           "seconds": round(time.time() - start, 1)}
                    if labels is not None:
                        row["top-1"] = accuracy.get(label)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")


def table(path):
    """One line per model, width and algorithm; one column per peer (top-1 where labelled, SQNR, seconds)."""
    rows = [json.loads(line) for line in open(path)]
    peers = [p for p in PEERS if any(r["peer"] == p for r in rows)]
    keys = list(dict.fromkeys((r["model"], r["weights"], r["algorithm"]) for r in rows))
    cell = {(r["model"], r["weights"], r["algorithm"], r["peer"]): r for r in rows}
    print("| model | weights | algorithm | " + " | ".join(peers) + " |")
    print("|---|---|---|" + "---|" * len(peers))
    for k in keys:
        cells = []
        for p in peers:
            r = cell.get(k + (p,))
            if r is None or r["sqnr"] is None:
                cells.append("" if r is None else "fails")
                continue
            accuracy = f"{r['top-1']}%, " if r.get("top-1") is not None else ""
            cells.append(f"{accuracy}{r['sqnr']:.1f} dB ({r['seconds']:.0f} s)")
        print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer", choices=list(PEERS))
    ap.add_argument("--table", help="print the table of a results file and stop")
    ap.add_argument("--out", help="append the rows to this JSON-lines file")
    ap.add_argument("--models", default="a1,a3,a4,a5,fsmn-vad")
    ap.add_argument("--bits", default="8,4")
    ap.add_argument("--granularity", default="per-tensor,per-channel")
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--lcnet-crops", action="store_true", help="A4 on qat_lcnet.py's crops (algorithms_compare.py)")
    ap.add_argument("--mobilenet", default="/tmp/mnv2",
                    help="folder with mobilenet_v1_0.75_224.onnx and imagenet-sample-images/ (docs/algorithms.md)")
    ap.add_argument("--mobilenet-calib", type=int, default=256, help="calibration images of the 1000")
    ap.add_argument("--cle-relu6", action="store_true",
                    help="zeropoint's CLE replaces ReLU6 by ReLU, as AIMET's always does")
    ap.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    ap.add_argument("--zoo", default=os.path.join(ROOT, ".cache", "zoo"))
    ap.add_argument("--aimet-iterations", type=int, default=10000, help="AIMET's AdaRound steps per layer (its default)")
    ap.add_argument("--aimet-schemes", default="min_max,post_training_tf_enhanced,post_training_percentile",
                    help="AIMET's range schemes tried (the best is taken)")
    ap.add_argument("--aimet-adaround-scheme", default="post_training_tf_enhanced",
                    help="AIMET's activation scheme for the AdaRound rows")
    ap.add_argument("--quark-adaround-calib", default="Percentile",
                    help="Quark's activation calibrator for AdaRound (its MinMSE, power-of-two scales, broke AdaRound: -12.5 dB on A1)")
    args = ap.parse_args()
    if args.table:
        return table(args.table)
    if not args.peer:
        ap.error("--peer or --table is needed")
    measure(args)


if __name__ == "__main__":
    main()
