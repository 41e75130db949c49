"""`zeropoint train` (quantization-aware training) checked end to end.

Usage: qat_reference.py ZEROPOINT DIR

On the MNIST CNN of assets/models with the 500 MNIST training images and labels of assets/data:

- W2A2: QAT (3 epochs at learning rate 1e-2, cross-entropy on the labels) beats the PTQ model it starts from by at
  least 10 points of top-1 on the 2000 test images (PTQ W2A2 is ~25 %);
- W4A4: the trained QDQ model's top-1 in ONNX Runtime (this script, numpy preprocessing) is the
  one zeropoint's executor gives (`zeropoint eval`), to 0.1 point;
- the same seed gives the same bytes at 1 and 3 threads, with `--augment flip,crop=2` as without
  (and augmentation changes the result); `--augment` on a non-image input is refused;
- `--float` with `--validation-split` and `--validate-every` writes a float model, logs one JSON
  line per epoch and per mid-epoch validation, and keeps the best validation's model;
- `--batchnorm batch` folds the BatchNorm statistics re-estimated over the training data
  (checked against ONNX Runtime's on the SVHN CNN's first layer), and its W8A8 export scores in
  ONNX Runtime what training said after the re-estimation;
- a run killed after its first epoch's checkpoint and resumed writes the same bytes as an
  unbroken one, with labels and distilled (where the unbroken run reuses the float model's
  outputs of its first epoch and the resumed one runs the float model again); a checkpoint of
  another model is refused;
- labels whose count does not match the data are refused with one line, exit status 1, and no
  output file.
"""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets" / "models" / "mnist_cnn.onnx"
DATA = ROOT / "assets" / "data"
TRAIN = DATA / "mnist-train-500-images-idx3-ubyte.gz"
TRAIN_LABELS = DATA / "mnist-train-500-labels-idx1-ubyte.gz"
TEST = DATA / "mnist-test-2000-images-idx3-ubyte.gz"
TEST_LABELS = DATA / "mnist-test-2000-labels-idx1-ubyte.gz"
PREP = ["--mean", "0.1307", "--std", "0.3081"]


def zeropoint(exe, *args, env=None, ok=True):
    run = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env)
    if ok and run.returncode != 0:
        sys.exit(f"zeropoint {' '.join(map(str, args))} failed: {run.stderr}")
    return run


def top1(exe, quantized):
    out = zeropoint(exe, "eval", MODEL, quantized, "--data", TEST, "--labels", TEST_LABELS, *PREP, "--json").stdout
    return json.loads(out)["top1"]["quantized"]


def idx(path, header):
    with gzip.open(path) as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    return ok


def sqnr(reference, test):
    reference, test = np.asarray(reference, np.float64), np.asarray(test, np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - test) ** 2))


def input_moments(model, bn, x):
    """The population mean and variance per channel of BatchNormalization `bn`'s input over `x`, computed by
    ONNX Runtime on the float `model`."""
    probe = onnx.load(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(bn.input[0], onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    u = s.run([bn.input[0]], {s.get_inputs()[0].name: x})[0].astype(np.float64)
    return u.mean(axis=(0, 2, 3)), u.var(axis=(0, 2, 3))


def check_batch_norm(exe, work, svhn):
    """`--batchnorm batch` on the SVHN CNN (six Conv -> BatchNormalization pairs), 80 random
    images of which the last 16 are held out."""
    x = np.random.default_rng(2).normal(size=(80, 3, 32, 32)).astype(np.float32)
    np.save(work / "svhn80.npy", x)
    common = ["--data", work / "svhn80.npy", "--batchnorm", "batch", "--epochs", 1, "--batch-size", 16,
              "--validation-split", "0.2"]
    model = onnx.load(svhn)
    init = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    conv, bn = (next(n for n in model.graph.node if n.op_type == op) for op in ("Conv", "BatchNormalization"))
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)

    # A learning rate too small to move anything: the exported first layer is the Conv with its
    # BatchNormalization folded at the population statistics of its input over the 64 training
    # images, which ONNX Runtime computes here from the float model.
    folded = work / "svhn_bn_float.onnx"
    zeropoint(exe, "train", svhn, *common, "--float", "--lr", "1e-9", "-o", folded)
    mean, var = input_moments(svhn, bn, x[:64])
    a = init[bn.input[1]] / np.sqrt(var + eps)
    want_w = init[conv.input[1]] * a[:, None, None, None]
    want_b = (init[conv.input[2]] - mean) * a + init[bn.input[2]]
    out = onnx.load(folded)
    got = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    first = next(n for n in out.graph.node if n.op_type == "Conv")
    w_err = np.max(np.abs(got[first.input[1]] - want_w)) / np.max(np.abs(want_w))
    b_err = np.max(np.abs(got[first.input[2]] - want_b)) / np.max(np.abs(want_b))
    ok = check(w_err < 1e-4 and b_err < 1e-4 and all(n.op_type != "BatchNormalization" for n in out.graph.node),
               f"--batchnorm batch re-estimates the population statistics: first layer's folded weight "
               f"{w_err:.1e}, bias {b_err:.1e} from ONNX Runtime's (relative)")

    # W8A8 QAT with batch statistics: the export computes what training validated once the
    # statistics are re-estimated (ONNX Runtime without graph optimizations runs the QDQ model
    # as dequantize-compute-quantize, free of the int8 kernels' saturation on CPUs without VNNI).
    qat = work / "svhn_bn_qat.onnx"
    r = zeropoint(exe, "train", svhn, *common, "--json", "-o", qat)
    said = json.loads(r.stdout)["reestimated"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    runs = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (svhn, qat)]
    ref, test = (np.concatenate([q.run(None, {q.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(64, 80)])
                 for q in runs)
    measured = sqnr(ref, test)
    ops = {n.op_type for n in onnx.load(qat).graph.node}
    ok &= check(said is not None and abs(measured - said) < 0.2 and "BatchNormalization" not in ops
                and "QuantizeLinear" in ops,
                f"--batchnorm batch W8A8 export in ONNX Runtime: held-out SQNR {measured:.2f} dB, "
                f"training said {said if said is None else round(said, 2)} dB")
    refused = work / "svhn_bn_tensor.onnx"
    r = zeropoint(exe, "train", svhn, *common, "--weights", "int8,sym,per-tensor", "-o", refused, ok=False)
    message = r.stderr.strip()
    ok &= check(r.returncode == 1 and "per-channel grid" in message and len(message.splitlines()) == 1
                and not refused.exists(), f"--batchnorm batch with per-tensor weights: {message}")
    return ok


def check_keras_batch_norm(exe, work, keras):
    """`--batchnorm batch` on the CIFAR-10 CNN, whose BatchNorms follow a ReLU (Keras' order):
    canonicalization writes each as a 1x1 depthwise Conv, which training normalizes with batch
    statistics like a folded one (the BatchNorm folded into an identity layer)."""
    x = np.random.default_rng(4).uniform(0, 255, size=(40, 32, 32, 3)).astype(np.float32)
    np.save(work / "cifar40.npy", x)
    model = onnx.load(keras)
    init = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    out = work / "cifar_bn_float.onnx"
    zeropoint(exe, "train", keras, "--data", work / "cifar40.npy", "--batchnorm", "batch", "--epochs", 1,
              "--batch-size", 8, "--float", "--lr", "1e-9", "-o", out)
    mean, var = input_moments(keras, bn, x)
    want_w = init[bn.input[1]] / np.sqrt(var + eps)
    want_b = init[bn.input[2]] - mean * want_w
    got = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    dw = next(n for n in onnx.load(out).graph.node if n.name == bn.name)
    w_err = np.max(np.abs(got[dw.input[1]].ravel() - want_w)) / np.max(np.abs(want_w))
    b_err = np.max(np.abs(got[dw.input[2]] - want_b)) / np.max(np.abs(want_b))
    return check(dw.op_type == "Conv" and w_err < 1e-4 and b_err < 1e-4,
                 f"--batchnorm batch on a BatchNorm after a ReLU (a depthwise Conv since canonicalization): "
                 f"population statistics re-estimated, weight {w_err:.1e}, bias {b_err:.1e} from ONNX Runtime's")


def killed_and_resumed(exe, work, args, ck):
    """Whether a `train` run killed once its first epoch's checkpoint `ck` exists, then resumed
    from it, writes the same bytes as an unbroken run (and the killed run writes nothing)."""
    straight, resumed, never = work / "straight.onnx", work / "resumed.onnx", work / "never.onnx"
    zeropoint(exe, "train", MODEL, *args, "-o", straight)
    ck.unlink(missing_ok=True)
    p = subprocess.Popen([str(exe), "train", str(MODEL), *map(str, args), "--checkpoint", str(ck), "-o",
                          str(never)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ck.exists() and p.poll() is None:
        time.sleep(0.02)
    p.kill()
    p.wait()
    zeropoint(exe, "train", MODEL, *args, "--resume", ck, "-o", resumed)
    return straight.read_bytes() == resumed.read_bytes() and not never.exists()


def main():
    exe, work = Path(sys.argv[1]), Path(sys.argv[2])
    common = ["--data", TRAIN, *PREP, "--labels", TRAIN_LABELS, "--seed", "3"]
    good = True

    ptq2, qat2 = work / "ptq2.onnx", work / "qat2.onnx"
    zeropoint(exe, "quantize", MODEL, "--calib", TRAIN, *PREP, "--weights", "int2", "--activations", "uint2",
              "-o", ptq2)
    zeropoint(exe, "train", MODEL, *common, "--weights", "int2", "--activations", "uint2", "--epochs", 3,
              "--lr", "1e-2", "-o", qat2)
    p, q = top1(exe, ptq2), top1(exe, qat2)
    good &= check(q >= p + 10, f"W2A2 top-1: PTQ {p:.2f} %, QAT {q:.2f} %")

    qat4 = work / "qat4.onnx"
    zeropoint(exe, "train", MODEL, *common, "--weights", "int4", "--activations", "uint4", "--epochs", 1, "-o", qat4)
    images = (idx(TEST, 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255 - np.float32(0.1307)) / np.float32(0.3081)
    labels = idx(TEST_LABELS, 8)
    s = ort.InferenceSession(str(qat4), providers=["CPUExecutionProvider"])
    logits = np.concatenate([s.run(None, {s.get_inputs()[0].name: images[i:i + 100]})[0]
                             for i in range(0, len(images), 100)])
    ort_top1 = 100.0 * float(np.mean(logits.argmax(1) == labels))
    zp_top1 = top1(exe, qat4)
    good &= check(abs(ort_top1 - zp_top1) <= 0.1, f"W4A4 QAT top-1: ONNX Runtime {ort_top1:.2f} %, zeropoint {zp_top1:.2f} %")

    # The same seed gives the same bytes at any thread count, augmented or not; augmentation
    # changes what is trained.
    outs = []
    for threads, augment in (("1", "none"), ("3", "none"), ("1", "flip,crop=2"), ("3", "flip,crop=2")):
        out = work / f"t{threads}.onnx"
        env = dict(os.environ, RAYON_NUM_THREADS=threads)
        zeropoint(exe, "train", MODEL, *common, "--weights", "int4", "--epochs", 1, "--augment", augment,
                  "-o", out, env=env)
        outs.append(out.read_bytes())
    good &= check(outs[0] == outs[1] and outs[2] == outs[3] and outs[0] != outs[2],
                  "same bytes at 1 and 3 threads, with and without --augment flip,crop=2 (which differ)")

    # Float training with a held-out split validated every 4 steps and after each epoch: a float
    # model, the best validation's model kept, a JSON-lines log. 400 training samples in steps of
    # 32 are 13 steps an epoch: validations at steps 4, 8, 12, 13 (end), 16, 20, 24, 26 (end).
    trained, log = work / "float.onnx", work / "log.jsonl"
    r = zeropoint(exe, "train", MODEL, *common, "--float", "--epochs", 2, "--validation-split", "0.2",
                  "--validate-every", 4, "--log", log, "-o", trained)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    epochs = [e for e in lines if "loss" in e]
    steps = [e for e in lines if "step" in e]
    ops = {n.op_type for n in onnx.load(trained).graph.node}
    ends = [{"epoch": e["epoch"], "step": 13 * e["epoch"], "validation": e["validation"]} for e in epochs]
    best = max(steps[:3] + ends[:1] + steps[3:] + ends[1:], key=lambda e: e["validation"])
    good &= check(len(epochs) == 2 and [e["step"] for e in steps] == [4, 8, 12, 16, 20, 24]
                  and all(0 <= e["validation"] <= 100 for e in lines)
                  and "QuantizeLinear" not in ops
                  and f"kept the model of epoch {best['epoch']}, step {best['step']} " in r.stdout,
                  f"--float --validate-every 4: float model, validations {[round(e['validation'], 1) for e in lines]}, "
                  f"kept epoch {best['epoch']} step {best['step']}")

    # A run killed after its first epoch's checkpoint, resumed, writes what an unbroken run does.
    two = [*common, "--weights", "int4", "--activations", "uint4", "--epochs", 2]
    ck = work / "ck.safetensors"
    good &= check(killed_and_resumed(exe, work, two, ck),
                  "killed after epoch 1 and resumed: the same bytes as an unbroken run")
    # The same without labels: the unbroken run distills its second epoch towards the float
    # model's outputs kept from the first, the resumed one runs the float model again.
    distilled = ["--data", TRAIN, *PREP, "--seed", "3", "--weights", "int4", "--activations", "uint4",
                 "--epochs", 2]
    good &= check(killed_and_resumed(exe, work, distilled, work / "ck_distilled.safetensors"),
                  "distilled, killed after epoch 1 and resumed (the float model's outputs kept in the "
                  "unbroken run, run again in the resumed one): the same bytes")
    other = work / "other.onnx"
    svhn = ROOT.parent / "shared" / "assets" / "models" / "ccexam_svhn_cnn_bn.onnx"
    np.save(work / "svhn.npy", np.random.default_rng(1).normal(size=(8, 3, 32, 32)).astype(np.float32))
    r = zeropoint(exe, "train", svhn, "--data", work / "svhn.npy", "--weights", "int4", "--activations", "uint4",
                  "--epochs", 2, "--resume", ck, "-o", other, ok=False)
    good &= check(r.returncode == 1 and "a checkpoint of another model file" in r.stderr and not other.exists(),
                  f"resume from another model's checkpoint: {r.stderr.strip()}")

    bad = work / "bad.onnx"
    r = zeropoint(exe, "train", MODEL, "--data", TRAIN, *PREP, "--labels", TEST_LABELS, "--epochs", 1, "-o", bad, ok=False)
    message = r.stderr.strip()
    good &= check(r.returncode == 1 and "2000 labels for 500 training samples" in message
                  and len(message.splitlines()) == 1 and not bad.exists(), f"wrong label count: {message}")
    good &= check_batch_norm(exe, work, svhn)
    good &= check_keras_batch_norm(exe, work, svhn.parent / "cifar10_keras_cnn_bn.onnx")

    # Augmentation is for images: a model whose input is not [N, C, H, W] is refused before training.
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    flat = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
                                                         "flat", [x], [y], [w]),
                                  opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(flat, work / "flat.onnx")
    np.save(work / "flat.npy", np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    r = zeropoint(exe, "train", work / "flat.onnx", "--data", work / "flat.npy", "--augment", "flip", "--epochs", 1,
                  "-o", work / "flat.qat.onnx", ok=False)
    message = r.stderr.strip()
    good &= check(r.returncode == 1 and "input 'x'" in message and "[N, C, H, W]" in message
                  and len(message.splitlines()) == 1 and not (work / "flat.qat.onnx").exists(),
                  f"--augment on a [1, 4] input: {message}")
    if not good:
        sys.exit("qat reference: some checks failed")
    print("qat reference: all checks passed")


if __name__ == "__main__":
    main()
