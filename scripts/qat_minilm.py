#!/usr/bin/env python3
"""MiniLM-L3 at W4A8: PTQ against QAT distilled on unlabelled sentences (docs/qat.md).

Usage: .venv/bin/python scripts/qat_minilm.py [--zeropoint target/release/zeropoint] [--epochs 3] [--lr 1e-4]
       [--batch 16] [--weights int4] [--activations uint8] [--distill mse] [--output 461]
       [--text pang|background] [--samples N] [--ptq-extra="--adaround --adaround-samples 256"] [--ptq-only]
       [--train-extra="--smoothquant auto"]

Training data (--text): pang, the 200 pang_lee_polarity sentences scripts/ptq_compare.py calibrates on
(padded with [PAD]); or background, the Lee background corpus (gensim's test_data/lee_background.cor: 300 news
documents, none sharing an 8-word run with the 50 evaluated ones) cut into passages of whole sentences of at
most 128 tokens, the model's limit (the evaluated documents have 53-128), padded to 128. Evaluation: the 50 Lee
documents, embedding cosine against float and Pearson of the pair similarities with the human scores, in ONNX
Runtime. Needs .cache/shared/minilm-l3 (../shared/assets/fetch-minilm-l3.sh); the background corpus is taken
from the same gensim 4.4.0 wheel on PyPI (pip download, sha256 checked) the first time, into
.cache/shared/text/lee_background.cor. With --text background the PTQ row is calibrated on the passages too.
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from ptq_compare import B2, me  # noqa: E402

BACKGROUND_SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"


def background_corpus(cache):
    """gensim 4.4.0's test_data/lee_background.cor, fetched from PyPI the first time."""
    path = os.path.join(cache, "text", "lee_background.cor")
    if not os.path.exists(path):
        import glob
        import zipfile

        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "gensim==4.4.0", "-d", tmp], check=True)
            data = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0]).read(
                "gensim/test/test_data/lee_background.cor")
        if hashlib.sha256(data).hexdigest() != BACKGROUND_SHA256:
            sys.exit("lee_background.cor from the gensim 4.4.0 wheel: sha256 mismatch")
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return open(path, encoding="latin-1").read().strip().split("\n")


def passages(task, docs, limit=128):
    """Each document cut into runs of whole sentences of at most `limit` tokens, as one padded
    .npz batch (input_ids, attention_mask)."""
    from tokenizers import Tokenizer

    whole = Tokenizer.from_str(task.tok.to_str())  # the model's tokenizer truncates at 128
    whole.no_truncation()
    out = []
    for doc in docs:
        current = ""
        for sentence in re.split(r"(?<=[.!?])\s+", doc.strip()):
            joined = f"{current} {sentence}".strip()
            if current and len(whole.encode(joined).ids) > limit:
                out.append(current)
                joined = sentence
            current = joined
        out.append(current)
    return task.padded(me.feeds(task.tok, out), limit)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--zeropoint", default=os.path.join(ROOT, "target", "release", "zeropoint"))
    p.add_argument("--epochs", default="3")
    p.add_argument("--lr", default="1e-4")
    p.add_argument("--batch", default="16")
    p.add_argument("--weights", default="int4")
    p.add_argument("--activations", default="uint8")
    p.add_argument("--distill", default="mse")
    p.add_argument("--output", default="461")
    p.add_argument("--text", default="pang", choices=["pang", "background"])
    p.add_argument("--samples", help="train on the first N samples only")
    p.add_argument("--train-extra", default="",
                   help='more arguments for the QAT run\'s train, given with "=": --train-extra="--smoothquant auto"')
    p.add_argument("--ptq-extra", default="",
                   help='more arguments for the PTQ row\'s quantize, given with "=": --ptq-extra="--adaround '
                        '--adaround-samples 256"')
    p.add_argument("--ptq-only", action="store_true", help="the PTQ row only, no training")
    a = p.parse_args()
    cache = os.path.join(ROOT, ".cache", "shared")
    task = B2(cache)
    ref = task.outputs(task.src)
    floatm = task.metrics(ref, ref)
    print(f"float: Pearson {floatm['lee_pearson']:.4f}")
    scheme = ["--weights", a.weights, "--activations", a.activations]
    with tempfile.TemporaryDirectory() as work:
        if a.text == "background":
            ids, mask = passages(task, background_corpus(cache))
            calib = ["--calib", os.path.join(work, "background.npz")]
            np.savez(calib[1], input_ids=ids, attention_mask=mask)
            print(f"training on {len(ids)} passages of the Lee background corpus "
                  f"({int(mask.sum(1).mean())} tokens on average)")
        else:
            calib = task.zp_calib(work)
        limit = ["--samples", a.samples] if a.samples else []
        ptq = os.path.join(work, "ptq.onnx")
        t = time.time()
        subprocess.run([a.zeropoint, "quantize", task.src, *calib, *limit, *scheme, "--weight-range", "mse",
                        *a.ptq_extra.split(), "-o", ptq], check=True, capture_output=True)
        m = task.metrics(task.outputs(ptq), ref)
        print(f"PTQ (MSE weight ranges{', ' + a.ptq_extra if a.ptq_extra else ''}; {time.time() - t:.0f} s): "
              f"cosine {m['cos_mean']:.4f} (min {m['cos_min']:.4f}), Pearson {m['lee_pearson']:.4f}")
        if a.ptq_only:
            return
        qat = os.path.join(work, "qat.onnx")
        t = time.time()
        run = subprocess.run([a.zeropoint, "train", task.src, "--data", calib[1], *limit, *scheme, "--weight-range", "mse",
                              "--epochs", a.epochs, "--lr", a.lr, "--batch-size", a.batch, "--distill", a.distill,
                              "--output-name", a.output, *a.train_extra.split(), "-o", qat],
                             capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(run.stderr)
        print(run.stdout.strip())
        m = task.metrics(task.outputs(qat), ref)
        print(f"QAT ({a.epochs} epochs, lr {a.lr}{', ' + a.train_extra if a.train_extra else ''}, "
              f"{time.time() - t:.0f} s): cosine {m['cos_mean']:.4f} "
              f"(min {m['cos_min']:.4f}), Pearson {m['lee_pearson']:.4f}")


if __name__ == "__main__":
    main()
