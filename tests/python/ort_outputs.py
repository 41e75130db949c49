#!/usr/bin/env python3
"""Every output of a model as ONNX Runtime computes it, for comparing another runtime with it.

  ort_outputs.py MODEL.onnx INPUTS.npz OUT.npz

Runs MODEL on the arrays of INPUTS.npz (keyed by input name) with onnxruntime's
CPUExecutionProvider, graph optimizations disabled (ORT_DISABLE_ALL: QuantizeLinear and
DequantizeLinear run as the ONNX spec defines them, no fused integer kernels), one thread, and
writes every graph output to OUT.npz (numpy.savez, keyed by output name, in graph order).
"""

import sys

import numpy as np
import onnxruntime as ort


def main(model, inputs, out):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    if any("/" in n for n in names):
        sys.exit(f"ort_outputs.py: an output name of {model} cannot be an npz key: {names}")
    np.savez(out, **dict(zip(names, sess.run(names, dict(np.load(inputs))))))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
