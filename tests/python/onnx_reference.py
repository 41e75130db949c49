#!/usr/bin/env python3
"""Checks zeropoint's quantize / dequantize results against independent implementations.

Input: a folder written by the Rust test `onnx_reference` (crates/zeropoint-core/tests): for each
case, the input x, the scale and zero-point tensors, and zeropoint's codes, packed bytes and
dequantized values as raw little-endian arrays (<name>.<part>.bin), listed in cases.jsonl with
their shapes. For every case this script builds an ONNX model
QuantizeLinear -> DequantizeLinear with onnx.helper and runs it with

  - onnx.reference.ReferenceEvaluator (the ONNX specification in executable form), and
  - onnxruntime, where it implements the type (its kernels are what deployments run).

Codes, packed bytes and dequantized floats must be bit-identical. Cases holding NaN or +-Inf are
checked against onnxruntime only: the reference evaluator casts x / scale to int32 before
saturating, which is undefined for NaN, Inf and |x / s| >= 2^31.

Prints one line per mismatch and a summary line; exits 1 on any mismatch.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

TYPES = {
    "int8": (TensorProto.INT8, np.int8, 21),
    "uint8": (TensorProto.UINT8, np.uint8, 21),
    "int16": (TensorProto.INT16, np.int16, 21),
    "uint16": (TensorProto.UINT16, np.uint16, 21),
    "int4": (TensorProto.INT4, None, 21),
    "uint4": (TensorProto.UINT4, None, 21),
    "int2": (TensorProto.INT2, None, 25),
    "uint2": (TensorProto.UINT2, None, 25),
}


def build_model(case, x, scale, zp):
    elem, _, opset = TYPES[case["type"]]
    attrs = {"axis": case["axis"]}
    if case["block_size"]:
        attrs["block_size"] = case["block_size"]
    zp_tensor = helper.make_tensor("zp", elem, list(zp.shape), zp.flatten().tolist())
    scale_tensor = numpy_helper.from_array(scale, "scale")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["y"], **attrs),
            helper.make_node("DequantizeLinear", ["y", "scale", "zp"], ["z"], **attrs),
        ],
        case["name"],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [
            helper.make_tensor_value_info("y", elem, list(x.shape)),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, list(x.shape)),
        ],
        initializer=[scale_tensor, zp_tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset < 25 else 11
    onnx.checker.check_model(model, full_check=True)
    return model


def compare(case, who, y, z, q, deq, packed, errors):
    name = case["name"]
    codes = np.asarray(y).astype(np.int32).reshape(-1)
    bad = np.flatnonzero(codes != q.reshape(-1))
    for i in bad[:5]:
        errors.append(f"{name} [{who}] code {i}: expected {codes[i]}, zeropoint {q.reshape(-1)[i]}")
    zf = np.asarray(z, dtype=np.float32).reshape(-1)
    bad = np.flatnonzero(zf.view(np.uint32) != deq.reshape(-1).view(np.uint32))
    for i in bad[:5]:
        errors.append(f"{name} [{who}] dequantized {i}: expected {zf[i]!r}, zeropoint {deq.reshape(-1)[i]!r}")
    if packed is not None:
        # ONNX's own serialization of the codes: packed, first element in the low bits.
        raw = numpy_helper.from_array(np.asarray(y), "y").raw_data
        if raw != packed.tobytes():
            errors.append(f"{name} [{who}] packed bytes differ: onnx {raw[:8].hex()}..., zeropoint {packed.tobytes()[:8].hex()}...")


def main(folder):
    folder = Path(folder)
    cases = [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines()]
    errors, counts, ort_skipped = [], {"reference": 0, "onnxruntime": 0}, []
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    for case in cases:
        def load(part, dtype, shape):
            return np.fromfile(folder / f"{case['name']}.{part}.bin", dtype=dtype).reshape(shape)

        shape, pshape = tuple(case["shape"]), tuple(case["param_shape"])
        x, deq = load("x", "<f4", shape), load("deq", "<f4", shape)
        scale, zp = load("scale", "<f4", pshape), load("zp", "<i4", pshape)
        q = load("q", "<i4", shape)
        packed = load("packed", np.uint8, (-1,)) if case["packed"] else None
        model = build_model(case, x, scale, zp)
        if case["check"] in ("reference", "both"):
            y, z = ReferenceEvaluator(model).run(None, {"x": x})
            compare(case, "reference", y, z, q, deq, packed, errors)
            counts["reference"] += 1
        if case["check"] in ("onnxruntime", "both"):
            if ort is None:
                errors.append(f"{case['name']}: onnxruntime is not installed")
                continue
            try:
                sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            except Exception as e:  # a type or attribute onnxruntime does not implement
                if case["check"] == "onnxruntime":
                    errors.append(f"{case['name']}: onnxruntime cannot run it: {str(e).splitlines()[0]}")
                else:
                    ort_skipped.append(case["name"])
                continue
            if TYPES[case["type"]][1] is None:
                # onnxruntime cannot hand sub-byte tensors to numpy: compare the dequantized output.
                (z,) = sess.run(["z"], {"x": x})
                y = q
            else:
                y, z = sess.run(None, {"x": x})
            compare(case, "onnxruntime", y, z, q, deq, None, errors)
            counts["onnxruntime"] += 1
    for e in errors:
        print("MISMATCH", e)
    if ort_skipped:
        print("onnxruntime does not implement:", ", ".join(ort_skipped))
    print(f"cases={len(cases)} reference={counts['reference']} onnxruntime={counts['onnxruntime']} mismatches={len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
