#!/usr/bin/env python3
"""Checks that a model written by zeropoint is the model it read.

  onnx_roundtrip.py ORIGINAL.onnx WRITTEN.onnx

- the two load (external data included) to equal ModelProto messages: every field kept;
- onnx.checker.check_model(WRITTEN, full_check=True) passes (by path, so external data is
  checked too);
- ONNX Runtime runs both on the same random inputs (symbolic dimensions set to 2) with
  bit-identical outputs.
Prints one summary line; exits 1 on any difference.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort

TYPES = {1: np.float32, 7: np.int64, 6: np.int32, 9: np.bool_}


def inputs(model):
    rng = np.random.default_rng(0)
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name in inits:
            continue
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 2 for d in t.shape.dim]
        dtype = TYPES[t.elem_type]
        feeds[i.name] = (rng.standard_normal(shape) * 3).astype(dtype)
    return feeds


def normalized(path):
    """The model with external data loaded. onnx's loader then marks data_location = DEFAULT
    explicitly on the loaded tensors, which a model that never had external data leaves unset:
    clear it, so that the comparison is about content."""
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(path)
    for t in _get_all_tensors(model):
        if t.HasField("data_location") and t.data_location == onnx.TensorProto.DEFAULT:
            t.ClearField("data_location")
    return model


def main(original, written):
    a, b = normalized(original), normalized(written)
    problems = []
    if a != b:
        problems.append("the models differ")
    onnx.checker.check_model(written, full_check=True)
    feeds = inputs(a)
    ra = ort.InferenceSession(original, providers=["CPUExecutionProvider"]).run(None, feeds)
    rb = ort.InferenceSession(written, providers=["CPUExecutionProvider"]).run(None, feeds)
    for x, y in zip(ra, rb):
        if x.tobytes() != y.tobytes():
            problems.append("outputs differ")
    for p in problems:
        print("MISMATCH", p)
    print(f"equal={a == b} checker=ok outputs={len(ra)} mismatches={len(problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
