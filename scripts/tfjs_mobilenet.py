#!/usr/bin/env python3
"""Keras' MobileNet v1 in TF.js layers format (model.json and its weight shards) as ONNX, without
TensorFlow: the ImageNet CNN on which docs/algorithms.md measures cross-layer equalization.

Usage: python scripts/tfjs_mobilenet.py TFJS_DIR OUT.onnx

The files: GitHub tangmingsh/ml5featureExtractormodel at commit 238fbc53, folder
mobilenet_v1_0.75_224/, a copy of Google's tfjs-models mobilenet_v1_0.75_224 (Keras 2.1.4
`MobileNet(alpha=0.75)`, ImageNet weights, Apache-2.0). Convolutions, BatchNormalizations (kept
as nodes) and ReLU6 as Clip(0, 6), TF's "same" padding written out (asymmetric at stride 2).
Input NCHW [1, 3, 224, 224], RGB scaled to [-1, 1]; outputs "probs" and "logits" [1, 1000].
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def load_weights(d):
    m = json.load(open(os.path.join(d, "model.json")))
    out = {}
    for group in m["weightsManifest"]:
        buf = b"".join(open(os.path.join(d, p), "rb").read() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            assert w["dtype"] == "float32", w
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            out[w["name"]] = np.frombuffer(buf, np.float32, n, off).reshape(w["shape"]).copy()
            off += 4 * n
        assert off == len(buf), (group["paths"], off, len(buf))
    return m, out


def same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    m, W = load_weights(src)
    layers = m["modelTopology"]["model_config"]["config"]["layers"]
    nodes, inits = [], []
    cur = "input"
    size = 224

    def add_init(name, arr):
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))

    for L in layers:
        cls, cfg = L["class_name"], L["config"]
        name = cfg["name"]
        if cls == "InputLayer":
            continue
        if cls in ("Conv2D", "DepthwiseConv2D"):
            k = cfg["kernel_size"][0]
            s = cfg["strides"][0]
            if cls == "Conv2D":
                w = W[name + "/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
                group = 1
            else:
                dw = W[name + "/depthwise_kernel"]  # H W C M
                assert dw.shape[3] == 1
                w = dw.transpose(2, 3, 0, 1)  # C 1 H W
                group = w.shape[0]
            if cfg["padding"] == "same":
                b0, b1, out = same_pads(size, k, s)
            else:
                b0 = b1 = 0
                out = (size - k) // s + 1
            wn = name + ".weight"
            inputs = [cur, wn]
            bias = None
            if cfg.get("use_bias"):
                bias = W[name + "/bias"]
            add_init(wn, w)
            bn = None
            if bias is not None:
                bn = name + ".bias"
                add_init(bn, bias)
                inputs.append(bn)
            outn = name
            node = helper.make_node("Conv", inputs, [outn], name=name, kernel_shape=[k, k],
                                    strides=[s, s], pads=[b0, b0, b1, b1], group=group)
            nodes.append(node)
            cur, size = outn, out
        elif cls == "BatchNormalization":
            g, b = W[name + "/gamma"], W[name + "/beta"]
            mu, var = W[name + "/moving_mean"], W[name + "/moving_variance"]
            eps = cfg["epsilon"]
            for suf, arr in (("scale", g), ("B", b), ("mean", mu), ("var", var)):
                add_init(f"{name}.{suf}", arr)
            nodes.append(helper.make_node(
                "BatchNormalization",
                [cur, name + ".scale", name + ".B", name + ".mean", name + ".var"],
                [name], name=name, epsilon=eps))
            cur = name
        elif cls in ("Activation", "ReLU"):
            act = cfg.get("activation", "relu")
            if cls == "ReLU":
                act = "relu6" if cfg.get("max_value") == 6 else "relu"
            if act == "relu6":
                add_init(name + ".min", np.array(0.0))
                add_init(name + ".max", np.array(6.0))
                nodes.append(helper.make_node("Clip", [cur, name + ".min", name + ".max"], [name], name=name))
                cur = name
            elif act == "softmax":
                nodes.append(helper.make_node("Flatten", [cur], ["logits"], name="flatten_logits", axis=1))
                nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name=name, axis=1))
                cur = "probs"
            else:
                raise ValueError(act)
        elif cls == "GlobalAveragePooling2D":
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [name], name=name))
            cur, size = name, 1
        elif cls in ("Reshape", "Dropout"):
            continue  # NCHW GAP output is already [N,C,1,1]; final reshape done by Flatten
        else:
            raise ValueError(cls)

    graph = helper.make_graph(
        nodes, "mobilenet_v1_keras",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 1000]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="zeropoint scripts/tfjs_mobilenet.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    n = sum(int(np.prod(t.dims)) for t in inits if not t.name.endswith((".min", ".max")))
    print(dst, "params:", n, "nodes:", len(nodes))


if __name__ == "__main__":
    main()
