"""A detection head's logits stay float by default and are quantized with `--quantize-logits`.

Usage: head_logits.py ZEROPOINT DIR

The model: x -> Conv -> Relu -> class Conv -> Reshape -> Sigmoid -> scores. The class Conv's
output (the logits) reaches only a Reshape and the Sigmoid, so placement keeps it float: a range
fitted to the bulk of the map would clip its few large values, the detections. With
`--quantize-logits` it gets a QuantizeLinear like any other convolution's output. Both exports
pass onnx.checker's full check and run in ONNX Runtime within cosine 0.99 of the float model; the
default export's highest score stays within 1 % of the float model's.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ort_kernels import LIMIT_PAIRS

FAILED = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def build(path):
    rng = np.random.default_rng(5)
    inits = [
        # Filters that light up on a bright blob: the class map is -6 but at a few positions.
        numpy_helper.from_array(rng.normal(0.2, 0.2, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0.12, 0.01, (2, 8, 1, 1)).astype(np.float32), "wc"),
        # A low prior: the bulk of the map sits far below the few detections.
        numpy_helper.from_array(np.full(2, -6.0, np.float32), "bc"),
        numpy_helper.from_array(np.array([1, 2, 256], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="backbone", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["h"], name="relu"),
        helper.make_node("Conv", ["h", "wc", "bc"], ["logits"], name="cls"),
        helper.make_node("Reshape", ["logits", "shape"], ["flat"], name="flatten"),
        helper.make_node("Sigmoid", ["flat"], ["scores"], name="sigmoid"),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def samples(n, seed):
    """Images with a bright blob somewhere: the detections."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 3, 16, 16)).astype(np.float32)
    for i in range(n):
        r, c = rng.integers(2, 14, 2)
        x[i, :, r - 1:r + 1, c - 1:c + 1] += 4.0
    return x


def quantized_values(path):
    m = onnx.load(path)
    return {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}


def scores(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def main():
    zeropoint, out = Path(sys.argv[1]), Path(sys.argv[2])
    src = out / "head.onnx"
    build(src)
    np.save(out / "calib.npy", samples(16, 1))
    evals = samples(8, 2)
    ref = scores(src, evals)
    for tag, extra in (("default", []), ("quantized logits", ["--quantize-logits"])):
        dst = out / f"head_{tag.replace(' ', '_')}.onnx"
        p = subprocess.run([str(zeropoint), "quantize", str(src), "--calib", str(out / "calib.npy"), "-o", str(dst)]
                           + extra + LIMIT_PAIRS, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"zeropoint quantize {' '.join(extra)} failed: {p.stderr}")
        onnx.checker.check_model(onnx.load(dst), full_check=True)
        got = scores(dst, evals)
        cos = float((ref * got).sum() / np.sqrt((ref ** 2).sum() * (got ** 2).sum()))
        q = quantized_values(dst)
        check(cos > 0.99, f"{tag}: runs in ONNX Runtime, cosine {cos:.5f} against float")
        check("h" in q, f"{tag}: the backbone's output is quantized")
        if tag == "default":
            check("logits" not in q, "default: the class Conv's logits stay float")
            top, top_ref = got.max(axis=(1, 2)), ref.max(axis=(1, 2))
            worst = float(np.abs(top / top_ref - 1).max())
            check(worst < 0.01, f"default: the highest score of each image within {worst:.2%} of float's")
        else:
            check("logits" in q, "--quantize-logits: the class Conv's logits are quantized")
    if FAILED:
        sys.exit(f"head logits: {len(FAILED)} checks failed")
    print("head logits: all checks passed")


if __name__ == "__main__":
    main()
