#!/usr/bin/env python3
"""Everything zeropoint writes for the real models, in one folder, so that two builds can be compared
byte for byte with `diff -r` (a refactor must not change a single byte of it).

Usage: behaviour_snapshot.py OUT_DIR --zeropoint BIN [--refs DIR]   (scripts/behaviour-snapshot builds
       the release binary and passes it)

For the embedded MNIST CNN and the five real models of tests/python/model_reference.py (inputs written
there into --refs, default OUT_DIR/../refs, once), OUT_DIR gets:

  <model>/graph.json, graph.onnx         `graph --json -o` (the canonicalized model); graph.txt its table
  <model>/*.txt                          the tables of inspect, run, quantize and eval
  <model>/graph-opset21.onnx             `graph -o --opset 21`
  <model>/inspect.json                   `inspect --json --range minmax,percentile,mse,entropy`
  <model>/run/*.npy                      `run -o` on the reference inputs
  <model>/<preset>.onnx, .encodings.json `quantize --preset P --encodings` (w8a8, w4a8, w8a16, w4a16,
                                         and the int4 per-block-32 weights of MiniLM-L3)
  <model>/<preset>.json                  its `--json` report, wall-clock fields removed
  <model>/eval.json                      `eval --json` of the w8a8 model on the reference inputs
  explain/*.json, *.txt                  `explain` on ranges, values and tensors; `inspect` and the main job
                                         (`quantize` without a model) on the embedded model

Wall-clock fields (seconds, runs, stage_seconds) are the only thing removed; everything else is kept as
printed. Paths in the reports are relative to OUT_DIR, so snapshots taken in different folders compare.
"""

import argparse
import json
import re
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "assets")
TIMING = {"seconds", "runs", "stage_seconds"}
TIMED = re.compile(r"^(done in |ran \d+ nodes)")


def run(cmd, cwd, out=None):
    """Runs a zeropoint command in `cwd` and writes its stdout to `out`: as printed, except that a JSON
    document with wall-clock fields is rewritten without them and text lines with times are dropped."""
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    if out is None:
        return
    text = p.stdout
    if out.endswith(".json"):
        doc = json.loads(text)
        if isinstance(doc, dict) and TIMING & doc.keys():
            for k in TIMING:
                doc.pop(k, None)
            text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    else:
        text = "".join(l for l in text.splitlines(True) if not TIMED.search(l))
    with open(os.path.join(cwd, out), "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--zeropoint", required=True)
    ap.add_argument("--refs")
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    zp = os.path.abspath(a.zeropoint)
    refs = os.path.abspath(a.refs or os.path.join(out, "..", "refs"))
    if not os.path.exists(os.path.join(refs, "models.json")):
        os.makedirs(refs, exist_ok=True)
        run([sys.executable, os.path.join(ROOT, "tests/python/model_reference.py"), refs,
             "--minilm", os.path.join(ROOT, ".cache/shared")], cwd=ROOT)
    os.makedirs(out, exist_ok=True)
    models = json.load(open(os.path.join(refs, "models.json")))
    cases = [("embedded_mnist", os.path.join(ROOT, "assets/models/mnist_cnn.onnx"),
              os.path.join(refs, "mnist_cnn", "inputs.npz"))]
    cases += [(m["name"], m["model"], os.path.join(refs, m["name"], "inputs.npz")) for m in models]
    for name, model, inputs in cases:
        d = os.path.join(out, name)
        os.makedirs(os.path.join(d, "run"), exist_ok=True)
        print(name, flush=True)
        run([zp, "graph", model, "--json", "-o", "graph.onnx"], d, "graph.json")
        run([zp, "graph", model, "-o", "graph-opset21.onnx", "--opset", "21"], d, "graph.txt")
        run([zp, "inspect", model, "--json", "--range", "minmax,percentile,mse,entropy"], d, "inspect.json")
        run([zp, "inspect", model, "--range", "minmax,mse", "--plot", "plots"], d, "inspect.txt")
        run([zp, "run", model, "-i", inputs, "-o", "run", "--json"], d, "run.json")
        run([zp, "run", model, "-i", inputs], d, "run.txt")
        presets = [("w8a8", []), ("w4a8", []), ("w8a16", []), ("w4a16", [])]
        if name == "minilm_l3":
            presets.append(("int4-block32", ["--weights", "int4,per-block=32"]))
        for preset, extra in presets:
            flags = extra or ["--preset", preset]
            run([zp, "quantize", model, "--calib", inputs, "-o", f"{preset}.onnx", "--json",
                 "--encodings", f"{preset}.encodings.json", "--samples", "16", "--report-samples", "8"]
                + flags, d, f"{preset}.json")
        run([zp, "quantize", model, "--calib", inputs, "-o", "text.onnx", "--samples", "16",
             "--report-samples", "8"], d, "quantize.txt")
        run([zp, "eval", model, "w8a8.onnx", "--data", inputs, "--samples", "16", "--json"], d, "eval.json")
        run([zp, "eval", model, "w8a8.onnx", "--data", inputs, "--samples", "16"], d, "eval.txt")
    e = os.path.join(out, "explain")
    os.makedirs(e, exist_ok=True)
    mnist = os.path.join(ROOT, "assets/models/mnist_cnn.onnx")
    explains = {
        "range.json": ["--min=-1", "--max=3"],
        "range4sym.json": ["--min=-1", "--max=3", "--bits", "4", "--symmetric"],
        "values.json": ["--values=-1.2,0,0.4,3.1", "--bits", "4"],
        "tensor.json": ["--tensor", mnist, "--name", inspect_first(zp, mnist)],
    }
    for f, args in explains.items():
        run([zp, "explain", "--json"] + args, e, f)
        run([zp, "explain"] + args, e, f.replace(".json", ".txt"))
    run([zp, "inspect", "--json"], e, "inspect-embedded.json")
    run([zp, "inspect"], e, "inspect-embedded.txt")
    run([zp, "quantize", "--json", "-o", "demo.onnx"], e, "demo.json")
    run([zp, "quantize", "-o", "demo-text.onnx"], e, "demo.txt")


def inspect_first(zp, model):
    p = subprocess.run([zp, "inspect", model, "--json"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)["tensors"][0]["name"]


if __name__ == "__main__":
    main()
