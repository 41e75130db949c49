#!/usr/bin/env python3
"""The integer codes of a QDQ model's 8-bit weights.

  weight_codes.py MODEL.onnx

Prints one JSON object: the smallest and largest code, and how many 8-bit integer initializers
are weights across the main graph: the input x of a DequantizeLinear (static quantization), the
weight input of a MatMulInteger or ConvInteger (dynamic quantization).
"""

import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper

model = onnx.load(sys.argv[1])
inits = {t.name: t for t in model.graph.initializer}
WEIGHT_INPUT = {"DequantizeLinear": 0, "MatMulInteger": 1, "ConvInteger": 1}
codes = [
    numpy_helper.to_array(inits[n.input[WEIGHT_INPUT[n.op_type]]])
    for n in model.graph.node
    if n.op_type in WEIGHT_INPUT and n.input[WEIGHT_INPUT[n.op_type]] in inits
]
codes = [c for c in codes if c.dtype in (np.int8, np.uint8)]
print(json.dumps({
    "min": int(min(c.min() for c in codes)),
    "max": int(max(c.max() for c in codes)),
    "count": len(codes),
}))
