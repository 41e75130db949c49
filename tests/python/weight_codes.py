#!/usr/bin/env python3
"""The integer codes of a QDQ model's 8-bit weights.

  weight_codes.py MODEL.onnx

Prints one JSON object: the smallest and largest code, and how many 8-bit integer initializers
are weights across the main graph: the input x of a DequantizeLinear (static quantization), the
weight input of a MatMulInteger or ConvInteger (dynamic quantization); and `max_pair`, the
largest |q_a + q_b| over the same-sign pairs of int8 codes that ONNX Runtime's u8*s8 kernels on
CPUs without VNNI add in 16 bits (above 128, 255·|q_a + q_b| overflows int16). Pairs are
(k = 2t, 2t+1) along the reduction axis K: for Conv weights [M, C, taps...] in QLinearConv's
order k = tap·C + c, plus, for an odd C, the channel pairs (c = 2t, 2t+1) of each tap (its
symmetric-conv packing); for the others, along the axis the DequantizeLinear does not index
(weights [K, N] per output column, or [N, K] per row).
"""

import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper

model = onnx.load(sys.argv[1])
inits = {t.name: t for t in model.graph.initializer}
WEIGHT_INPUT = {"DequantizeLinear": 0, "MatMulInteger": 1, "ConvInteger": 1}
sites = [
    (n, numpy_helper.to_array(inits[n.input[WEIGHT_INPUT[n.op_type]]]))
    for n in model.graph.node
    if n.op_type in WEIGHT_INPUT and n.input[WEIGHT_INPUT[n.op_type]] in inits
]
sites = [(n, c) for n, c in sites if c.dtype in (np.int8, np.uint8)]
codes = [c for _, c in sites]


def pair_sums(rows):
    """|q_a + q_b| of the same-sign pairs (2t, 2t+1) of each row of a [rows, K] array."""
    rows = rows.astype(np.int32)
    if rows.shape[1] % 2:
        rows = np.pad(rows, ((0, 0), (0, 1)))
    a, b = rows[:, 0::2], rows[:, 1::2]
    return np.where(a * b > 0, np.abs(a + b), 0)


def max_pair(node, q):
    if q.dtype != np.int8 or q.ndim < 2:
        return 0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if q.ndim >= 3:  # a convolution weight [M, C, taps...]
        m, c = q.shape[:2]
        per_tap = q.reshape(m, c, -1).transpose(0, 2, 1)  # [M, taps, C]
        sums = [pair_sums(per_tap.reshape(m, -1))]
        if c % 2:
            sums.append(pair_sums(per_tap.reshape(-1, c)))
        return int(max(s.max(initial=0) for s in sums))
    rows = q if axis % 2 == 0 else q.T  # K along the rows' axis
    return int(pair_sums(rows).max(initial=0))


print(json.dumps({
    "min": int(min(c.min() for c in codes)),
    "max": int(max(c.max() for c in codes)),
    "count": len(codes),
    "max_pair": max(max_pair(n, c) for n, c in sites),
}))
