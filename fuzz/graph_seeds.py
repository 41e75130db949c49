#!/usr/bin/env python3
"""Writes the hand-built seed of `graph_mutations` that the operator cases do not cover: the
graph patterns canonicalization and placement rewrite (docs/engine.md, docs/ptq.md), for the
fuzzer's edits to break.

Usage: .venv/bin/python fuzz/graph_seeds.py DIR   (then copy DIR/*.onnx into fuzz/models/)

folds_and_fusions.onnx: Conv (padded) -> Mul(per-channel) -> Add(per-channel) -> Relu, an
exported inference BatchNorm that folds into the Conv; Flatten -> MatMul -> Clip(1e-10, no max)
-> Log, a layer whose output placement quantizes before the Clip; Gemm -> Relu -> Identity into
the graph output, whose Relu stays float.

zero_state.onnx: a GRU whose initial state is an Expand of a zero sized from the input's batch
(as paddle2onnx writes it) and an LSTM whose initial_h is a ConstantOfShape of zero and whose
initial_c one of 0.5, summed: the zero states canonicalization drops (crate::zero_state), the
0.5 it keeps.

scale_shift.onnx: two Conv -> Relu branches summed, then an inference BatchNormalization ->
Relu -> Conv, and a Relu -> per-channel Mul -> Add -> Conv: the scales and shifts no layer
before absorbs, which canonicalization writes as 1x1 depthwise convolutions.

attention.onnx: one attention head, x -> MatMul(W_q) + b_q -> Reshape -> Transpose and
x -> Gemm(W_k) -> Transpose as the scores MatMul's operands, scores / sqrt(d) -> Softmax ->
MatMul(V): the division canonicalization folds into the query projection.

silu.onnx: Conv -> Sigmoid -> Mul(c, s) -> Conv -> Sigmoid -> Mul(s, c), the SiLU of YOLO-style
exports, which the executor runs as one pass (`Executor::run_silu`) unless a hook replaces the
Sigmoid's output; the second Sigmoid is also read by the Add after it.

hard_swish_and_shared_bias.onnx: Conv -> Add(3) -> Clip(0, 6) -> Mul -> Div(6), the HardSwish
paddle2onnx writes out, which canonicalization makes HardSigmoid and Mul (crate::hard_swish); then
two Convs sharing a weight and a bias, a Siamese pair's towers, whose bias placement copies per
layer (placement::own_biases).

nhwc_chain.onnx: tf2onnx's NHWC chain, Conv -> Cast(float) -> Transpose(0,2,3,1) -> Add(bias) ->
Sub(mean) -> Mul(scale) -> Add(shift) -> Relu -> Transpose(0,3,1,2) -> Conv, then two residual
sums of sums and an Add of a 0-d zero: the Casts (crate::neutral_ops), Transposes
(crate::transpose_sink) and folds of canonicalization, and the sums of quantized sums placement
quantizes.

gelu.onnx: Conv -> Div(sqrt 2) -> Erf -> Add(1) -> Mul(c, gate) -> Mul(0.5), and a Gemm -> Mul(1/sqrt 2)
-> Erf -> Add -> Mul(x, 0.5) -> Mul(half, gate): GELUs written out after layers, which
canonicalization makes one Gelu after moving the model to opset 20 (crate::gelu).
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def normal(seed, spread=0.3):
    """Float32 arrays of the shape asked for, normal around 0 with this spread, from a generator
    seeded with `seed` (each seed model its own, so that each writes the same bytes every time)."""
    rng = np.random.default_rng(seed)
    return lambda *shape: (rng.standard_normal(shape) * spread).astype(np.float32)


def seed_model(name, nodes, x_shape, y_shape, weights):
    """The checked opset-13 model of `nodes` from input x to output y."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, n) for n, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def folds_and_fusions():
    f = normal(0)
    weights = dict(w=f(4, 3, 3, 3), s=np.abs(f(1, 4, 1, 1)) + 0.5, t=f(4, 1, 1), w1=np.abs(f(64, 8)),
                   lo=np.array(1e-10, np.float32), w2=f(5, 8), b2=f(5))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["fl"], name="flat"),
             helper.make_node("MatMul", ["fl", "w1"], ["mm"], name="spectrum"),
             helper.make_node("Clip", ["mm", "lo", ""], ["cl"], name="floor"),
             helper.make_node("Log", ["cl"], ["lg"], name="log"),
             helper.make_node("Gemm", ["lg", "w2", "b2"], ["g"], name="dense", transB=1),
             helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
             helper.make_node("Identity", ["gr"], ["y"], name="out")]
    return seed_model("folds_and_fusions", nodes, ["n", 3, 4, 4], ["n", 5], weights)


def scale_shift():
    f = normal(1)
    weights = dict(w1=f(4, 3, 3, 3), w2=f(4, 3, 1, 1), gamma=f(4) + 1, beta=f(4), mean=f(4),
                   var=np.abs(f(4)) + 0.1, w3=f(4, 4, 1, 1), b3=f(4), s=f(1, 4, 1, 1), t=f(1, 4, 1, 1),
                   w4=f(2, 4, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Add", ["r1", "r2"], ["sum"], name="residual"),
             helper.make_node("BatchNormalization", ["sum", "gamma", "beta", "mean", "var"], ["bn"],
                              name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["bn"], ["r3"], name="relu3"),
             helper.make_node("Conv", ["r3", "w3", "b3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r4"], name="relu4"),
             helper.make_node("Mul", ["r4", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "t"], ["a"], name="shift"),
             helper.make_node("Conv", ["a", "w4"], ["y"], name="conv4", pads=[1, 1, 1, 1])]
    return seed_model("scale_shift", nodes, ["n", 3, 5, 5], ["n", 2, 5, 5], weights)


def attention():
    f = normal(2)
    weights = dict(wq=f(8, 8), bq=f(8), wk=f(8, 8), bk=f(8), wv=f(8, 8),
                   heads=np.array([1, 4, 2, 4], np.int64), d=np.array(2.0, np.float32))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q_proj"),
             helper.make_node("Add", ["q0", "bq"], ["q1"], name="q_bias"),
             helper.make_node("Reshape", ["q1", "heads"], ["q2"], name="q_heads"),
             helper.make_node("Transpose", ["q2"], ["q"], name="q_t", perm=[0, 2, 1, 3]),
             helper.make_node("Flatten", ["x"], ["xf"], name="flat", axis=2),
             helper.make_node("Gemm", ["xf", "wk", "bk"], ["k0"], name="k_proj"),
             helper.make_node("Reshape", ["k0", "heads"], ["k1"], name="k_heads"),
             helper.make_node("Transpose", ["k1"], ["kt"], name="k_t", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node("Div", ["s", "d"], ["sd"], name="scale"),
             helper.make_node("Softmax", ["sd"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["x", "wv"], ["v0"], name="v_proj"),
             helper.make_node("Reshape", ["v0", "heads"], ["v1"], name="v_heads"),
             helper.make_node("Transpose", ["v1"], ["v"], name="v_t", perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="context")]
    return seed_model("attention", nodes, [1, 4, 8], [1, 2, 4, 4], weights)


def silu():
    f = normal(3)
    weights = dict(w1=f(4, 3, 3, 3), b1=f(4), w2=f(4, 4, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c1"], ["s1"], name="sigmoid1"),
             helper.make_node("Mul", ["c1", "s1"], ["m1"], name="silu1"),
             helper.make_node("Conv", ["m1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Sigmoid", ["c2"], ["s2"], name="sigmoid2"),
             helper.make_node("Mul", ["s2", "c2"], ["m2"], name="silu2"),
             helper.make_node("Add", ["m2", "s2"], ["y"], name="sum")]
    return seed_model("silu", nodes, [1, 3, 8, 8], [1, 4, 8, 8], weights)


def zero_state():
    f = normal(4, 0.4)
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    weights = dict(gw=f(1, 9, 4), gr=f(1, 9, 3), lw=f(1, 12, 4), lr=f(1, 12, 3),
                   zero=np.zeros(1, np.float32), one=i64(1), two=i64(2), hidden=i64(3))
    half = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.5])
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"], name="shape"),
             helper.make_node("Slice", ["x_shape", "one", "two"], ["n"], name="batch"),
             helper.make_node("Concat", ["one", "n", "hidden"], ["dims"], name="dims", axis=0),
             helper.make_node("Expand", ["zero", "dims"], ["zeros"], name="expand"),
             helper.make_node("GRU", ["x", "gw", "gr", "", "", "zeros"], ["gy"], name="gru",
                              hidden_size=3, linear_before_reset=1),
             helper.make_node("ConstantOfShape", ["dims"], ["h0"], name="h_fill"),
             helper.make_node("ConstantOfShape", ["dims"], ["c0"], name="c_fill", value=half),
             helper.make_node("LSTM", ["x", "lw", "lr", "", "", "h0", "c0"], ["ly"], name="lstm",
                              hidden_size=3),
             helper.make_node("Add", ["gy", "ly"], ["y"], name="sum")]
    return seed_model("zero_state", nodes, [3, 2, 4], [3, 1, 2, 3], weights)


def shared_weights():
    """ALBERT's sharing: one weight read by two layers, each through an Identity of its own."""
    f = normal(5, 0.4)
    weights = dict(w=f(4, 4))
    nodes = [helper.make_node("Identity", ["w"], ["w1"], name="share1"),
             helper.make_node("Identity", ["w1"], ["w2"], name="share2"),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="layer1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="layer2")]
    return seed_model("shared_weights", nodes, ["n", 4], ["n", 4], weights)


def hard_swish_and_shared_bias():
    """paddle2onnx's HardSwish written out, x · Clip(x + 3, 0, 6) / 6, after a Conv, then two Convs
    (a Siamese pair's towers) sharing a weight and a bias."""
    f = normal(6)
    weights = dict(w=f(4, 3, 1, 1), b=f(4), w2=f(4, 4, 3, 3), b2=f(4), three=np.array(3, np.float32),
                   zero=np.array(0, np.float32), six=np.array(6, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "three"], ["a"], name="hs_add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["k"], name="hs_clip"),
             helper.make_node("Mul", ["c", "k"], ["m"], name="hs_mul"),
             helper.make_node("Div", ["m", "six"], ["h"], name="hs_div"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["t1"], name="tower1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["t2"], name="tower2", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["t1", "t2"], ["y"], name="distance")]
    return seed_model("hard_swish_and_shared_bias", nodes, ["n", 3, 4, 4], ["n", 4, 4, 4], weights)


def nhwc_chain():
    """tf2onnx's NHWC BatchNorm between two NCHW Convs, float-to-float Casts, HiFi-GAN's sums."""
    f = normal(7)
    weights = dict(w=f(4, 3, 1, 1), w2=f(4, 4, 1, 1), bias=f(4), mean=f(1, 1, 1, 4), scale=np.abs(f(4)) + 0.5,
                   shift=f(4), zero=np.array(0, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Cast", ["c"], ["cc"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["cc"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t", "bias"], ["a"], name="bias_add"),
             helper.make_node("Sub", ["a", "mean"], ["s"], name="bn_sub"),
             helper.make_node("Mul", ["s", "scale"], ["m"], name="bn_mul"),
             helper.make_node("Add", ["m", "shift"], ["b"], name="bn_add"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["n"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["n", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "n"], ["s1"], name="sum1"),
             helper.make_node("Add", ["s1", "c2"], ["s2"], name="sum2"),
             helper.make_node("Add", ["s2", "zero"], ["y"], name="plus_zero")]
    return seed_model("nhwc_chain", nodes, ["n", 3, 4, 4], ["n", 4, 4, 4], weights)


def gelu():
    """GELUs written out after a Conv and after a Gemm, in two of PyTorch's spellings."""
    f = normal(8)
    c = lambda v: np.array(v, np.float32)  # noqa: E731
    weights = dict(w=f(4, 3, 3, 3), wg=f(64, 8), sqrt2=c(np.sqrt(2)), inv=c(1 / np.sqrt(2)), one=c(1), half=c(0.5),
                   shape=np.array([-1, 4, 4, 4], np.int64))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "sqrt2"], ["d"], name="div"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["gate"], name="add"),
             helper.make_node("Mul", ["c", "gate"], ["m"], name="mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="gelu"),
             helper.make_node("Flatten", ["g"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "wg"], ["h"], name="gemm"),
             helper.make_node("Mul", ["h", "inv"], ["d2"], name="scale2"),
             helper.make_node("Erf", ["d2"], ["e2"], name="erf2"),
             helper.make_node("Add", ["one", "e2"], ["gate2"], name="add2"),
             helper.make_node("Mul", ["h", "half"], ["h2"], name="half2"),
             helper.make_node("Mul", ["h2", "gate2"], ["g2"], name="gelu2"),
             helper.make_node("Reshape", ["g2", "shape"], ["y"], name="reshape")]
    return seed_model("gelu", nodes, ["n", 3, 4, 4], ["n", 4, 4, 4], weights)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for seed in (folds_and_fusions, scale_shift, attention, silu, zero_state, shared_weights,
                 hard_swish_and_shared_bias, nhwc_chain, gelu):
        onnx.save(seed(), out / f"{seed.__name__}.onnx")


if __name__ == "__main__":
    main()
