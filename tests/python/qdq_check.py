#!/usr/bin/env python3
"""Checks a QDQ model zeropoint exported against zeropoint's own simulation of it.

  qdq_check.py QDQ.onnx INPUTS.npz SIM_DIR [DUMP_DIR]

SIM_DIR holds zeropoint's simulated values: index.json maps value names to .npy files, for the
graph outputs and for every quantized activation (its dequantized value). The script
- runs onnx.checker.check_model(QDQ, full_check=True);
- runs ONNX Runtime 1.32 on INPUTS with all graph optimizations (the deployment path: QDQ
  fused into integer kernels) for the graph outputs;
- exposes every activation's DequantizeLinear output as a graph output and runs ORT with
  optimizations off ("reference": Q and DQ as the spec defines them) and on ("optimized");
- prints one JSON object: per graph output the max abs difference, relative error and argmax
  agreement; per run over all activations the share of elements with identical codes and the
  max difference in quantization steps.
With DUMP_DIR, also writes ORT's activation values there (DUMP_DIR/<run>/index.json and .npy
files, like SIM_DIR), so that zeropoint can recompute each layer from ORT's own inputs and
compare layer by layer, free of differences carried over from earlier layers.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def session(model_bytes, optimize):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def main(qdq_path, inputs_path, sim_dir, dump_dir=None):
    onnx.checker.check_model(qdq_path, full_check=True)
    model = onnx.load(qdq_path)
    feeds = dict(np.load(inputs_path))
    index = json.load(open(os.path.join(sim_dir, "index.json")))
    sim = {name: np.load(os.path.join(sim_dir, f)) for name, f in index.items()}
    result = {"outputs": {}}

    outs = session(model.SerializeToString(), True).run(None, feeds)
    for o, y in zip(model.graph.output, outs):
        z = sim[o.name]
        entry = {"max_abs": float(np.abs(y.astype(np.float64) - z).max()) if y.size else 0.0}
        if y.dtype.kind == "f" and y.size:
            entry["rel"] = entry["max_abs"] / max(float(np.abs(y).max()), 1e-30)
            entry["argmax_agree"] = float((y.reshape(-1, y.shape[-1]).argmax(-1) == z.reshape(-1, z.shape[-1]).argmax(-1)).mean())
        result["outputs"][o.name] = entry

    # Activations: expose each activation's DequantizeLinear output (scale and zero-point of
    # its QuantizeLinear are initializers).
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q_of = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    exposed = []
    for name in index:
        q = q_of.get(name)
        if q is None or q.output[0] not in dq_of:
            continue
        exposed.append((name, dq_of[q.output[0]].output[0], float(inits[q.input[1]])))
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    for _, dq_out, _ in exposed:
        extra.graph.output.append(helper.make_empty_tensor_value_info(dq_out))
    for label, optimize in (("reference", False), ("optimized", True)):
        values = session(extra.SerializeToString(), optimize).run([e[1] for e in exposed], feeds)
        same = total = 0
        worst = 0.0
        for (name, _, scale), v in zip(exposed, values):
            steps = np.abs(v.astype(np.float64) - sim[name]) / scale
            same += int((steps < 1e-3).sum())
            total += steps.size
            worst = max(worst, float(steps.max()) if steps.size else 0.0)
        result[label] = {"identical_share": same / max(total, 1), "max_steps": worst}
        if dump_dir:
            d = os.path.join(dump_dir, label)
            os.makedirs(d, exist_ok=True)
            files = {}
            for i, ((name, _, _), v) in enumerate(zip(exposed, values)):
                np.save(os.path.join(d, f"{i}.npy"), v)
                files[name] = f"{i}.npy"
            json.dump(files, open(os.path.join(d, "index.json"), "w"))
    result["activations_compared"] = len(exposed)
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:5])
