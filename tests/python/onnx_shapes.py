#!/usr/bin/env python3
"""ONNX's own shape inference, as an independent reference for zeropoint's.

  onnx_shapes.py MODEL.onnx OUT.json

Runs onnx.shape_inference.infer_shapes (data propagation on) and writes, for every value it
types (graph inputs, outputs, value_info), {"dtype": "float32", "shape": [dims]}, a dim being
an int, a symbol string, or null when unknown.
"""

import json
import sys

import onnx
from onnx import helper, shape_inference


def main(path, out):
    model = shape_inference.infer_shapes(onnx.load(path), data_prop=True)
    types = {}
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        t = v.type.tensor_type
        if not t.HasField("elem_type") or not t.HasField("shape"):
            continue
        dims = []
        for d in t.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        types[v.name] = {"dtype": dtype, "shape": dims}
    json.dump(types, open(out, "w"), indent=0, sort_keys=True)
    print(f"{len(types)} values typed")


if __name__ == "__main__":
    main(*sys.argv[1:3])
