#!/usr/bin/env python3
"""Writes single-op (and a few small multi-op) ONNX test models with ONNX Runtime's outputs.

Usage: op_cases.py OUT_DIR

These are the reference data for zeropoint's ONNX executor. For every case NAME the script writes

  OUT_DIR/NAME/model.onnx    a small model built with onnx.helper; it passes
                             onnx.checker.check_model(full_check=True). The graph outputs carry the
                             element type (and, where it agrees with onnxruntime, the shape) that ONNX
                             shape inference gives them; intermediate value_info is left out.
  OUT_DIR/NAME/inputs.npz    one array per graph input, keyed by the input name, with the input's exact
                             dtype (float32, int64, bool, int32, uint8, int8, ...). A model whose every
                             operand is an initializer has an empty inputs.npz.
  OUT_DIR/NAME/expected.npz  one array per graph output, keyed by the output name: what onnxruntime
                             (CPUExecutionProvider, graph optimizations disabled, one thread) returns.

and at the end OUT_DIR/cases.json, a JSON list with one object per case written:

  {"name": NAME, "op": the operator under test ("Subgraph" for multi-op patterns),
   "opset": the default-domain opset the model imports, "note": what the case is tricky about,
   "ops": every operator type in the model, sorted}

Case names are <Op>_<variant> in [A-Za-z0-9_]. Operands that are constants in real exported models
(weights, shapes, axes, pads, scales) are initializers; a few cases feed shape-like operands (Reshape
shape, Slice starts/ends, Expand shape, Tile repeats, Gather indices, ...) as graph inputs to exercise
the dynamic path. A case that onnxruntime rejects is left out, with "skipped NAME: reason" on stderr.

Output is deterministic: fixed seeds (one np.random.default_rng per op family, drawn in order) and
the .npz archives are written with fixed zip timestamps (they are ordinary np.savez archives: stored,
uncompressed members named KEY.npy), so reruns give identical bytes.

Comparison contract (on the Rust side): same dtype, same shape, floats |a - b| <= 1e-5 + 1e-4 * |b|,
integers and bools exact. Cases avoid ill-conditioned results (denominators |x| >= 0.5, positive
bases for fractional powers, ...).
"""

import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

N = helper.make_node
CASES = []
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)
FMIN = float(np.finfo(np.float32).min)


# --------------------------------------------------------------------------------------------------
# helpers


class Rand:
    """Seeded random data; every family function makes its own with a fixed seed."""

    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def n(self, *shape, scale=1.0):
        """Standard normal float32 (times scale)."""
        return (self.g.standard_normal(shape) * scale).astype(np.float32)

    def u(self, lo, hi, *shape):
        """Uniform float32 in [lo, hi)."""
        return self.g.uniform(lo, hi, shape).astype(np.float32)

    def away(self, *shape):
        """float32 with 0.5 <= |x| < 2 and random sign: safe denominators."""
        mag = self.g.uniform(0.5, 2.0, shape)
        sign = np.where(self.g.random(shape) < 0.5, -1.0, 1.0)
        return (mag * sign).astype(np.float32)

    def i(self, lo, hi, *shape, dtype=np.int64):
        """Integers in [lo, hi)."""
        return self.g.integers(lo, hi, shape).astype(dtype)

    def b(self, *shape):
        return self.g.random(shape) < 0.5


def f32(v):
    return np.array(v, np.float32)


def i64(v):
    return np.array(v, np.int64)


def ir_for(opset):
    """The IR version released with the opset (onnx.helper.VERSION_TABLE)."""
    return 8 if opset <= 18 else 9 if opset <= 20 else 10


def case(name, nodes, inputs, inits=None, opset=13, outputs=None, note="", op=None, dims=None):
    """Registers a test case.

    nodes: a NodeProto or a list of them. inputs: {graph input name: ndarray} (order kept).
    inits: {initializer name: ndarray or TensorProto}. outputs: graph output names (default: the
    non-empty outputs of the last node). dims: {input name: [dims]} to declare symbolic dims
    (dim_param) instead of the concrete shape of the array.
    """
    nodes = [nodes] if isinstance(nodes, onnx.NodeProto) else list(nodes)
    if op is None:
        op = nodes[0].op_type if len({n.op_type for n in nodes}) == 1 else "Subgraph"
    CASES.append(
        dict(
            name=name,
            nodes=nodes,
            inputs=dict(inputs),
            inits=dict(inits or {}),
            opset=opset,
            outputs=outputs or [o for o in nodes[-1].output if o],
            note=note or "plain case, default attributes",
            op=op,
            dims=dims or {},
        )
    )


def build_model(c):
    graph_inputs = []
    for name, arr in c["inputs"].items():
        shape = c["dims"].get(name, list(arr.shape))
        graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), shape))
    inits = []
    for name, v in c["inits"].items():
        if isinstance(v, onnx.TensorProto):
            assert v.name == name, (v.name, name)
            inits.append(v)
        else:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
    outputs = [helper.make_empty_tensor_value_info(o) for o in c["outputs"]]
    graph = helper.make_graph(c["nodes"], c["name"], graph_inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", c["opset"])],
        ir_version=ir_for(c["opset"]),
        producer_name="zeropoint-op_cases",
    )
    # Let ONNX shape inference type the graph outputs; keep only those, not intermediate value_info.
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    del model.graph.value_info[:]
    for o in model.graph.output:
        if not o.type.tensor_type.elem_type:
            raise ValueError(f"shape inference gave output {o.name} no type")
    return model


def run_ort(model, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def fix_output_shapes(model, results):
    """Makes the declared output types agree with what onnxruntime returned.

    The element type must match. An output that shape inference left without a shape (e.g. Reshape by
    a runtime shape), or whose inferred shape disagrees with onnxruntime, is declared with its rank
    only (unknown dims). Returns the names of the outputs whose inferred shape disagreed.
    """
    dropped = []
    for o, r in zip(model.graph.output, results):
        tt = o.type.tensor_type
        want = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.dtype(want) != r.dtype:
            raise ValueError(f"output {o.name}: inferred dtype {want}, onnxruntime gave {r.dtype}")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if len(dims) == r.ndim and all(
                not d.HasField("dim_value") or d.dim_value == s for d, s in zip(dims, r.shape)
            ):
                continue
            dropped.append(o.name)
        tt.ClearField("shape")
        tt.shape.SetInParent()
        for _ in range(r.ndim):
            tt.shape.dim.add()
    return dropped


def write_npz(path, arrays):
    """np.savez-compatible archive with fixed member timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# CNN operators


def conv_cases():
    r = Rand(101)
    case("Conv_basic", N("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3]), {"x": r.n(1, 3, 8, 8)},
         {"w": r.n(4, 3, 3, 3), "b": r.n(4)}, note="3x3, no pads, bias, kernel_shape attribute present")
    case("Conv_nobias_nokshape", N("Conv", ["x", "w"], ["y"]), {"x": r.n(2, 3, 6, 6)}, {"w": r.n(2, 3, 3, 3)},
         note="no bias input; kernel_shape absent (taken from W); batch 2")
    case("Conv_pads_asym_strides", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1]),
         {"x": r.n(1, 3, 7, 6)}, {"w": r.n(4, 3, 3, 3), "b": r.n(4)},
         note="pads [h_begin, w_begin, h_end, w_end] = [1,0,2,1]; strides differ per axis")
    case("Conv_group2", N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1]), {"x": r.n(1, 4, 6, 6)},
         {"w": r.n(6, 2, 3, 3), "b": r.n(6)}, note="group=2: W [6,2,3,3], each group maps 2 channels to 3")
    case("Conv_depthwise", N("Conv", ["x", "w", "b"], ["y"], group=4, pads=[1, 1, 1, 1], strides=[2, 2]),
         {"x": r.n(1, 4, 7, 7)}, {"w": r.n(4, 1, 3, 3), "b": r.n(4)}, note="depthwise: group = C = M = 4, stride 2")
    case("Conv_depthwise_mult2", N("Conv", ["x", "w"], ["y"], group=3, pads=[1, 1, 1, 1]), {"x": r.n(2, 3, 5, 5)},
         {"w": r.n(6, 1, 3, 3)}, note="group = C = 3, channel multiplier 2 (M = 6)")
    case("Conv_same_upper", N("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]),
         {"x": r.n(1, 2, 6, 6)}, {"w": r.n(3, 2, 3, 3), "b": r.n(3)},
         note="auto_pad SAME_UPPER, stride 2: total pad 1 is odd, the extra goes at the end")
    case("Conv_same_lower", N("Conv", ["x", "w", "b"], ["y"], auto_pad="SAME_LOWER", strides=[2, 2]),
         {"x": r.n(1, 2, 6, 6)}, {"w": r.n(3, 2, 3, 3), "b": r.n(3)},
         note="auto_pad SAME_LOWER, stride 2: total pad 1 is odd, the extra goes at the beginning")
    case("Conv_same_upper_k4", N("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER"), {"x": r.n(1, 2, 5, 6)},
         {"w": r.n(2, 2, 4, 4)}, note="even kernel 4, stride 1, SAME_UPPER: pads (1, 2) per axis")
    case("Conv_valid", N("Conv", ["x", "w", "b"], ["y"], auto_pad="VALID", strides=[2, 2]), {"x": r.n(1, 2, 7, 8)},
         {"w": r.n(3, 2, 3, 3), "b": r.n(3)}, note="auto_pad VALID (no padding), stride 2, leftover columns dropped")
    case("Conv_dilations", N("Conv", ["x", "w", "b"], ["y"], dilations=[2, 1], strides=[1, 2], pads=[2, 1, 2, 1]),
         {"x": r.n(1, 2, 9, 9)}, {"w": r.n(2, 2, 3, 3), "b": r.n(2)}, note="dilations [2,1], strides [1,2], pads")
    case("Conv_1d", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 2], strides=[2]), {"x": r.n(2, 3, 10)},
         {"w": r.n(5, 3, 3), "b": r.n(5)}, note="1-D conv on NCW input, asymmetric pads [1,2], stride 2")
    case("Conv_1d_same_lower", N("Conv", ["x", "w"], ["y"], auto_pad="SAME_LOWER", strides=[2]),
         {"x": r.n(1, 2, 9)}, {"w": r.n(3, 2, 4)}, note="1-D, kernel 4 stride 2 SAME_LOWER: pads (2, 1)")
    case("Conv_1d_dilated", N("Conv", ["x", "w"], ["y"], dilations=[2], pads=[2, 2]),
         {"x": r.n(1, 2, 9)}, {"w": r.n(3, 2, 3)}, note="1-D, dilation 2 (effective kernel 5), explicit pads")
    case("Conv_1d_stft", N("Conv", ["x", "w"], ["y"], strides=[16]), {"x": r.n(2, 1, 200)},
         {"w": r.n(9, 1, 32)}, note="1-D, kernel 32 stride 16: an STFT as a convolution (only output positions computed)")
    case("Conv_depthwise_strides", N("Conv", ["x", "w"], ["y"], group=3, strides=[1, 3], pads=[1, 1, 1, 1]),
         {"x": r.n(1, 3, 6, 10)}, {"w": r.n(3, 1, 3, 3)}, note="depthwise with unequal strides [1, 3]")
    case("Conv_1x1", N("Conv", ["x", "w", "b"], ["y"]), {"x": r.n(1, 3, 4, 5)}, {"w": r.n(8, 3, 1, 1), "b": r.n(8)},
         note="pointwise 1x1 conv")
    case("Conv_3d", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 0, 1, 1, 0, 1]), {"x": r.n(1, 2, 4, 4, 4)},
         {"w": r.n(2, 2, 2, 2, 2), "b": r.n(2)}, note="3-D conv (NCDHW) with mixed pads")
    case("Conv_weight_input", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
         {"x": r.n(1, 2, 5, 5), "w": r.n(3, 2, 3, 3), "b": r.n(3)}, note="weights and bias as graph inputs")
    case("Conv_opset11", N("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 0, 1]), {"x": r.n(1, 2, 5, 5)},
         {"w": r.n(3, 2, 3, 3), "b": r.n(3)}, opset=11, note="Conv-11 signature")
    case("Conv_opset22", N("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": r.n(1, 2, 6, 6)}, {"w": r.n(3, 2, 3, 3), "b": r.n(3)}, opset=22, note="Conv-22 signature")
    # 64 channels · 3x3 = 576 patch rows: zeropoint's float path cuts each image's output positions
    # into tiles of 128, which here cross output rows and the padding. Weights are scaled by
    # 1/sqrt(576) as trained ones are: outputs near 1, where the 1e-5 tolerance is float rounding.
    case("Conv_tiles_pad", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]), {"x": r.n(2, 64, 20, 21)},
         {"w": r.n(8, 64, 3, 3, scale=1 / 24), "b": r.n(8)}, note="K = 576: 4 tiles of output positions per image, padded")
    case("Conv_tiles_stride_dilation", N("Conv", ["x", "w"], ["y"], pads=[3, 3, 3, 3], strides=[2, 2],
                                         dilations=[2, 2]),
         {"x": r.n(1, 64, 31, 37)}, {"w": r.n(6, 64, 3, 3, scale=1 / 24)},
         note="K = 576, pad 3 > dilated tap offsets, stride 2: 3 tiles with zeros at both edges")
    case("Conv_tiles_pointwise", N("Conv", ["x", "w"], ["y"]), {"x": r.n(1, 600, 12, 13)},
         {"w": r.n(5, 600, 1, 1, scale=1 / 24)},
         note="1x1 over 600 channels: 2 tiles read straight from the input")
    case("Conv_tiles_group", N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1]),
         {"x": r.n(1, 128, 15, 16)}, {"w": r.n(6, 64, 3, 3, scale=1 / 24), "b": r.n(6)},
         note="2 groups of 64 channels (strided views of the input), 2 tiles each")
    # 3x3 stride-1 convolutions of 12+ channels and 64+ output tiles of 2x2 go through Winograd's
    # F(2x2, 3x3) on AVX-512 CPUs: odd sizes (a last tile half outside), pads 0-2, asymmetric
    # pads (cropped/padded first), groups of 16, and a row wide enough to be cut into pieces.
    case("Conv_winograd_pad1_odd", N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]), {"x": r.n(2, 16, 17, 19)},
         {"w": r.n(24, 16, 3, 3, scale=1 / 12), "b": r.n(24)}, note="Winograd: 9x10 tiles, odd output sizes")
    case("Conv_winograd_pad0", N("Conv", ["x", "w"], ["y"]), {"x": r.n(1, 20, 20, 20)},
         {"w": r.n(12, 20, 3, 3, scale=1 / 13)}, note="Winograd: no padding, 18x18 outputs")
    case("Conv_winograd_pad2", N("Conv", ["x", "w", "b"], ["y"], pads=[2, 2, 2, 2]), {"x": r.n(1, 16, 14, 15)},
         {"w": r.n(16, 16, 3, 3, scale=1 / 12), "b": r.n(16)}, note="Winograd: pad 2 (outputs larger than the input)")
    case("Conv_winograd_pads_asym", N("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1]), {"x": r.n(1, 16, 16, 16)},
         {"w": r.n(16, 16, 3, 3, scale=1 / 12)}, note="Winograd after asymmetric pads")
    case("Conv_winograd_groups", N("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1]),
         {"x": r.n(1, 32, 16, 16)}, {"w": r.n(32, 16, 3, 3, scale=1 / 12), "b": r.n(32)},
         note="Winograd per group of 16 channels")
    case("Conv_winograd_wide_rows", N("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), {"x": r.n(1, 96, 2, 200)},
         {"w": r.n(96, 96, 3, 3, scale=1 / 29)}, note="Winograd: rows of 100 tiles cut into pieces of 50")
    case("Conv_1d_dilated_wide", N("Conv", ["x", "w", "b"], ["y"], dilations=[64], pads=[64, 64]),
         {"x": r.n(1, 2, 300)}, {"w": r.n(3, 2, 3), "b": r.n(3)},
         note="1-D, dilation 64 (effective kernel 129): a dilated TCN's wide layer")
    case("Conv_1xk_dilations_per_axis", N("Conv", ["x", "w"], ["y"], dilations=[3, 4], pads=[0, 4, 0, 4]),
         {"x": r.n(1, 2, 5, 20)}, {"w": r.n(2, 2, 1, 3)},
         note="1x3 kernel, dilations [3, 4]: the height's dilation moves no tap")


def conv_transpose_cases():
    r = Rand(102)
    ct = "ConvTranspose"
    case("ConvTranspose_basic", N(ct, ["x", "w", "b"], ["y"], strides=[2, 2]), {"x": r.n(1, 3, 4, 4)},
         {"w": r.n(3, 2, 3, 3), "b": r.n(2)}, note="W is [C_in, C_out/group, kH, kW]; stride 2: out 9x9")
    case("ConvTranspose_pads_outpad", N(ct, ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                                        output_padding=[1, 1]),
         {"x": r.n(1, 3, 4, 4)}, {"w": r.n(3, 2, 3, 3), "b": r.n(2)}, note="pads 1 and output_padding 1: out 8x8")
    case("ConvTranspose_output_shape", N(ct, ["x", "w"], ["y"], strides=[2, 2], output_shape=[6, 7]),
         {"x": r.n(1, 2, 3, 3)}, {"w": r.n(2, 3, 3, 3)},
         note="output_shape [6,7] instead of pads: total pad 1 on H, 0 on W; auto_pad NOTSET puts the odd "
              "extra pad at the BEGINNING (pads = [1,0,0,0]), as the spec says")
    case("ConvTranspose_output_shape_even", N(ct, ["x", "w", "b"], ["y"], strides=[2, 2], output_shape=[5, 5]),
         {"x": r.n(1, 2, 3, 3)}, {"w": r.n(2, 3, 3, 3), "b": r.n(3)},
         note="output_shape [5,5]: total pad 2 per axis, split 1/1")
    case("ConvTranspose_dilations", N(ct, ["x", "w"], ["y"], dilations=[2, 2]), {"x": r.n(1, 2, 4, 4)},
         {"w": r.n(2, 2, 3, 3)}, note="dilations 2: effective kernel 5, out 8x8")
    case("ConvTranspose_group2", N(ct, ["x", "w"], ["y"], group=2, strides=[2, 1], pads=[0, 1, 1, 0]),
         {"x": r.n(1, 4, 3, 3)}, {"w": r.n(4, 3, 3, 3)},
         note="group=2: W [4,3,3,3] gives 6 output channels; strides [2,1]; asymmetric pads")
    case("ConvTranspose_depthwise", N(ct, ["x", "w", "b"], ["y"], group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": r.n(1, 3, 4, 4)}, {"w": r.n(3, 1, 4, 4), "b": r.n(3)}, note="group = C = 3, kernel 4 stride 2")
    case("ConvTranspose_same_upper", N(ct, ["x", "w", "b"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2]),
         {"x": r.n(1, 2, 3, 3)}, {"w": r.n(2, 2, 3, 3), "b": r.n(2)},
         note="auto_pad SAME_UPPER, stride 2: out = in*stride = 6; total pad 1 is odd, extra at the END")
    case("ConvTranspose_1d", N(ct, ["x", "w", "b"], ["y"], strides=[3], pads=[1, 2]), {"x": r.n(1, 2, 5)},
         {"w": r.n(2, 3, 4), "b": r.n(3)}, note="1-D, stride 3 > kernel-1 overlap pattern, pads [1,2]")
    case("ConvTranspose_kshape_s1", N(ct, ["x", "w"], ["y"], kernel_shape=[2, 3], pads=[0, 1, 1, 0]),
         {"x": r.n(2, 3, 4, 5)}, {"w": r.n(3, 2, 2, 3)}, note="stride 1, kernel_shape attribute, asymmetric pads")
    case("ConvTranspose_opset11", N(ct, ["x", "w", "b"], ["y"], strides=[2, 2], output_padding=[1, 0]),
         {"x": r.n(1, 2, 3, 3)}, {"w": r.n(2, 2, 2, 2), "b": r.n(2)}, opset=11,
         note="opset 11, output_padding only on H")
    case("ConvTranspose_empty_batch_groups", N(ct, ["x", "w", "b"], ["y"], group=3, strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": r.n(0, 3, 4, 5)}, {"w": r.n(3, 1, 4, 4), "b": r.n(3)},
         note="a batch of 0 with groups: an empty [0,3,8,10] (candle's grouped kernel indexed past it; fuzz find)")
    case("ConvTranspose_dilations_per_axis", N(ct, ["x", "w", "b"], ["y"], strides=[3, 2], dilations=[1, 2],
                                               pads=[0, 2, 1, 0]),
         {"x": r.n(2, 2, 4, 5)}, {"w": r.n(2, 3, 2, 3), "b": r.n(3)},
         note="dilation 2 on W only; stride 3 > kernel 2 on H leaves rows no tap reaches (bias only)")
    case("ConvTranspose_upsample_k2s2", N(ct, ["x", "w", "b"], ["y"], strides=[2, 2], kernel_shape=[2, 2]),
         {"x": r.n(1, 24, 12, 16)}, {"w": r.n(24, 24, 2, 2), "b": r.n(24)},
         note="the DB text detectors' upsampling head (ppocr-v3-det): kernel 2, stride 2, no overlap")


def gemm_cases():
    r = Rand(103)
    case("Gemm_C_N", N("Gemm", ["a", "b", "c"], ["y"]), {"a": r.n(3, 4)}, {"b": r.n(4, 5), "c": r.n(5)},
         note="C of shape [N] broadcast over rows")
    case("Gemm_transA_transB_alpha_beta", N("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=2.0),
         {"a": r.n(4, 3)}, {"b": r.n(5, 4), "c": r.n(3, 5)}, note="transA, transB, alpha 0.5, beta 2, C [M,N]")
    case("Gemm_C_1", N("Gemm", ["a", "b", "c"], ["y"], beta=0.5), {"a": r.n(3, 4)}, {"b": r.n(4, 5), "c": r.n(1)},
         note="C of shape [1] broadcast to [M,N], beta 0.5")
    case("Gemm_C_M1", N("Gemm", ["a", "b", "c"], ["y"]), {"a": r.n(3, 4)}, {"b": r.n(4, 5), "c": r.n(3, 1)},
         note="C of shape [M,1] broadcast over columns")
    case("Gemm_C_scalar", N("Gemm", ["a", "b", "c"], ["y"]), {"a": r.n(3, 4)}, {"b": r.n(4, 5), "c": f32(0.75)},
         note="C is a 0-d scalar")
    case("Gemm_noC", N("Gemm", ["a", "b"], ["y"]), {"a": r.n(3, 4)}, {"b": r.n(4, 5)}, note="no C (optional since 11)")
    case("Gemm_noC_alpha_transA", N("Gemm", ["a", "b"], ["y"], alpha=2.5, transA=1), {"a": r.n(4, 3)},
         {"b": r.n(4, 5)}, note="no C, alpha 2.5, transA")
    case("Gemm_fc_transB", N("Gemm", ["a", "w", "b"], ["y"], transB=1), {"a": r.n(2, 8)}, {"w": r.n(6, 8), "b": r.n(6)},
         note="the PyTorch Linear layout: W [out,in] with transB=1, bias [out]")
    case("Gemm_fc_transB_wide", N("Gemm", ["a", "w", "b"], ["y"], transB=1), {"a": r.n(9, 70)},
         {"w": r.n(37, 70), "b": r.n(37)}, note="transB with k 70: whole 16-lane chunks, a tail, edge rows and columns")
    case("Gemm_all_inputs", N("Gemm", ["a", "b", "c"], ["y"], transB=1, beta=-1.0),
         {"a": r.n(3, 4), "b": r.n(5, 4), "c": r.n(5)}, note="A, B and C all graph inputs; beta -1")
    case("Gemm_opset11", N("Gemm", ["a", "b", "c"], ["y"], alpha=0.25), {"a": r.n(2, 3)}, {"b": r.n(3, 4), "c": r.n(4)},
         opset=11, note="Gemm-11")


def matmul_cases():
    r = Rand(104)
    mm = lambda: N("MatMul", ["a", "b"], ["y"])
    case("MatMul_2d", mm(), {"a": r.n(3, 4)}, {"b": r.n(4, 5)}, note="plain 2-D, B initializer")
    case("MatMul_2d_inputs", mm(), {"a": r.n(3, 4), "b": r.n(4, 5)}, note="both operands graph inputs")
    case("MatMul_3d", mm(), {"a": r.n(2, 3, 4), "b": r.n(2, 4, 5)}, note="batched 3-D")
    case("MatMul_4d_bcast", mm(), {"a": r.n(2, 1, 3, 4), "b": r.n(3, 4, 5)},
         note="batch dims [2,1] and [3] broadcast to [2,3]")
    case("MatMul_3d_x_2d", mm(), {"a": r.n(2, 3, 4)}, {"b": r.n(4, 5)}, note="3-D times a 2-D weight")
    case("MatMul_1d_2d", mm(), {"a": r.n(4), "b": r.n(4, 5)}, note="1-D first operand: prepended 1 removed, out [5]")
    case("MatMul_2d_1d", mm(), {"a": r.n(3, 4), "b": r.n(4)}, note="1-D second operand: appended 1 removed, out [3]")
    case("MatMul_1d_3d", mm(), {"a": r.n(4), "b": r.n(2, 4, 5)}, note="1-D times batched: out [2,5]")
    case("MatMul_1d_1d", mm(), {"a": r.n(4), "b": r.n(4)}, note="dot product: 0-d output")
    case("MatMul_int64", mm(), {"a": r.i(-5, 5, 2, 3), "b": r.i(-5, 5, 3, 4)}, note="int64 matmul")


def batchnorm_cases():
    r = Rand(105)

    def params(c):
        return {"s": r.n(c), "bias": r.n(c), "mean": r.n(c), "var": r.u(0.5, 2.0, c)}

    bn = lambda **kw: N("BatchNormalization", ["x", "s", "bias", "mean", "var"], ["y"], **kw)
    case("BatchNormalization_opset9", bn(), {"x": r.n(2, 3, 4, 4)}, params(3), opset=9,
         note="BatchNormalization-9 (no spatial attribute), default epsilon 1e-5")
    case("BatchNormalization_opset15_eps", bn(epsilon=1e-3, momentum=0.8), {"x": r.n(2, 3, 4, 4)}, params(3),
         opset=15, note="epsilon 1e-3; momentum is ignored in inference")
    case("BatchNormalization_opset14_training0", bn(training_mode=0), {"x": r.n(1, 4, 3, 3)}, params(4),
         opset=14, note="training_mode=0 given explicitly")
    case("BatchNormalization_2d", bn(), {"x": r.n(5, 3)}, params(3), opset=15, note="[N,C] input (no spatial dims)")
    case("BatchNormalization_3d", bn(), {"x": r.n(2, 3, 5)}, params(3), opset=13, note="[N,C,L] input")


def activation_cases():
    r = Rand(106)
    u = lambda op, **kw: N(op, ["x"], ["y"], **kw)
    case("Relu_basic", u("Relu"), {"x": r.n(2, 3, 4)})
    case("Relu_opset14_int8", u("Relu"), {"x": r.i(-100, 100, 3, 4, dtype=np.int8)}, opset=14,
         note="Relu-14 on int8")
    case("Relu_opset14_int32", u("Relu"), {"x": r.i(-100, 100, 3, 4, dtype=np.int32)}, opset=14,
         note="Relu-14 on int32")
    case("LeakyRelu_default", u("LeakyRelu"), {"x": r.n(2, 3, 4)}, note="alpha defaults to 0.01")
    case("LeakyRelu_alpha", u("LeakyRelu", alpha=0.2), {"x": r.n(2, 3, 4)}, note="alpha 0.2")
    case("LeakyRelu_opset16", u("LeakyRelu", alpha=0.1), {"x": r.n(2, 5)}, opset=16, note="LeakyRelu-16")
    case("PRelu_per_channel", N("PRelu", ["x", "slope"], ["y"]), {"x": r.n(2, 3, 4, 4)}, {"slope": r.n(3, 1, 1)},
         note="slope [C,1,1] broadcast over NCHW")
    case("PRelu_scalar", N("PRelu", ["x", "slope"], ["y"]), {"x": r.n(2, 3, 4)}, {"slope": f32([0.25])},
         note="slope of shape [1]")
    case("PRelu_last_axis", N("PRelu", ["x", "slope"], ["y"]), {"x": r.n(2, 3, 4)}, {"slope": r.n(4)}, opset=16,
         note="slope [4] broadcast along the last axis (unidirectional), opset 16")
    # NaN stays NaN and ±∞ saturates as ONNX Runtime has it: a broken input must not come out
    # of an activation looking like a plausible value (x − relu(x) at +∞ is NaN, not +∞).
    special = f32([[np.nan, np.inf, -np.inf, -0.0], [0.0, -2.5, 3.0, 1e30]])
    for op, kw in [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Tanh", {}), ("Sigmoid", {}),
                   ("HardSigmoid", {}), ("HardSwish", {}), ("Softplus", {})]:
        case(f"{op}_special_values", u(op, **kw), {"x": special}, opset=14,
             note="NaN, ±inf, ±0 and a huge value")
    case("PRelu_special_values", N("PRelu", ["x", "slope"], ["y"]), {"x": special}, {"slope": f32([0.25])},
         note="NaN, ±inf, ±0 and a huge value")
    case("Clip_special_values", N("Clip", ["x", "lo", "hi"], ["y"]), {"x": special},
         {"lo": f32(0.0), "hi": f32(6.0)}, note="ReLU6 on NaN, ±inf, ±0")
    case("Sigmoid_basic", u("Sigmoid"), {"x": r.n(2, 3, 4, scale=3.0)})
    case("Tanh_basic", u("Tanh"), {"x": r.n(2, 3, 4, scale=2.0)})
    case("HardSigmoid_default", u("HardSigmoid"), {"x": r.n(3, 8, scale=3.0)},
         note="defaults alpha 0.2, beta 0.5; inputs reach both clamps")
    case("HardSigmoid_set", u("HardSigmoid", alpha=1.0 / 6, beta=0.5), {"x": r.n(3, 8, scale=3.0)},
         note="alpha 1/6, beta 0.5 (the HardSwish form)")
    case("HardSwish_basic", u("HardSwish"), {"x": r.n(3, 8, scale=3.0)}, opset=14, note="x*max(0,min(1,x/6+0.5))")
    x = r.n(3, 8, scale=4.0)
    case("Clip_min_max", N("Clip", ["x", "lo", "hi"], ["y"]), {"x": x}, {"lo": f32(-1.0), "hi": f32(2.0)},
         note="min and max as 0-d initializer inputs (Clip-11+)")
    case("Clip_min_only", N("Clip", ["x", "lo"], ["y"]), {"x": x}, {"lo": f32(-0.5)}, note="max omitted")
    case("Clip_max_only", N("Clip", ["x", "", "hi"], ["y"]), {"x": x}, {"hi": f32(1.5)},
         note="min given as empty name, max only")
    case("Clip_none", N("Clip", ["x"], ["y"]), {"x": x}, note="neither min nor max: identity")
    case("Clip_relu6", N("Clip", ["x", "lo", "hi"], ["y"]), {"x": x}, {"lo": f32(0.0), "hi": f32(6.0)}, opset=11,
         note="ReLU6 as exported at opset 11")
    case("Clip_inputs", N("Clip", ["x", "lo", "hi"], ["y"]), {"x": x, "lo": f32(-2.0), "hi": f32(0.5)},
         note="min/max as 0-d graph inputs")
    case("Clip_min_gt_max", N("Clip", ["x", "lo", "hi"], ["y"]), {"x": x}, {"lo": f32(1.0), "hi": f32(-1.0)},
         note="min > max: every value becomes max")
    case("Clip_opset6_attrs", N("Clip", ["x"], ["y"], min=-0.5, max=0.5), {"x": x}, opset=6,
         note="Clip-6: min/max attributes")


def unary_cases():
    r = Rand(107)
    u = lambda op: N(op, ["x"], ["y"])
    case("Sqrt_basic", u("Sqrt"), {"x": r.u(0.05, 4.0, 2, 3, 4)}, note="positive inputs")
    case("Exp_basic", u("Exp"), {"x": r.n(2, 3, 4, scale=2.0)})
    case("Neg_float", u("Neg"), {"x": r.n(2, 3, 4)})
    case("Neg_int64", u("Neg"), {"x": r.i(-1000, 1000, 3, 4)}, note="int64")
    case("Abs_float", u("Abs"), {"x": r.n(2, 3, 4)})
    case("Abs_int32", u("Abs"), {"x": r.i(-1000, 1000, 3, 4, dtype=np.int32)}, note="int32")
    case("Erf_basic", u("Erf"), {"x": r.n(2, 3, 4, scale=1.5)})
    case("Identity_float", u("Identity"), {"x": r.n(2, 3)})
    case("Identity_int64", u("Identity"), {"x": r.i(-5, 5, 4)}, note="int64")
    case("Identity_opset21", u("Identity"), {"x": r.n(3, 2)}, opset=21, note="Identity-21")
    case("Not_basic", u("Not"), {"x": r.b(3, 4)}, note="bool")
    special = f32([[0.5, np.nan, np.inf], [-np.inf, -2.0, np.nan]])
    case("IsNaN_basic", u("IsNaN"), {"x": special}, note="NaN and ±Inf among finite values")
    case("IsInf_basic", u("IsInf"), {"x": special}, opset=20)
    case("IsInf_negative_only", N("IsInf", ["x"], ["y"], detect_positive=0), {"x": special}, opset=20,
         note="detect_positive=0")
    case("Atan_basic", u("Atan"), {"x": r.n(2, 3, 4, scale=3.0)}, note="wide range: both asymptotes")


def softmax_cases():
    r = Rand(108)
    for op in ("Softmax", "LogSoftmax"):
        sm = lambda **kw: N(op, ["x"], ["y"], **kw)
        case(f"{op}_opset11_default", sm(), {"x": r.n(2, 3, 4)}, opset=11,
             note="opset 11: default axis 1 means coerce [2,3,4] to 2-D [2,12] and normalize rows of 12")
        case(f"{op}_opset11_axis0", sm(axis=0), {"x": r.n(2, 3, 4)}, opset=11,
             note="opset 11 axis 0: the whole tensor is one row")
        case(f"{op}_opset11_axis2", sm(axis=2), {"x": r.n(2, 3, 4)}, opset=11, note="opset 11 axis = last")
        case(f"{op}_opset11_neg", sm(axis=-2), {"x": r.n(2, 3, 4)}, opset=11,
             note="opset 11 axis -2: coerce to [2,12]")
        case(f"{op}_opset13_default", sm(), {"x": r.n(2, 3, 4)}, note="opset 13: default axis -1")
        case(f"{op}_opset13_axis1", sm(axis=1), {"x": r.n(2, 3, 4)},
             note="opset 13 axis 1 on 3-D: per-axis (differs from opset 11)")
        case(f"{op}_opset13_neg2", sm(axis=-2), {"x": r.n(2, 3, 4)}, note="negative axis -2, per-axis")
    case("Softmax_attention_axis1", N("Softmax", ["x"], ["y"], axis=1), {"x": r.n(2, 4, 3, 3, scale=2.0)},
         note="axis 1 of a 4-D [B,H,S,S] tensor (opset 13 per-axis)")
    case("Softmax_attention_last", N("Softmax", ["x"], ["y"], axis=-1), {"x": r.n(2, 2, 5, 5, scale=2.0)},
         note="attention scores, last axis")
    case("Softmax_opset11_attention", N("Softmax", ["x"], ["y"], axis=3), {"x": r.n(2, 2, 4, 4)}, opset=11,
         note="opset 11 4-D with axis 3 (= per last axis)")
    masked = r.n(3, 2, 37, scale=3.0)
    masked[1, :, 20:] = -200.0
    for op in ("Softmax", "LogSoftmax"):
        case(f"{op}_long_rows", N(op, ["x"], ["y"], axis=-1), {"x": masked},
             note="rows of 37: two blocks of 16 lanes and a tail; one batch masked with -200 (exp underflows)")
        special = f32([[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [-np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf],
                       [FMIN, 0.0, 88.0]])
        case(f"{op}_special_values", N(op, ["x"], ["y"], axis=-1), {"x": special},
             note="NaN and +inf make their rows NaN, -inf entries give 0 (their log -inf), an all -inf row NaN")


def pool_cases():
    r = Rand(109)
    mp = lambda outs=("y",), **kw: N("MaxPool", ["x"], list(outs), **kw)
    case("MaxPool_k2s2", mp(kernel_shape=[2, 2], strides=[2, 2]), {"x": r.n(1, 2, 6, 6)}, opset=12)
    case("MaxPool_k3s2p1", mp(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), {"x": r.n(1, 2, 7, 7)},
         opset=12, note="ResNet stem pooling: pads are -inf")
    case("MaxPool_ceil", mp(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), {"x": r.n(1, 2, 6, 6)}, opset=12,
         note="ceil_mode 1: (6-3)/2+1 rounds up to 3, last window partial")
    case("MaxPool_ceil_pads", mp(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
         {"x": r.n(1, 1, 6, 6)}, opset=12, note="ceil_mode with pads")
    case("MaxPool_dilations", mp(kernel_shape=[2, 2], dilations=[2, 2]), {"x": r.n(1, 2, 7, 7)}, opset=12,
         note="dilations 2, stride 1")
    case("MaxPool_same_upper", mp(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
         {"x": r.n(1, 2, 6, 6)}, opset=12, note="SAME_UPPER: out 3, total pad 1, extra at the end")
    case("MaxPool_1d", mp(kernel_shape=[3], strides=[2]), {"x": r.n(2, 3, 9)}, opset=12, note="1-D NCW")
    case("MaxPool_nonsquare", mp(kernel_shape=[2, 3], strides=[1, 2], pads=[0, 1, 1, 0]), {"x": r.n(1, 2, 5, 6)},
         opset=12, note="kernel [2,3], strides [1,2], asymmetric pads")
    case("MaxPool_indices", mp(("y", "idx"), kernel_shape=[2, 2], strides=[2, 2]), {"x": r.n(2, 2, 4, 4)}, opset=12,
         note="second output Indices (int64, flat NCHW offsets, storage_order 0)")
    case("MaxPool_uint8", mp(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         {"x": r.i(0, 256, 1, 2, 5, 5, dtype=np.uint8)}, opset=12, note="uint8 (MaxPool-12)")
    case("MaxPool_int8", mp(kernel_shape=[2, 2], strides=[2, 2]), {"x": r.i(-128, 128, 1, 2, 4, 4, dtype=np.int8)},
         opset=12, note="int8 (MaxPool-12)")
    case("MaxPool_opset11", mp(kernel_shape=[2, 2], strides=[2, 2]), {"x": r.n(1, 1, 4, 6)}, opset=11)

    ap = lambda **kw: N("AveragePool", ["x"], ["y"], **kw)
    case("AveragePool_pads_exclude", ap(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), {"x": r.n(1, 2, 5, 5)},
         note="count_include_pad 0 (default): border windows divide by the valid count")
    case("AveragePool_pads_include", ap(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
         {"x": r.n(1, 2, 5, 5)}, note="count_include_pad 1: always divide by 9")
    case("AveragePool_asym_pads", ap(kernel_shape=[2, 2], pads=[0, 1, 1, 0], strides=[2, 2]), {"x": r.n(1, 1, 5, 5)},
         note="asymmetric pads, count_include_pad 0")
    case("AveragePool_ceil", ap(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), {"x": r.n(1, 2, 6, 6)},
         note="ceil_mode 1: last window runs past the input, divisor counts only real elements")
    case("AveragePool_ceil_pads_include", ap(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                             count_include_pad=1),
         {"x": r.n(1, 1, 6, 6)}, note="ceil_mode + pads + count_include_pad 1: divisor clipped at the padded edge")
    case("AveragePool_strides", ap(kernel_shape=[2, 3], strides=[2, 1]), {"x": r.n(2, 2, 6, 5)},
         note="kernel [2,3], strides [2,1]")
    case("AveragePool_1d", ap(kernel_shape=[4], strides=[2], pads=[1, 1]), {"x": r.n(1, 3, 9)}, note="1-D with pads")
    case("AveragePool_same_upper", ap(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
         {"x": r.n(1, 2, 6, 6)}, note="SAME_UPPER with count_include_pad 0")
    case("AveragePool_opset11", ap(kernel_shape=[2, 2], strides=[2, 2]), {"x": r.n(1, 2, 4, 4)}, opset=11)
    case("AveragePool_opset19_dilations", ap(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
         {"x": r.n(1, 2, 6, 6)}, opset=19, note="AveragePool-19 dilations, with pads (count_include_pad 0)")

    case("GlobalAveragePool_4d", N("GlobalAveragePool", ["x"], ["y"]), {"x": r.n(2, 3, 5, 4)}, note="out [2,3,1,1]")
    case("GlobalAveragePool_3d", N("GlobalAveragePool", ["x"], ["y"]), {"x": r.n(2, 3, 7)}, note="NCW: out [2,3,1]")
    case("GlobalMaxPool_4d", N("GlobalMaxPool", ["x"], ["y"]), {"x": r.n(2, 3, 5, 4)}, note="out [2,3,1,1]")
    case("GlobalMaxPool_3d", N("GlobalMaxPool", ["x"], ["y"]), {"x": r.n(1, 4, 6)}, note="NCW: out [1,4,1]")


def binary_cases():
    r = Rand(110)
    for op in ("Add", "Sub", "Mul", "Div"):
        b = (lambda *s: r.away(*s)) if op == "Div" else (lambda *s: r.n(*s))
        node = lambda: N(op, ["a", "b"], ["y"])
        case(f"{op}_same", node(), {"a": r.n(2, 3, 4), "b": b(2, 3, 4)}, note="same shapes")
        case(f"{op}_bcast_last", node(), {"a": r.n(2, 3, 4)}, {"b": b(4)}, note="[2,3,4] with [4]")
        case(f"{op}_bcast_col", node(), {"a": r.n(2, 3, 4), "b": b(3, 1)}, note="[2,3,4] with [3,1]")
        case(f"{op}_scalar", node(), {"a": r.n(2, 3, 4)}, {"b": b()}, note="[2,3,4] with a 0-d initializer")
    case("Add_bcast_both", N("Add", ["a", "b"], ["y"]), {"a": r.n(2, 1, 4), "b": r.n(3, 1)},
         note="[2,1,4] + [3,1] -> [2,3,4]: both sides broadcast")
    case("Sub_scalar_first", N("Sub", ["a", "b"], ["y"]), {"b": r.n(2, 3)}, {"a": f32(1.0)},
         note="0-d minus tensor (operand order)")
    case("Div_scalar_first", N("Div", ["a", "b"], ["y"]), {"b": r.away(2, 3)}, {"a": f32(3.0)},
         note="0-d divided by tensor")
    case("Add_int64", N("Add", ["a", "b"], ["y"]), {"a": r.i(-100, 100, 2, 3), "b": r.i(-100, 100, 3)},
         note="int64 with broadcasting")
    case("Sub_int64", N("Sub", ["a", "b"], ["y"]), {"a": r.i(-100, 100, 4), "b": i64(7)}, note="int64 minus 0-d")
    case("Mul_int32", N("Mul", ["a", "b"], ["y"]),
         {"a": r.i(-100, 100, 2, 3, dtype=np.int32), "b": r.i(-100, 100, 2, 1, dtype=np.int32)}, note="int32")
    case("Div_int64_trunc", N("Div", ["a", "b"], ["y"]),
         {"a": i64([7, -7, 7, -7, 1, -1, 0, 9, -9, 100]), "b": i64([2, 2, -2, -2, 3, 3, 5, -4, 4, -7])},
         note="int64 division truncates toward zero: -7/2 = -3 (not floor)")
    case("Div_int32_trunc", N("Div", ["a", "b"], ["y"]),
         {"a": r.i(-50, 50, 3, 4, dtype=np.int32), "b": np.array([3, -4, 5, -7], np.int32)},
         note="int32 truncating division with broadcasting")
    case("Add_opset14", N("Add", ["a", "b"], ["y"]), {"a": r.n(2, 3), "b": r.n(3)}, opset=14, note="Add-14")
    case("Mul_opset14_uint8", N("Mul", ["a", "b"], ["y"]),
         {"a": r.i(0, 16, 2, 3, dtype=np.uint8), "b": r.i(0, 16, 2, 3, dtype=np.uint8)}, opset=14,
         note="Mul-14 on uint8 (products < 256)")


def pow_cases():
    r = Rand(111)
    p = lambda: N("Pow", ["x", "e"], ["y"])
    case("Pow_tensor_exp", p(), {"x": r.u(0.5, 2.0, 2, 3), "e": r.n(2, 3)}, note="float exponent tensor, positive base")
    case("Pow_square", p(), {"x": r.n(2, 3, 4)}, {"e": f32(2.0)}, note="0-d exponent 2.0 (negative bases fine)")
    case("Pow_sqrt", p(), {"x": r.u(0.05, 4.0, 2, 3, 4)}, {"e": f32(0.5)}, note="exponent 0.5, positive base")
    case("Pow_neg_fractional", p(), {"x": r.u(0.5, 3.0, 3, 4)}, {"e": f32(-1.5)}, note="exponent -1.5")
    case("Pow_bcast", p(), {"x": r.u(0.5, 2.0, 2, 3, 4)}, {"e": r.u(-2.0, 2.0, 4)}, note="exponent [4] broadcast")
    case("Pow_int64_exp", p(), {"x": r.n(2, 4)}, {"e": i64([0, 1, 2, 3])},
         note="float base, int64 exponent (mixed T and T1), negative bases")
    case("Pow_int64_int64", p(), {"x": r.i(-3, 4, 2, 4), "e": r.i(0, 4, 2, 4)}, note="int64 ** int64")
    case("Pow_opset15_cube", p(), {"x": r.n(3, 3)}, {"e": f32(3.0)}, opset=15, note="Pow-15, exponent 3")
    case("Pow_int64_fractional", p(), {"x": i64([1, 4, 9, 16, 27])}, {"e": f32([0.5, 0.5, 0.5, 0.25, 1.5])},
         note="int64 base, fractional float exponents: computed in f64, truncated (candle has no integer log)")


def concat_cases():
    r = Rand(112)
    case("Concat_axis1", N("Concat", ["a", "b"], ["y"], axis=1), {"a": r.n(2, 3), "b": r.n(2, 4)})
    case("Concat_neg_axis", N("Concat", ["a", "b"], ["y"], axis=-1), {"a": r.n(2, 3, 2), "b": r.n(2, 3, 5)},
         note="axis -1")
    case("Concat_3inputs", N("Concat", ["a", "b", "c"], ["y"], axis=0), {"a": r.n(1, 3), "b": r.n(2, 3), "c": r.n(3, 3)},
         note="three inputs")
    case("Concat_empty_input", N("Concat", ["a", "b", "c"], ["y"], axis=1),
         {"a": r.n(2, 2, 4), "b": np.zeros((2, 0, 4), np.float32), "c": r.n(2, 3, 4)},
         note="middle input has 0 along the axis")
    case("Concat_int64", N("Concat", ["a", "b", "c"], ["y"], axis=0), {"a": i64([2, 3])}, {"b": i64([-1]), "c": i64([4])},
         note="int64 shape-vector concat, initializer mix")
    case("Concat_single", N("Concat", ["a"], ["y"], axis=0), {"a": r.n(2, 3)}, note="one input")
    case("Concat_opset11", N("Concat", ["a", "b"], ["y"], axis=-2), {"a": r.n(1, 2, 3), "b": r.n(1, 1, 3)}, opset=11,
         note="opset 11 negative axis")


def reshape_cases():
    r = Rand(113)
    rs = lambda **kw: N("Reshape", ["x", "shape"], ["y"], **kw)
    x = r.n(2, 3, 4)
    case("Reshape_zero_keep", rs(), {"x": x}, {"shape": i64([0, -1])}, note="0 copies the input dim, -1 inferred")
    case("Reshape_flat", rs(), {"x": x}, {"shape": i64([-1])}, note="-1 alone")
    case("Reshape_middle_infer", rs(), {"x": x}, {"shape": i64([2, -1, 2])}, note="-1 in the middle")
    case("Reshape_zero_multi", rs(), {"x": x}, {"shape": i64([0, 0, 2, 2])}, note="two 0s copy dims 0 and 1")
    case("Reshape_shape_input", rs(), {"x": x, "shape": i64([4, -1])}, note="shape as graph input (dynamic)")
    case("Reshape_to_scalar", rs(), {"x": f32([3.5])}, {"shape": np.zeros(0, np.int64)},
         note="empty shape tensor: [1] -> 0-d")
    case("Reshape_opset14_allowzero0", rs(allowzero=0), {"x": x}, {"shape": i64([0, 4, -1])}, opset=14,
         note="allowzero=0 given explicitly: 0 copies")
    case("Reshape_opset14_allowzero1", rs(allowzero=1), {"x": np.zeros((0, 3), np.float32)},
         {"shape": i64([3, 0])}, opset=14, note="allowzero=1: 0 is a real zero dim ([0,3] -> [3,0])")
    case("Reshape_opset21", rs(), {"x": x}, {"shape": i64([4, 0, -1])}, opset=21,
         note="Reshape-21; 0 at index 1 copies input dim 1 (3)")


def flatten_cases():
    r = Rand(114)
    x = r.n(2, 3, 4, 5)
    case("Flatten_axis0", N("Flatten", ["x"], ["y"], axis=0), {"x": x}, note="axis 0: [1, 120]")
    case("Flatten_default", N("Flatten", ["x"], ["y"]), {"x": x}, note="default axis 1: [2, 60]")
    case("Flatten_axis2", N("Flatten", ["x"], ["y"], axis=2), {"x": x}, note="[6, 20]")
    case("Flatten_neg", N("Flatten", ["x"], ["y"], axis=-1), {"x": x}, note="axis -1: [24, 5]")
    case("Flatten_opset11", N("Flatten", ["x"], ["y"], axis=-3), {"x": x}, opset=11, note="opset 11, axis -3")
    case("Flatten_int64", N("Flatten", ["x"], ["y"], axis=4), {"x": r.i(0, 9, 2, 3, 1, 2)}, note="axis = rank: [12,1]")


def transpose_cases():
    r = Rand(115)
    case("Transpose_default", N("Transpose", ["x"], ["y"]), {"x": r.n(2, 3, 4)}, note="no perm: reverse dims")
    case("Transpose_nchw_nhwc", N("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1]), {"x": r.n(1, 2, 3, 4)})
    case("Transpose_2d", N("Transpose", ["x"], ["y"]), {"x": r.n(3, 5)})
    case("Transpose_heads", N("Transpose", ["x"], ["y"], perm=[0, 2, 1, 3]), {"x": r.n(2, 5, 3, 4)},
         note="attention [B,S,H,D] -> [B,H,S,D]")
    case("Transpose_int64", N("Transpose", ["x"], ["y"], perm=[1, 0, 2]), {"x": r.i(0, 100, 2, 3, 2)})
    case("DepthToSpace_DCR", N("DepthToSpace", ["x"], ["y"], blocksize=2), {"x": r.n(2, 8, 3, 4)},
         note="default mode DCR: channels read as (b, b, C/b²)")
    case("DepthToSpace_CRD", N("DepthToSpace", ["x"], ["y"], blocksize=3, mode="CRD"), {"x": r.n(1, 18, 2, 3)},
         note="CRD: channels read as (C/b², b, b)")
    case("SpaceToDepth_basic", N("SpaceToDepth", ["x"], ["y"], blocksize=2), {"x": r.n(2, 3, 4, 6)},
         note="each 2x2 block of a channel becomes 4 channels")


def squeeze_cases():
    r = Rand(116)
    x = r.n(1, 3, 1, 4)
    case("Squeeze_opset11_axes", N("Squeeze", ["x"], ["y"], axes=[0, 2]), {"x": x}, opset=11, note="axes attribute")
    case("Squeeze_opset11_neg", N("Squeeze", ["x"], ["y"], axes=[-2]), {"x": x}, opset=11, note="negative axes attr")
    case("Squeeze_opset11_noaxes", N("Squeeze", ["x"], ["y"]), {"x": x}, opset=11, note="no axes: drop all 1s")
    case("Squeeze_opset13_axes", N("Squeeze", ["x", "axes"], ["y"]), {"x": x}, {"axes": i64([0, 2])},
         note="axes as an input (Squeeze-13)")
    case("Squeeze_opset13_neg", N("Squeeze", ["x", "axes"], ["y"]), {"x": x}, {"axes": i64([-4, -2])},
         note="negative axes input")
    case("Squeeze_opset13_noaxes", N("Squeeze", ["x"], ["y"]), {"x": x}, note="no axes input: drop all 1s")
    case("Squeeze_axes_input", N("Squeeze", ["x", "axes"], ["y"]), {"x": x, "axes": i64([2])},
         note="axes as graph input (dynamic)")
    case("Squeeze_to_scalar", N("Squeeze", ["x"], ["y"]), {"x": r.n(1, 1)}, note="[1,1] -> 0-d")
    case("Unsqueeze_opset11", N("Unsqueeze", ["x"], ["y"], axes=[0, 3]), {"x": r.n(3, 4)}, opset=11,
         note="axes attribute, axes refer to the output rank: [1,3,4,1]")
    case("Unsqueeze_opset11_neg", N("Unsqueeze", ["x"], ["y"], axes=[-1]), {"x": r.n(3, 4)}, opset=11,
         note="negative axis attr")
    case("Unsqueeze_opset13", N("Unsqueeze", ["x", "axes"], ["y"]), {"x": r.n(3, 4)}, {"axes": i64([1])},
         note="axes input (Unsqueeze-13)")
    case("Unsqueeze_opset13_unsorted_neg", N("Unsqueeze", ["x", "axes"], ["y"]), {"x": r.n(3, 4)},
         {"axes": i64([-1, 0])}, note="unsorted mixed-sign axes [-1,0]: [1,3,4,1]")
    case("Unsqueeze_scalar", N("Unsqueeze", ["x", "axes"], ["y"]), {"x": i64(5)}, {"axes": i64([0])},
         note="0-d int64 -> [1] (the shape-building idiom)")
    case("Unsqueeze_axes_input", N("Unsqueeze", ["x", "axes"], ["y"]), {"x": r.n(2, 3), "axes": i64([1, 2])},
         note="axes as graph input (dynamic)")


def pad_cases():
    r = Rand(117)
    case("Pad_constant", N("Pad", ["x", "pads", "cv"], ["y"], mode="constant"), {"x": r.n(2, 3)},
         {"pads": i64([0, 1, 1, 2]), "cv": f32(1.5)}, opset=11,
         note="pads [x1_begin, x2_begin, x1_end, x2_end]; constant_value 1.5")
    case("Pad_constant_default0", N("Pad", ["x", "pads"], ["y"]), {"x": r.n(2, 3)}, {"pads": i64([1, 0, 0, 1])},
         opset=11, note="mode and constant_value omitted: zeros")
    case("Pad_reflect", N("Pad", ["x", "pads"], ["y"], mode="reflect"), {"x": r.n(3, 4)},
         {"pads": i64([1, 2, 2, 1])}, opset=11, note="reflect (edge not repeated)")
    case("Pad_edge", N("Pad", ["x", "pads"], ["y"], mode="edge"), {"x": r.n(2, 3, 4)},
         {"pads": i64([0, 1, 2, 0, 2, 1])}, opset=11, note="edge, 3-D")
    case("Pad_negative_crop", N("Pad", ["x", "pads", "cv"], ["y"]), {"x": r.n(3, 5)},
         {"pads": i64([1, -1, 0, -2]), "cv": f32(-1.0)}, opset=11, note="negative pads crop; mixed with padding")
    case("Pad_crop_all", N("Pad", ["x", "pads"], ["y"]), {"x": r.n(2, 3)}, {"pads": i64([-2, -3, 0, 0])},
         note="both axes cropped away: a (0, 0) output (an empty view once panicked when read)")
    case("Pad_empty_then_cropped", N("Pad", ["x", "pads"], ["y"]), {"x": r.n(2, 3)}, {"pads": i64([-2, -1, 0, 0])},
         note="axis 0 cropped away, then axis 1 cropped: (0, 2)")
    case("Slice_of_an_empty_tensor", [N("Pad", ["x", "pads"], ["e"]), N("Slice", ["e", "st", "en", "ax"], ["y"])],
         {"x": r.n(2, 3)}, {"pads": i64([-2, 0, 0, 0]), "st": i64([1]), "en": i64([3]), "ax": i64([1])},
         note="a slice of the second axis of a (0, 3) tensor: (0, 2)")
    case("Pad_past_the_input", N("Pad", ["x", "pads"], ["y"]), {"x": r.n(2, 3)}, {"pads": i64([0, 4, 0, -5])},
         note="a pad and a crop that overlap the whole input: fill only, as ONNX Runtime does")
    case("Pad_huge_pad_cropped", N("Pad", ["x", "pads"], ["y"]), {"x": r.n(2, 3)},
         {"pads": i64([0, 1 << 40, 0, -(1 << 40)])}, note="a 2^40 pad cropped away again: 3 fill elements, no 2^40 block")
    case("Pad_nchw", N("Pad", ["x", "pads"], ["y"], mode="constant"), {"x": r.n(1, 2, 3, 3)},
         {"pads": i64([0, 0, 1, 2, 0, 0, 2, 1])}, opset=13, note="typical NCHW spatial pad")
    case("Pad_opset13_reflect", N("Pad", ["x", "pads"], ["y"], mode="reflect"), {"x": r.n(1, 2, 4, 4)},
         {"pads": i64([0, 0, 2, 1, 0, 0, 1, 3])}, opset=13, note="reflect on NCHW")
    case("Pad_int64", N("Pad", ["x", "pads", "cv"], ["y"]), {"x": r.i(0, 10, 2, 2)},
         {"pads": i64([1, 1, 1, 1]), "cv": i64(-7)}, opset=13, note="int64 data and constant_value")
    case("Pad_pads_input", N("Pad", ["x", "pads"], ["y"], mode="edge"), {"x": r.n(2, 3), "pads": i64([1, 0, 0, 2])},
         opset=13, note="pads as graph input (dynamic)")
    case("Pad_opset18_axes", N("Pad", ["x", "pads", "", "axes"], ["y"]), {"x": r.n(2, 3, 4)},
         {"pads": i64([1, 0, 2, 1]), "axes": i64([-1, 1])}, opset=18,
         note="Pad-18 axes input [-1,1] (negative, unsorted): pads ordered as the axes list")
    case("Pad_opset18_edge_axes", N("Pad", ["x", "pads", "", "axes"], ["y"], mode="edge"), {"x": r.n(2, 3, 4)},
         {"pads": i64([2, 1]), "axes": i64([0])}, opset=18, note="edge mode on axis 0 only")
    case("Pad_opset19_wrap", N("Pad", ["x", "pads"], ["y"], mode="wrap"), {"x": r.n(3, 4)},
         {"pads": i64([1, 2, 2, 1])}, opset=19, note="wrap mode (Pad-19)")


def resize_cases():
    r = Rand(118)
    x = r.n(1, 2, 4, 5)
    empty = np.zeros(0, np.float32)

    def rz(opset, scales=None, sizes=None, axes=None, note="", name="", xx=None, **kw):
        ins = {"x": x if xx is None else xx}
        inits = {}
        if opset < 13:  # Resize-11: roi and scales are required inputs (may be empty)
            names = ["x", "roi", "scales"] + (["sizes"] if sizes is not None else [])
            inits["roi"] = empty
            inits["scales"] = f32(scales) if scales is not None else empty
        else:
            names = ["x", "", "scales" if scales is not None else ""] + (["sizes"] if sizes is not None else [])
            if scales is not None:
                inits["scales"] = f32(scales)
        if sizes is not None:
            inits["sizes"] = i64(sizes)
        if axes is not None:
            kw["axes"] = axes
        case(name, N("Resize", names, ["y"], **kw), ins, inits, opset=opset, note=note)

    rz(13, scales=[1, 1, 2, 2], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
       name="Resize_nearest_asym_floor_up2", note="classic nearest upsample x2 (PyTorch nearest)")
    rz(13, scales=[1, 1, 1.5, 1.5], mode="nearest", coordinate_transformation_mode="half_pixel",
       nearest_mode="round_prefer_floor", name="Resize_nearest_halfpixel_rpf_1_5",
       note="scale 1.5: out 6x7; exact .5 coordinates round down (prefer floor)")
    rz(13, scales=[1, 1, 1.5, 1.5], mode="nearest", coordinate_transformation_mode="half_pixel",
       nearest_mode="round_prefer_ceil", name="Resize_nearest_halfpixel_rpc_1_5",
       note="same as rpf case but .5 coordinates round up")
    rz(13, scales=[1, 1, 0.6, 0.6], mode="nearest", nearest_mode="round_prefer_ceil",
       name="Resize_nearest_rpc_down0_6", note="downsample by 0.6: out floor(4*0.6)=2 x 3, default half_pixel")
    rz(13, scales=[1, 1, 2, 3], name="Resize_nearest_defaults",
       note="all defaults: nearest, half_pixel, round_prefer_floor; scales [2,3]")
    rz(13, sizes=[1, 2, 7, 3], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
       name="Resize_nearest_sizes", note="by sizes: up on H (7/4), down on W (3/5)")
    rz(13, sizes=[1, 2, 7, 8], mode="nearest", coordinate_transformation_mode="align_corners", nearest_mode="ceil",
       name="Resize_nearest_align_ceil", note="align_corners with nearest_mode ceil")
    rz(13, scales=[1, 1, 2, 2], mode="linear", coordinate_transformation_mode="half_pixel",
       name="Resize_linear_halfpixel_up2", note="bilinear x2, half_pixel (PyTorch align_corners=False)")
    rz(13, sizes=[1, 2, 7, 8], mode="linear", coordinate_transformation_mode="align_corners",
       name="Resize_linear_align_corners_sizes", note="bilinear align_corners by sizes")
    rz(13, scales=[1, 1, 1.5, 1.5], mode="linear", coordinate_transformation_mode="asymmetric",
       name="Resize_linear_asym_1_5", note="asymmetric, non-integer scale 1.5")
    rz(13, sizes=[1, 2, 3, 1], mode="linear", coordinate_transformation_mode="pytorch_half_pixel",
       name="Resize_linear_pytorch_half_pixel_down", note="pytorch_half_pixel: an output length 1 samples coord 0")
    rz(13, sizes=[1, 2, 6, 3], mode="linear", coordinate_transformation_mode="pytorch_half_pixel",
       name="Resize_linear_pytorch_half_pixel", note="pytorch_half_pixel up on H, down on W")
    rz(13, scales=[1, 1, 0.6, 0.6], mode="linear", name="Resize_linear_halfpixel_down0_6",
       note="linear downsample 0.6 (coords use the given scale, not out/in)")
    rz(13, scales=[1, 1, 2, 2], mode="cubic", name="Resize_cubic_default",
       note="cubic, cubic_coeff_a -0.75, half_pixel")
    rz(13, sizes=[1, 2, 6, 6], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1, name="Resize_cubic_a05_exclude",
       note="cubic a=-0.5, exclude_outside 1 (weights renormalized)")
    rz(13, scales=[1, 1, 2], mode="linear", coordinate_transformation_mode="half_pixel",
       name="Resize_linear_3d", xx=r.n(1, 3, 5), note="3-D input [N,C,W]")
    rz(11, scales=[1, 1, 2, 2], mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
       name="Resize_opset11_nearest", note="Resize-11: roi and scales inputs required (roi empty)")
    rz(11, sizes=[1, 2, 3, 7], mode="linear", coordinate_transformation_mode="align_corners",
       name="Resize_opset11_linear_sizes", note="Resize-11 by sizes: scales must be an empty tensor")
    rz(11, scales=[1, 1, 2, 1.5], mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn",
       name="Resize_opset11_tf_half_pixel_for_nn", note="tf_half_pixel_for_nn (removed after opset 11)")
    rz(18, scales=[2, 1.5], axes=[2, 3], mode="linear", name="Resize_opset18_axes",
       note="Resize-18 axes attribute: scales only for axes [2,3]")
    rz(18, sizes=[5, 5], axes=[2, 3], mode="nearest", keep_aspect_ratio_policy="not_larger",
       name="Resize_opset18_keep_aspect_not_larger", note="sizes [5,5] with not_larger: out 4x5 (scale 1.0)")
    rz(18, sizes=[6, 6], axes=[2, 3], mode="linear", keep_aspect_ratio_policy="not_smaller",
       name="Resize_opset18_keep_aspect_not_smaller", note="not_smaller: scale 1.5, out round(4*1.5) x round(5*1.5) = 6x8")
    rz(18, scales=[1, 1, 0.5, 0.5], mode="linear", antialias=1, name="Resize_opset18_antialias",
       xx=r.n(1, 1, 8, 10), note="linear downsample x0.5 with antialias 1")
    rz(19, scales=[1, 1, 1.5, 0.6], mode="linear", coordinate_transformation_mode="half_pixel_symmetric",
       name="Resize_opset19_half_pixel_symmetric", note="Resize-19 half_pixel_symmetric")
    # dynamic: sizes fed at run time
    case("Resize_sizes_input", N("Resize", ["x", "", "", "sizes"], ["y"], mode="linear"),
         {"x": x, "sizes": i64([1, 2, 6, 9])}, note="sizes as graph input (dynamic)")
    case("Resize_scales_input", N("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                  coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
         {"x": x, "scales": f32([1, 1, 2, 2])}, note="scales as graph input (dynamic)")
    rz(13, sizes=[1, 2, 3, 7], mode="cubic", coordinate_transformation_mode="align_corners",
       name="Resize_cubic_align_corners_sizes", note="cubic align_corners: down on H, up on W")
    rz(13, scales=[1, 1, 0.6, 1.7], mode="cubic", coordinate_transformation_mode="asymmetric",
       name="Resize_cubic_asym", note="cubic asymmetric, scales 0.6 and 1.7 (taps past both edges)")
    rz(13, scales=[1, 1, 3, 3], mode="cubic", coordinate_transformation_mode="pytorch_half_pixel",
       exclude_outside=1, name="Resize_cubic_pytorch_exclude", note="cubic x3, pytorch_half_pixel, exclude_outside")


def dropout_constant_shape_cases():
    r = Rand(119)
    case("Dropout_opset12_ratio", N("Dropout", ["x", "ratio"], ["y"]), {"x": r.n(2, 3)}, {"ratio": f32(0.3)},
         opset=12, note="inference: identity regardless of ratio input")
    case("Dropout_opset13_mask", N("Dropout", ["x", "ratio"], ["y", "mask"]), {"x": r.n(2, 3)},
         {"ratio": f32(0.5)}, note="optional mask output: all true (bool)")
    case("Dropout_opset13_training_false", N("Dropout", ["x", "ratio", "t"], ["y", "mask"]), {"x": r.n(3, 2)},
         {"ratio": f32(0.1), "t": np.array(False)}, note="training_mode input false")
    case("Dropout_opset13_plain", N("Dropout", ["x"], ["y"]), {"x": r.n(4)}, note="data only")
    case("Dropout_opset11_attr", N("Dropout", ["x"], ["y"], ratio=0.25), {"x": r.n(2, 2)}, opset=11,
         note="Dropout-10/11 ratio attribute")
    case("Dropout_opset11_mask", N("Dropout", ["x"], ["y", "mask"], ratio=0.25), {"x": r.n(2, 2)}, opset=11,
         note="onnxruntime quirk: Dropout-7..11 returns an all-FALSE mask in inference (onnx.reference and "
              "Dropout-12+ give all true)")
    case("Dropout_opset22", N("Dropout", ["x", "ratio"], ["y"]), {"x": r.n(2, 3)}, {"ratio": f32(0.5)}, opset=22,
         note="Dropout-22")

    case("Constant_value_tensor", N("Constant", [], ["y"], value=numpy_helper.from_array(r.n(2, 3), "v")), {},
         note="no graph inputs at all (inputs.npz is empty)")
    case("Constant_value_float", [N("Constant", [], ["c"], value_float=2.5), N("Add", ["x", "c"], ["y"])],
         {"x": r.n(2, 3)}, op="Constant", note="value_float gives a 0-d float; then Add")
    case("Constant_value_floats", [N("Constant", [], ["c"], value_floats=[1.0, -2.0, 0.5]),
                                   N("Mul", ["x", "c"], ["y"])], {"x": r.n(2, 3)}, op="Constant",
         note="value_floats gives a 1-D float")
    case("Constant_value_int", [N("Constant", [], ["c"], value_int=7), N("Add", ["x", "c"], ["y"])],
         {"x": r.i(-5, 5, 4)}, op="Constant", note="value_int gives a 0-d int64")
    case("Constant_value_ints", [N("Constant", [], ["shape"], value_ints=[3, -1]), N("Reshape", ["x", "shape"], ["y"])],
         {"x": r.n(2, 3)}, op="Constant", note="value_ints gives a 1-D int64 used as a Reshape shape")
    case("Constant_int64_tensor_out", N("Constant", [], ["y"], value=numpy_helper.from_array(i64([[1, 2], [3, 4]]), "v")),
         {}, opset=11, note="opset 11, int64 value tensor as graph output")

    cos = lambda **kw: N("ConstantOfShape", ["shape"], ["y"], **kw)
    case("ConstantOfShape_default", cos(), {}, {"shape": i64([2, 3])}, note="no value: float32 zeros")
    case("ConstantOfShape_int64", cos(value=numpy_helper.from_array(i64([7]), "v")), {}, {"shape": i64([3, 2])},
         note="value int64 [7]")
    case("ConstantOfShape_float", cos(value=numpy_helper.from_array(f32([1.5]), "v")), {"shape": i64([2, 1, 3])},
         note="value 1.5, shape as graph input (dynamic)")
    case("ConstantOfShape_empty", cos(), {"shape": i64([0, 3])}, note="a zero dim: empty output")
    case("ConstantOfShape_scalar", cos(value=numpy_helper.from_array(f32([-2.0]), "v")), {},
         {"shape": np.zeros(0, np.int64)}, note="empty shape vector: 0-d output")

    x = r.n(2, 3, 4)
    case("Shape_basic", N("Shape", ["x"], ["y"]), {"x": x}, note="int64 [3]")
    case("Shape_scalar", N("Shape", ["x"], ["y"]), {"x": f32(1.0)}, note="0-d input: empty shape [0]")
    case("Shape_opset15_start", N("Shape", ["x"], ["y"], start=1), {"x": x}, opset=15, note="start 1")
    case("Shape_opset15_end_neg", N("Shape", ["x"], ["y"], end=-1), {"x": x}, opset=15, note="end -1")
    case("Shape_opset15_start_neg", N("Shape", ["x"], ["y"], start=-2), {"x": x}, opset=15, note="start -2")
    case("Shape_opset15_clamp", N("Shape", ["x"], ["y"], start=-10, end=10), {"x": x}, opset=15,
         note="out-of-range start/end clamp to [0, rank]")
    case("Shape_opset15_empty", N("Shape", ["x"], ["y"], start=2, end=1), {"x": x}, opset=15,
         note="start > end: empty")


def gather_cases():
    r = Rand(120)
    g = lambda **kw: N("Gather", ["x", "idx"], ["y"], **kw)
    case("Gather_axis0", g(), {"x": r.n(5, 4)}, {"idx": i64([3, 1, 3])}, note="repeated index")
    case("Gather_axis1", g(axis=1), {"x": r.n(3, 5)}, {"idx": i64([0, 4, 2])})
    case("Gather_neg_indices", g(axis=1), {"x": r.n(3, 5)}, {"idx": i64([-1, 0, -5])}, note="negative indices")
    case("Gather_scalar_axis0", g(), {"x": r.n(5, 4)}, {"idx": i64(2)}, note="0-d index drops the axis: [4]")
    case("Gather_scalar_axis1", g(axis=1), {"x": r.n(2, 5, 3)}, {"idx": i64(-2)},
         note="0-d negative index on axis 1: [2,3]")
    case("Gather_2d_indices", g(), {"x": r.n(5, 4)}, {"idx": i64([[0, 2], [4, 1]])}, note="out [2,2,4]")
    case("Gather_2d_indices_axis1", g(axis=1), {"x": r.n(2, 5, 3)}, {"idx": i64([[0, -1, 2], [1, 1, 3]])},
         note="[2,5,3] gather axis 1 with [2,3] indices -> [2,2,3,3]")
    case("Gather_neg_axis", g(axis=-1), {"x": r.n(2, 3, 4)}, {"idx": i64([3, 0])}, note="axis -1")
    case("Gather_indices_input", g(), {"x": r.n(6, 3), "idx": i64([[5, 0], [-1, 2]])},
         note="indices as graph input (dynamic)")
    case("Gather_int32_indices", g(), {"x": r.n(5, 2)}, {"idx": np.array([4, 0, 1], np.int32)}, note="int32 indices")
    case("Gather_int64_data", g(), {"x": i64([2, 3, 4, 5])}, {"idx": i64(0)}, note="int64 data, 0-d index (Shape idiom)")
    case("Gather_opset11", g(axis=0), {"x": r.n(4, 3)}, {"idx": i64([-4, 3])}, opset=11, note="Gather-11")
    case("Gather_embedding", N("Gather", ["table", "ids"], ["y"]), {"ids": r.i(0, 50, 2, 5)}, {"table": r.n(50, 16)},
         note="embedding table [V=50,D=16] initializer, int64 token ids [B,S] input -> [2,5,16]")


def index_cases():
    r = Rand(140)
    ge = lambda **kw: N("GatherElements", ["x", "idx"], ["y"], **kw)
    case("GatherElements_axis0", ge(), {"x": r.n(3, 4)}, {"idx": i64([[2, 0, 1, 1], [0, -1, 2, -3]])},
         note="negative indices")
    case("GatherElements_axis1_smaller", ge(axis=1), {"x": r.n(3, 5)}, {"idx": i64([[4, 0], [1, 1]])},
         note="indices smaller than the data on the other axis: out [2,2]")
    case("GatherElements_3d_neg_axis", ge(axis=-1), {"x": r.n(2, 3, 4), "idx": r.i(-4, 4, 2, 3, 6)},
         note="axis -1, indices as graph input, longer than the data's axis")
    case("GatherElements_int64", ge(axis=0), {"x": r.i(-9, 9, 4, 2)}, {"idx": i64([[3, 0], [1, 2]])},
         note="int64 data")
    tk = lambda **kw: N("TopK", ["x", "k"], ["v", "i"], **kw)
    ties = f32([[1, 3, 3, 2, 3, 0], [5, 5, 5, 5, 5, 5]])
    case("TopK_last_axis", tk(), {"x": r.n(3, 7)}, {"k": i64([3])})
    case("TopK_ties", tk(), {"x": ties}, {"k": i64([4])}, note="equal values: lower index first")
    case("TopK_smallest_axis0", tk(axis=0, largest=0), {"x": r.n(5, 3)}, {"k": i64([2])}, note="largest=0, axis 0")
    case("TopK_smallest_ties", tk(largest=0), {"x": ties}, {"k": i64([3])}, note="largest=0 with ties")
    case("TopK_middle_axis", tk(axis=1), {"x": r.n(2, 6, 3)}, {"k": i64([6])}, note="k = axis size, axis 1 of 3")
    case("TopK_k_input", tk(axis=-1), {"x": r.n(1, 40), "k": i64([5])}, note="K as graph input")
    case("TopK_int64", tk(), {"x": r.i(-5, 5, 2, 8)}, {"k": i64([3])}, note="int64 values")
    case("TopK_opset10", tk(axis=1), {"x": r.n(2, 5)}, {"k": i64([2])}, opset=10, note="TopK-10 (no largest)")
    se = lambda **kw: N("ScatterElements", ["x", "idx", "u"], ["y"], **kw)
    case("ScatterElements_axis0", se(), {"x": r.n(3, 4), "u": r.n(2, 4)}, {"idx": i64([[2, 0, 1, 1], [0, -1, 2, -3]])},
         note="negative indices")
    case("ScatterElements_axis1_smaller", se(axis=-1), {"x": r.n(3, 5), "u": r.n(2, 2)}, {"idx": i64([[4, 0], [1, 1]])},
         note="axis -1, indices smaller than the data on the other axis")
    case("ScatterElements_add_duplicates", se(axis=1, reduction="add"), {"x": r.n(2, 4), "u": r.n(2, 5)},
         {"idx": i64([[1, 1, 3, 1, 0], [2, 2, 2, 2, 2]])}, opset=16, note="reduction add, repeated targets")
    case("ScatterElements_max", se(axis=0, reduction="max"), {"x": r.n(3, 3), "u": r.n(4, 3)},
         {"idx": i64([[0, 1, 2], [0, 1, 2], [2, 2, 0], [1, 0, 1]])}, opset=18, note="reduction max")
    case("ScatterElements_min_int64", se(axis=0, reduction="min"), {"x": r.i(-9, 9, 3, 2), "u": r.i(-9, 9, 2, 2)},
         {"idx": i64([[2, 0], [2, 0]])}, opset=18, note="reduction min on int64")
    case("ScatterElements_mul", se(axis=2, reduction="mul"), {"x": r.n(2, 2, 3), "u": r.n(2, 2, 2),
         "idx": r.i(-3, 3, 2, 2, 2)}, opset=16, note="reduction mul, indices as graph input")
    case("ScatterElements_add_rank3_middle_axis", se(axis=1, reduction="add"), {"x": r.n(3, 4, 5), "u": r.n(2, 3, 4),
         "idx": r.i(-4, 4, 2, 3, 4)}, opset=16, note="rank 3 along a middle axis, indices smaller than the data on the others")
    case("Scatter_opset10", N("Scatter", ["x", "idx", "u"], ["y"], axis=1), {"x": r.n(2, 3), "u": r.n(2, 2)},
         {"idx": i64([[2, 0], [1, 2]])}, opset=10, note="opset 9-10's name for ScatterElements")
    sn = lambda **kw: N("ScatterND", ["x", "idx", "u"], ["y"], **kw)
    case("ScatterND_elements", sn(), {"x": r.n(3, 4), "u": r.n(3)}, {"idx": i64([[0, 1], [2, 3], [1, -1]])},
         note="one element per index tuple, a negative coordinate")
    case("ScatterND_rows", sn(), {"x": r.n(4, 2, 3), "u": r.n(2, 2, 3)}, {"idx": i64([[3], [0]])},
         note="whole slices [2,3] per index")
    case("ScatterND_batched_indices", sn(), {"x": r.n(2, 3, 4), "u": r.n(2, 2, 4)},
         {"idx": i64([[[0, 2], [1, 0]], [[1, 1], [0, 0]]])}, note="indices [2,2,2]: rows of the last axis")
    case("ScatterND_add", sn(reduction="add"), {"x": r.n(3, 2), "u": r.n(3, 2)}, {"idx": i64([[1], [1], [0]])},
         opset=16, note="reduction add, a repeated row")
    case("ScatterND_max_int64", sn(reduction="max"), {"x": r.i(-9, 9, 2, 3), "u": r.i(-9, 9, 2)},
         {"idx": i64([[0, 2], [0, 2]])}, opset=18, note="reduction max on int64, one element twice")
    oh = lambda **kw: N("OneHot", ["i", "depth", "values"], ["y"], **kw)
    case("OneHot_last_axis", oh(), {"i": i64([[0, 3, -1], [5, -6, 2]])}, {"depth": i64([5]), "values": f32([0, 1])},
         note="negative indices, and 5 and -6 outside [-5, 5): rows of off")
    case("OneHot_axis0_float", oh(axis=0), {"i": f32([1.0, 2.7, 0.0])}, {"depth": f32(4.0), "values": f32([-2, 3])},
         opset=11, note="axis 0, float indices and scalar float depth, other off/on")
    case("OneHot_middle_int_values", oh(axis=1), {"i": r.i(0, 3, 2, 4)}, {"depth": i64([3]), "values": i64([7, 9])},
         opset=11, note="axis 1 of 3, int64 values")
    md = lambda **kw: N("Mod", ["a", "b"], ["y"], **kw)
    case("Mod_int_sign_of_divisor", md(), {"a": i64([-7, 7, -7, 7, 0, 6]), "b": i64([3, -3, -3, 3, 5, 3])},
         note="fmod=0: Python remainder, sign of the divisor")
    case("Mod_int_fmod", md(fmod=1), {"a": i64([-7, 7, -7, 7, 0, 6]), "b": i64([3, -3, -3, 3, 5, 3])},
         note="fmod=1: C remainder, sign of the dividend")
    case("Mod_int_broadcast", md(), {"a": r.i(-20, 20, 3, 4)}, {"b": i64([[3], [-4], [7]])}, note="broadcast [3,1]")
    case("Mod_float_fmod", md(fmod=1), {"a": r.n(3, 4, scale=5), "b": r.away(3, 4)}, note="floats, fmod=1")
    case("Mod_int32", md(), {"a": np.array([-5, 9, 4], np.int32), "b": np.array([2, -4, 4], np.int32)},
         note="int32")
    gnd = lambda **kw: N("GatherND", ["x", "i"], ["y"], **kw)
    case("GatherND_elements", gnd(), {"x": r.n(3, 4)}, {"i": i64([[0, 1], [2, 3], [-1, 0]])},
         note="k = rank: single elements; a negative index")
    case("GatherND_rows", gnd(), {"x": r.n(4, 3, 5)}, {"i": i64([[[1], [3]], [[0], [-2]]])},
         note="k = 1: whole [3, 5] slices, indices [2, 2, 1]")
    case("GatherND_batch_dims", gnd(batch_dims=1), {"x": r.n(2, 4, 3)}, {"i": i64([[[1], [3]], [[0], [2]]])},
         opset=12, note="batch_dims 1: each batch indexes its own rows")
    case("GatherND_edges", gnd(), {"x": r.n(6, 8), "i": i64([[5], [0], [2], [2], [4]])},
         note="indices as a graph input: a graph network's node features looked up per edge")


def slice_cases():
    r = Rand(121)
    x2 = r.n(4, 6)
    x3 = r.n(3, 4, 5)

    def sl(name, x, starts, ends, axes=None, steps=None, note="", opset=13):
        names, inits = ["x", "starts", "ends"], {"starts": i64(starts), "ends": i64(ends)}
        if axes is not None:
            names.append("axes")
            inits["axes"] = i64(axes)
        if steps is not None:
            if axes is None:
                names.append("")
            names.append("steps")
            inits["steps"] = i64(steps)
        case(name, N("Slice", names, ["y"]), {"x": x}, inits, opset=opset, note=note)

    sl("Slice_basic", x2, [1, 0], [3, 5], [0, 1], [1, 2], note="axes and steps given")
    sl("Slice_neg_starts_ends", x3, [-3], [-1], [2], note="negative start/end on the last axis")
    sl("Slice_int64max_end", x3, [1], [INT64_MAX], [1], note="end INT64_MAX means to the end")
    sl("Slice_reverse", x2, [-1], [INT64_MIN], [1], [-1], note="start -1, end INT64_MIN, step -1: reverse")
    sl("Slice_neg_step2", x3, [4, 2], [0, -100], [2, 0], [-2, -1],
       note="negative steps, end clamped to -1 (includes index 0) on axis 0")
    sl("Slice_no_axes", x3, [0, 1], [2, 3], note="axes omitted: [0, 1, ...]")
    sl("Slice_no_steps", x3, [1], [3], [-2], note="steps omitted, axes negative")
    sl("Slice_clamp", x2, [-1000, 2], [1000, 1000], [0, 1], note="out-of-range starts/ends clamp")
    sl("Slice_empty", x2, [3], [1], [0], note="start > end with step 1: empty axis")
    sl("Slice_step_gt_dim", x2, [1], [6], [1], [10], note="step bigger than the extent: one element")
    sl("Slice_opset11", x3, [0, -2], [INT64_MAX, INT64_MAX], [0, 2], opset=11, note="Slice-11")
    case("Slice_starts_input", N("Slice", ["x", "starts", "ends", "axes"], ["y"]),
         {"x": x3, "starts": i64([1, -4]), "ends": i64([INT64_MAX, 4])}, {"axes": i64([0, 2])},
         note="starts/ends as graph inputs (dynamic)")
    case("Slice_all_inputs", N("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"]),
         {"x": x2, "starts": i64([5]), "ends": i64([0]), "axes": i64([-1]), "steps": i64([-2])},
         note="every operand a graph input, negative step")
    sl("Slice_empty_axis_negative_step", r.n(3, 0), [-1], [-10], axes=[1], steps=[-1],
       note="a negative step over an empty axis selects nothing (a fuzz find: a clamp with min > max)")
    sl("Slice_huge_step", x2, [1], [6], axes=[1], steps=[(1 << 63) - 1],
       note="a step of i64::MAX takes one element (the next index would overflow)")


def split_cases():
    r = Rand(122)
    x = r.n(2, 6)
    case("Split_opset11_attr", N("Split", ["x"], ["a", "b"], axis=1, split=[2, 4]), {"x": x}, opset=11,
         note="split attribute")
    case("Split_opset11_equal", N("Split", ["x"], ["a", "b", "c"], axis=1), {"x": x}, opset=11,
         note="no split: equal parts by number of outputs")
    case("Split_opset11_default_axis", N("Split", ["x"], ["a", "b"]), {"x": r.n(4, 3)}, opset=11,
         note="default axis 0")
    case("Split_opset13_input", N("Split", ["x", "split"], ["a", "b", "c"], axis=1), {"x": x},
         {"split": i64([1, 2, 3])}, note="split as an input (Split-13)")
    case("Split_opset13_equal_neg", N("Split", ["x"], ["a", "b"], axis=-1), {"x": r.n(2, 3, 4)},
         note="no split, negative axis")
    case("Split_opset13_zero_part", N("Split", ["x", "split"], ["a", "b"], axis=1), {"x": x},
         {"split": i64([0, 6])}, note="a zero-size part")
    case("Split_opset18_num_outputs_uneven", N("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
         {"x": r.n(2, 7)}, opset=18, note="num_outputs 3 on 7: ceil(7/3)=3 -> [3,3,1]")
    case("Split_opset18_num_outputs_uneven2", N("Split", ["x"], ["a", "b", "c", "d"], axis=0, num_outputs=4),
         {"x": r.n(10, 2)}, opset=18, note="num_outputs 4 on 10 -> [3,3,3,1]")
    case("Split_opset18_num_outputs_even", N("Split", ["x"], ["a", "b"], axis=-1, num_outputs=2),
         {"x": r.n(3, 4)}, opset=18, note="num_outputs 2, even")
    case("Split_opset18_input", N("Split", ["x", "split"], ["a", "b"], axis=0), {"x": r.n(5, 2)},
         {"split": i64([4, 1])}, opset=18, note="split input at opset 18")


def cast_cases():
    r = Rand(123)
    fx = np.concatenate([f32([-2.7, 2.7, -0.5, 0.5, -0.0, 0.0, 1.0, -1.0, 99.99, -99.99]), r.n(14, scale=20.0)])
    c = lambda to: N("Cast", ["x"], ["y"], to=to)
    case("Cast_f32_i64", c(TP.INT64), {"x": fx}, note="truncation toward zero: -2.7 -> -2")
    case("Cast_f32_i32", c(TP.INT32), {"x": fx.reshape(4, 6)}, note="truncation toward zero")
    case("Cast_f32_bool", c(TP.BOOL), {"x": fx}, note="nonzero -> true; 0.0 and -0.0 -> false")
    case("Cast_f32_int4_roundtrip", [N("Cast", ["x"], ["y"], to=TP.INT4), N("Cast", ["y"], ["z"], to=TP.FLOAT)],
         {"x": f32([-9.6, -1.5, 0.5, 2.5, 7.7])}, op="Cast", opset=21,
         note="out of scope: zeropoint refuses Cast to int4 (ORT rounds half away from zero and wraps)")
    case("Cast_bool_f32", c(TP.FLOAT), {"x": r.b(3, 4)})
    case("Cast_i64_f32", c(TP.FLOAT), {"x": i64([-(2 ** 40), -3, 0, 7, 2 ** 24 + 1, 123456789])},
         note="int64 -> float rounds to nearest (2^24+1 is not representable)")
    case("Cast_f32_u8", c(TP.UINT8), {"x": r.u(0.0, 255.9, 4, 5)}, note="in-range values, truncated")
    case("Cast_f32_i8", c(TP.INT8), {"x": r.u(-127.9, 127.9, 4, 5)}, note="in-range values, truncation toward 0")
    case("Cast_f32_f16_f32", [N("Cast", ["x"], ["h"], to=TP.FLOAT16), N("Cast", ["h"], ["y"], to=TP.FLOAT)],
         {"x": np.concatenate([r.n(20, scale=100.0), f32([1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 65519.0, 1e-6])])},
         note="round trip through float16: round-to-nearest-even, ties 1+2^-11 and 1+3*2^-11, subnormal")
    case("Cast_i32_i64", c(TP.INT64), {"x": r.i(-1000, 1000, 6, dtype=np.int32)})
    case("Cast_i64_i32", c(TP.INT32), {"x": r.i(-1000, 1000, 6)}, note="in-range values")
    case("Cast_i64_bool", c(TP.BOOL), {"x": i64([0, 1, -1, 2, 0])})
    case("Cast_bool_i64", c(TP.INT64), {"x": r.b(5)})
    case("Cast_u8_f32", c(TP.FLOAT), {"x": r.i(0, 256, 8, dtype=np.uint8)})
    case("Cast_i8_f32", c(TP.FLOAT), {"x": r.i(-128, 128, 8, dtype=np.int8)})
    case("Cast_opset19", c(TP.INT64), {"x": fx}, opset=19, note="Cast-19 (saturate attribute irrelevant for ints)")
    case("Cast_opset21", c(TP.INT32), {"x": fx}, opset=21, note="Cast-21")


def variadic_cases():
    r = Rand(124)
    for op in ("Sum", "Max", "Min"):
        case(f"{op}_1", N(op, ["a"], ["y"]), {"a": r.n(2, 3)}, note="single input: identity")
        case(f"{op}_2", N(op, ["a", "b"], ["y"]), {"a": r.n(2, 3), "b": r.n(2, 3)})
        case(f"{op}_3_bcast", N(op, ["a", "b", "c"], ["y"]), {"a": r.n(2, 3, 4), "b": r.n(3, 1)}, {"c": r.n(4)},
             note="three inputs [2,3,4], [3,1], [4] broadcast together")
    case("Max_int64", N("Max", ["a", "b"], ["y"]), {"a": r.i(-10, 10, 2, 3), "b": r.i(-10, 10, 3)}, note="int64")
    case("Min_int32", N("Min", ["a", "b"], ["y"]), {"a": r.i(-10, 10, 4, dtype=np.int32)},
         {"b": np.array(0, np.int32)}, note="int32 with 0-d")


def reduce_cases():
    r = Rand(125)
    x = r.n(2, 3, 4)
    rd = lambda op, ins=("x",), **kw: N(op, list(ins), ["y"], **kw)
    case("ReduceMean_axes1", rd("ReduceMean", axes=[1]), {"x": x}, note="axes attribute, keepdims default 1")
    case("ReduceMean_axes_keep0", rd("ReduceMean", axes=[0, 2], keepdims=0), {"x": x}, note="two axes, keepdims 0")
    case("ReduceMean_neg_axes", rd("ReduceMean", axes=[-1]), {"x": x}, note="axes [-1]")
    case("ReduceMean_all", rd("ReduceMean"), {"x": x}, note="no axes: all dims, keepdims -> [1,1,1]")
    case("ReduceMean_all_keep0", rd("ReduceMean", keepdims=0), {"x": x}, note="all dims, keepdims 0 -> 0-d")
    case("ReduceMean_opset11", rd("ReduceMean", axes=[-2, 0]), {"x": x}, opset=11, note="ReduceMean-11")
    case("ReduceMax_axes_keep0", rd("ReduceMax", axes=[1], keepdims=0), {"x": x}, note="axes attribute, keepdims 0")
    case("ReduceMax_all", rd("ReduceMax"), {"x": x}, note="no axes")
    case("ReduceMax_int64", rd("ReduceMax", axes=[-1]), {"x": r.i(-50, 50, 3, 4)}, note="int64")
    case("ReduceSum_opset11_attr", rd("ReduceSum", axes=[0, -1], keepdims=0), {"x": x}, opset=11,
         note="ReduceSum-11 axes attribute")
    case("ReduceSum_axes_input", rd("ReduceSum", ("x", "axes")), {"x": x}, {"axes": i64([1])},
         note="ReduceSum-13 axes as an input")
    case("ReduceSum_neg_axes_keep0", rd("ReduceSum", ("x", "axes"), keepdims=0), {"x": x}, {"axes": i64([-1, 0])},
         note="negative/unsorted axes, keepdims 0")
    case("ReduceSum_noaxes", rd("ReduceSum"), {"x": x}, note="no axes input: all dims")
    case("ReduceSum_noop_empty_axes", rd("ReduceSum", noop_with_empty_axes=1), {"x": x},
         note="noop_with_empty_axes 1 and no axes: identity")
    case("ReduceSum_empty_axes_tensor", rd("ReduceSum", ("x", "axes"), keepdims=0), {"x": x},
         {"axes": np.zeros(0, np.int64)}, note="axes an empty tensor, noop 0: reduce all")
    case("ReduceSum_axes_graph_input", rd("ReduceSum", ("x", "axes")), {"x": x, "axes": i64([0, 2])},
         note="axes as graph input (dynamic)")
    case("ReduceSum_int64", rd("ReduceSum", ("x", "axes")), {"x": r.i(-50, 50, 3, 4)}, {"axes": i64([0])},
         note="int64")
    case("ReduceMean_opset18_axes_input", rd("ReduceMean", ("x", "axes")), {"x": x}, {"axes": i64([-1])}, opset=18,
         note="ReduceMean-18: axes is an input")
    case("ReduceMean_opset18_noop", rd("ReduceMean", noop_with_empty_axes=1), {"x": x}, opset=18,
         note="noop_with_empty_axes 1, no axes: identity")
    case("ReduceMean_opset18_all", rd("ReduceMean", keepdims=0), {"x": x}, opset=18, note="no axes: all, 0-d")
    case("ReduceMax_opset18_axes_input", rd("ReduceMax", ("x", "axes"), keepdims=0), {"x": x},
         {"axes": i64([0, 2])}, opset=18, note="ReduceMax-18 axes input")
    case("ReduceMax_opset18_all", rd("ReduceMax"), {"x": x}, opset=18, note="no axes, keepdims 1")
    case("ReduceSum_opset18", rd("ReduceSum", ("x", "axes")), {"x": x}, {"axes": i64([-2])}, opset=18)


# --------------------------------------------------------------------------------------------------
# Transformer operators


def layernorm_cases():
    r = Rand(126)
    ln = lambda ins, outs=("y",), **kw: N("LayerNormalization", list(ins), list(outs), **kw)
    case("LayerNormalization_last_axis", ln(["x", "s", "b"]), {"x": r.n(2, 3, 8)}, {"s": r.n(8), "b": r.n(8)},
         opset=17, note="default axis -1, epsilon 1e-5")
    case("LayerNormalization_axis1", ln(["x", "s", "b"], axis=1), {"x": r.n(2, 3, 8)}, {"s": r.n(3, 8), "b": r.n(3, 8)},
         opset=17, note="axis 1 on 3-D: normalize over [3,8] jointly")
    case("LayerNormalization_nobias", ln(["x", "s"]), {"x": r.n(2, 4, 6)}, {"s": r.n(6)}, opset=17, note="no B")
    case("LayerNormalization_eps", ln(["x", "s", "b"], epsilon=1e-2), {"x": r.n(3, 5, scale=0.2)},
         {"s": r.n(5), "b": r.n(5)}, opset=17, note="epsilon 1e-2 on small-variance rows (epsilon matters)")
    case("LayerNormalization_mean_invstd", ln(["x", "s", "b"], ("y", "mean", "invstd"), axis=-1),
         {"x": r.n(2, 3, 4)}, {"s": r.n(4), "b": r.n(4)}, opset=17,
         note="optional Mean and InvStdDev outputs (shape [2,3,1])")
    case("LayerNormalization_neg_axis2", ln(["x", "s", "b"], axis=-2), {"x": r.n(2, 3, 4)},
         {"s": r.n(3, 4), "b": r.n(3, 4)}, opset=17, note="axis -2")

    inorm = lambda **kw: N("InstanceNormalization", ["x", "s", "b"], ["y"], **kw)
    case("InstanceNormalization_2d", inorm(), {"x": r.n(2, 3, 5, 4)}, {"s": r.n(3), "b": r.n(3)},
         note="per sample and channel over H, W")
    case("InstanceNormalization_1d_eps", inorm(epsilon=1e-2), {"x": r.n(2, 4, 7, scale=0.2)},
         {"s": r.n(4), "b": r.n(4)}, opset=7, note="3-D input, epsilon 1e-2 on small variances")
    case("InstanceNormalization_3d", inorm(), {"x": r.n(1, 2, 3, 4, 5)}, {"s": r.n(2), "b": r.n(2)},
         opset=22, note="volumetric input")

    lrn = lambda **kw: N("LRN", ["x"], ["y"], **kw)
    case("LRN_alexnet", lrn(size=5, alpha=1e-4, beta=0.75, bias=1.0), {"x": r.n(2, 7, 5, 4, scale=30.0)},
         note="AlexNet's settings; values large enough that the sum of squares matters")
    case("LRN_even_size", lrn(size=4, alpha=0.5, beta=0.6, bias=2.0), {"x": r.n(1, 6, 3, 3)},
         note="even size: one channel more after than before")
    case("LRN_window_past_channels", lrn(size=9, alpha=0.3), {"x": r.n(1, 3, 8)}, opset=13,
         note="a window wider than the channels, 3-D input")

    nodes = [
        N("ReduceMean", ["x"], ["mu"], axes=[-1]),
        N("Sub", ["x", "mu"], ["d"]),
        N("Pow", ["d", "two"], ["d2"]),
        N("ReduceMean", ["d2"], ["var"], axes=[-1]),
        N("Add", ["var", "eps"], ["ve"]),
        N("Sqrt", ["ve"], ["sd"]),
        N("Div", ["d", "sd"], ["n"]),
        N("Mul", ["n", "gamma"], ["g"]),
        N("Add", ["g", "beta"], ["y"]),
    ]
    case("Subgraph_layernorm_decomposed", nodes, {"x": r.n(2, 5, 8, scale=2.0)},
         {"two": f32(2.0), "eps": f32(1e-5), "gamma": r.n(8), "beta": r.n(8)},
         note="LayerNorm as PyTorch exports it before opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add eps, "
              "Sqrt, Div, Mul, Add")


def gelu_cases():
    r = Rand(127)
    case("Gelu_none", N("Gelu", ["x"], ["y"], approximate="none"), {"x": r.n(3, 8, scale=2.0)}, opset=20,
         note="exact erf form")
    case("Gelu_tanh", N("Gelu", ["x"], ["y"], approximate="tanh"), {"x": r.n(3, 8, scale=2.0)}, opset=20,
         note="tanh approximation")
    case("Gelu_default", N("Gelu", ["x"], ["y"]), {"x": r.n(2, 4)}, opset=20, note="no attribute: none")
    nodes = [
        N("Div", ["x", "sqrt2"], ["xs"]),
        N("Erf", ["xs"], ["e"]),
        N("Add", ["e", "one"], ["e1"]),
        N("Mul", ["x", "e1"], ["m"]),
        N("Mul", ["m", "half"], ["y"]),
    ]
    case("Subgraph_gelu_decomposed", nodes, {"x": r.n(2, 3, 8, scale=2.0)},
         {"sqrt2": f32(1.4142135381698608), "one": f32(1.0), "half": f32(0.5)},
         note="x*0.5*(1+erf(x/sqrt2)) as PyTorch exports it: Div, Erf, Add, Mul, Mul")


def where_expand_cases():
    r = Rand(128)
    case("Where_bcast", N("Where", ["c", "x", "y"], ["z"]), {"c": r.b(3, 1), "x": r.n(1, 4), "y": f32(-1.0)},
         note="condition [3,1], X [1,4], Y 0-d -> [3,4]")
    case("Where_same", N("Where", ["c", "x", "y"], ["z"]), {"c": r.b(2, 3), "x": r.n(2, 3), "y": r.n(2, 3)})
    case("Where_int64", N("Where", ["c", "x", "y"], ["z"]), {"c": r.b(4), "x": r.i(0, 9, 2, 4)}, {"y": i64(-1)},
         opset=16, note="int64 values, Where-16")
    tri = lambda ins=("x",), **kw: N("Trilu", list(ins), ["y"], **kw)
    case("Trilu_upper", tri(), {"x": r.n(4, 5)}, opset=14, note="upper triangle, diagonal kept")
    case("Trilu_lower_k_neg", tri(("x", "k"), upper=0), {"x": r.n(2, 3, 5, 4)}, {"k": i64(-1)}, opset=14,
         note="lower, k = -1 (below the diagonal), batch axes")
    case("Trilu_upper_k_pos", tri(("x", "k")), {"x": r.n(3, 6)}, {"k": i64(2)}, opset=14, note="upper, k = 2")
    case("Trilu_int64_k_far", tri(("x", "k"), upper=0), {"x": r.i(-9, 9, 3, 3)}, {"k": i64(-5)}, opset=14,
         note="int64, k below every element: all zeros")
    case("Trilu_k_input", tri(("x", "k")), {"x": r.n(4, 4), "k": i64(1)}, opset=14,
         note="k as a graph input")
    ex = lambda: N("Expand", ["x", "shape"], ["y"])
    case("Expand_rank_up", ex(), {"x": r.n(3, 1)}, {"shape": i64([2, 3, 4])}, note="[3,1] -> [2,3,4]")
    case("Expand_ones", ex(), {"x": r.n(3, 1)}, {"shape": i64([2, 1, 4])},
         note="1 in shape keeps the input's 3: [2,3,4]")
    case("Expand_smaller_shape", ex(), {"x": r.n(2, 3, 1)}, {"shape": i64([4])},
         note="shape of lower rank than input: [2,3,4]")
    case("Expand_shape_input", ex(), {"x": r.n(1, 4), "shape": i64([3, 1, 1])},
         note="shape as graph input (dynamic): [3,1,4]")
    case("Expand_int64", ex(), {"x": i64([1, 2, 3])}, {"shape": i64([2, 1])}, note="int64, [3] -> [2,3]")
    case("Expand_bool", ex(), {"x": r.b(1, 1, 3)}, {"shape": i64([2, 2, 1])}, note="bool")


def compare_logic_cases():
    r = Rand(129)
    fi = lambda *s: r.i(-2, 3, *s).astype(np.float32)  # small ints as floats: equality happens
    case("Equal_float", N("Equal", ["a", "b"], ["y"]), {"a": fi(2, 3, 4), "b": fi(4)}, note="float, broadcasting, bool out")
    case("Equal_int64", N("Equal", ["a", "b"], ["y"]), {"a": r.i(0, 3, 3, 1), "b": r.i(0, 3, 4)},
         note="int64 [3,1] vs [4]")
    case("Equal_bool", N("Equal", ["a", "b"], ["y"]), {"a": r.b(2, 3), "b": r.b(2, 3)}, note="bool")
    case("Equal_opset11", N("Equal", ["a", "b"], ["y"]), {"a": r.i(0, 3, 5), "b": i64(1)}, opset=11)
    case("Less_float", N("Less", ["a", "b"], ["y"]), {"a": fi(3, 4), "b": fi(3, 1)}, note="with ties")
    case("Greater_int64", N("Greater", ["a", "b"], ["y"]), {"a": r.i(-3, 3, 2, 3)}, {"b": i64(0)})
    case("LessOrEqual_float", N("LessOrEqual", ["a", "b"], ["y"]), {"a": fi(3, 4), "b": fi(4)}, opset=16)
    case("GreaterOrEqual_int64", N("GreaterOrEqual", ["a", "b"], ["y"]), {"a": r.i(-3, 3, 2, 3), "b": r.i(-3, 3, 3)},
         opset=16)
    case("And_bcast", N("And", ["a", "b"], ["y"]), {"a": r.b(2, 3), "b": r.b(3)})
    case("Or_basic", N("Or", ["a", "b"], ["y"]), {"a": r.b(2, 3), "b": r.b(2, 1)})
    case("Xor_basic", N("Xor", ["a", "b"], ["y"]), {"a": r.b(4), "b": r.b(4)})


def range_tile_cases():
    r = Rand(130)
    rg = lambda: N("Range", ["start", "limit", "delta"], ["y"])
    case("Range_float", rg(), {"start": f32(0.5), "limit": f32(3.9), "delta": f32(0.7)},
         note="float, ceil((3.9-0.5)/0.7) = 5 elements; scalars as graph inputs")
    case("Range_int64_neg_delta", rg(), {"start": i64(10), "limit": i64(2), "delta": i64(-3)},
         note="negative delta: [10,7,4]")
    case("Range_int64_init", rg(), {}, {"start": i64(0), "limit": i64(5), "delta": i64(1)},
         note="all initializers (the arange(n) pattern)")
    case("Range_empty", rg(), {"start": i64(5), "limit": i64(5), "delta": i64(2)}, note="start == limit: empty")
    case("Range_int32", rg(), {"start": np.array(-3, np.int32), "limit": np.array(4, np.int32),
                                "delta": np.array(2, np.int32)}, note="int32")
    case("Range_float_neg", rg(), {"start": f32(1.0), "limit": f32(-1.3), "delta": f32(-0.45)},
         note="float, negative delta: 6 elements")
    tl = lambda: N("Tile", ["x", "repeats"], ["y"])
    case("Tile_basic", tl(), {"x": r.n(2, 3)}, {"repeats": i64([2, 3])})
    case("Tile_3d", tl(), {"x": r.n(2, 1, 3)}, {"repeats": i64([1, 2, 1])})
    case("Tile_repeats_input", tl(), {"x": r.n(2, 2), "repeats": i64([3, 1])}, note="repeats as graph input (dynamic)")
    case("Tile_int64", tl(), {"x": i64([1, 2])}, {"repeats": i64([3])}, note="int64")
    case("Tile_empty_huge_repeats", tl(), {"x": r.n(2, 0, 3)}, {"repeats": i64([2, 1 << 31, 2])},
         note="an empty input repeated 2^31 times is still empty: [4,0,6] (a fuzz find: candle looped per repeat)")
    case("Tile_ones", tl(), {"x": r.n(2, 3)}, {"repeats": i64([1, 1])}, note="identity repeats")


def einsum_cases():
    r = Rand(131)
    es = lambda eq, k=2: N("Einsum", ["a", "b"][:k], ["y"], equation=eq)
    case("Einsum_bmm", es("bij,bjk->bik"), {"a": r.n(2, 3, 4), "b": r.n(2, 4, 5)}, opset=12, note="batched matmul")
    case("Einsum_attention_qk", es("bhqd,bhkd->bhqk"), {"a": r.n(2, 2, 3, 4), "b": r.n(2, 2, 5, 4)}, opset=12,
         note="Q K^T")
    case("Einsum_attention_av", es("bhqk,bhkd->bhqd"), {"a": r.n(2, 2, 3, 5), "b": r.n(2, 2, 5, 4)}, opset=12)
    case("Einsum_transpose", es("ij->ji", 1), {"a": r.n(3, 4)}, opset=12, note="single operand transpose")
    case("Einsum_dot", es("i,i->"), {"a": r.n(6), "b": r.n(6)}, opset=12, note="dot product, 0-d output")
    case("Einsum_bid_jd", es("bid,jd->bij"), {"a": r.n(2, 3, 4), "b": r.n(5, 4)}, opset=12,
         note="linear layer without bias")
    case("Einsum_ellipsis", es("...ij,...jk->...ik"), {"a": r.n(2, 3, 3, 4), "b": r.n(2, 3, 4, 2)}, opset=12,
         note="ellipsis batch dims")
    case("Einsum_implicit", es("ij,jk"), {"a": r.n(3, 4), "b": r.n(4, 2)}, opset=12,
         note="implicit output (no ->): indices appearing once, sorted: ik")
    case("Einsum_reduce", es("bij->bj", 1), {"a": r.n(2, 3, 4)}, opset=12, note="sum over i")
    case("Einsum_opset13", es("ij,kj->ik"), {"a": r.n(3, 4), "b": r.n(5, 4)}, note="opset 13")


def mask_cases():
    r = Rand(132)
    mask = i64([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    def bert(value):
        return [
            N("Unsqueeze", ["mask", "axes"], ["m4"]),
            N("Cast", ["m4"], ["mf"], to=TP.FLOAT),
            N("Sub", ["one", "mf"], ["inv"]),
            N("Mul", ["inv", "big"], ["bias"]),
            N("Add", ["scores", "bias"], ["s"]),
            N("Softmax", ["s"], ["y"], axis=-1),
        ], {"axes": i64([1, 2]), "one": f32(1.0), "big": f32(value)}

    nodes, inits = bert(-10000.0)
    case("Subgraph_bert_mask", nodes, {"scores": r.n(2, 2, 5, 5), "mask": mask}, inits,
         note="BERT attention mask: Unsqueeze [B,S]->[B,1,1,S], Cast, 1-m, *-10000, add to scores, Softmax")
    nodes, inits = bert(FMIN)
    case("Subgraph_bert_mask_finfo_min", nodes, {"scores": r.n(2, 2, 5, 5), "mask": mask}, inits,
         note="same with finfo(float32).min: (1-1)*min = -0, score+min = min, exp underflows to 0")
    nodes = [
        N("Equal", ["mask", "zero"], ["is_pad"]),
        N("Unsqueeze", ["is_pad", "axes"], ["p4"]),
        N("Where", ["p4", "neg", "scores"], ["s"]),
        N("Softmax", ["s"], ["y"], axis=-1),
    ]
    case("Subgraph_where_mask", nodes, {"scores": r.n(2, 2, 5, 5), "mask": mask},
         {"zero": i64(0), "axes": i64([1, 2]), "neg": f32(FMIN)},
         note="mask via Equal/Where with finfo.min (HF newer exports)")
    nodes = [N("Cast", ["m"], ["mf"], to=TP.FLOAT), N("Mul", ["x", "mf"], ["y"])]
    case("Subgraph_mul_bool_mask", nodes, {"x": r.n(2, 3, 4), "m": r.b(2, 3, 1)},
         note="bool mask cast to float and multiplied")


# --------------------------------------------------------------------------------------------------
# Quantization


def quant_cases():
    r = Rand(133)
    q = lambda ins, **kw: N("QuantizeLinear", list(ins), ["y"], **kw)
    dq = lambda ins, **kw: N("DequantizeLinear", list(ins), ["y"], **kw)
    # exact ties and saturation with a power-of-two scale: x/s is exact
    ties = f32([1.25, 1.75, -0.25, -0.75, 0.0, 0.25, 200.0, -100.0, -5.25, 63.75, 64.25, 2.5])
    case("QuantizeLinear_u8_zp", q(["x", "s", "zp"]), {"x": r.n(2, 3, 4, scale=3.0)},
         {"s": f32(0.05), "zp": np.array(128, np.uint8)}, note="per-tensor uint8, zero point 128")
    case("QuantizeLinear_u8_ties_saturate", q(["x", "s", "zp"]), {"x": ties},
         {"s": f32(0.5), "zp": np.array(10, np.uint8)},
         note="scale 0.5: x/s = 2.5 -> 2, 3.5 -> 4 (half to even), -0.5 -> -0; saturate to [0,255]")
    case("QuantizeLinear_i8_zp_ties", q(["x", "s", "zp"]), {"x": ties}, {"s": f32(0.5), "zp": np.array(-3, np.int8)},
         note="int8 with zero point -3: ties to even, saturate to [-128,127]")
    case("QuantizeLinear_no_zp_default_u8", q(["x", "s"]), {"x": r.n(3, 4, scale=4.0)}, {"s": f32(0.03)},
         note="no zero point input: output is uint8 (zp 0), negatives clamp to 0")
    case("QuantizeLinear_per_axis0_i8", q(["x", "s", "zp"], axis=0), {"x": r.n(3, 4, scale=2.0)},
         {"s": f32([0.01, 0.02, 0.05]), "zp": np.array([0, -5, 3], np.int8)}, note="per-axis axis 0, int8")
    case("QuantizeLinear_per_axis1_default", q(["x", "s", "zp"]), {"x": r.n(2, 3, 4)},
         {"s": f32([0.01, 0.02, 0.04]), "zp": np.array([0, 10, -10], np.int8)},
         note="per-axis with the axis attribute omitted (default 1), int8")
    case("QuantizeLinear_per_axis_neg", q(["x", "s", "zp"], axis=-1), {"x": r.n(2, 3, 4)},
         {"s": f32([0.01, 0.02, 0.03, 0.04]), "zp": np.array([128, 100, 150, 0], np.uint8)},
         note="per-axis axis -1, uint8")
    case("QuantizeLinear_opset21_u8", q(["x", "s", "zp"]), {"x": ties}, {"s": f32(0.5), "zp": np.array(10, np.uint8)},
         opset=21, note="QuantizeLinear-21 per-tensor")
    case("QuantizeLinear_opset21_blocked_i8", q(["x", "s", "zp"], axis=1, block_size=2), {"x": r.n(4, 6)},
         {"s": r.u(0.01, 0.05, 4, 3), "zp": r.i(-5, 5, 4, 3, dtype=np.int8)},
         opset=21, note="blocked: scale [4,3], block_size 2 along axis 1")
    case("QuantizeLinear_opset21_blocked_partial", q(["x", "s"], axis=0, block_size=4, output_dtype=TP.INT8),
         {"x": r.n(6, 4)}, {"s": r.u(0.01, 0.05, 2, 4)},
         opset=21, note="blocked along axis 0, block 4 on a dim of 6: last block partial; no zp, output_dtype int8")
    case("QuantizeLinear_opset21_output_dtype", q(["x", "s"], output_dtype=TP.INT8), {"x": r.n(3, 4)},
         {"s": f32(0.02)}, opset=21, note="no zero point, output_dtype attribute int8")
    case("QuantizeLinear_opset21_u16", q(["x", "s", "zp"]), {"x": r.n(3, 4, scale=10.0)},
         {"s": f32(0.001), "zp": np.array(32768, np.uint16)}, opset=21, note="uint16 (saturates at the extremes)")
    case("QuantizeLinear_opset21_i16", q(["x", "s", "zp"]), {"x": r.n(3, 4, scale=10.0)},
         {"s": f32(0.001), "zp": np.array(0, np.int16)}, opset=21, note="int16")
    int4_zp = helper.make_tensor("zp", TP.INT4, [4, 3], r.i(-3, 3, 12).tolist())
    case("QuantizeLinear_opset21_int4_roundtrip",
         [N("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1, block_size=2),
          N("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1, block_size=2)],
         {"x": r.n(4, 6)}, {"s": r.u(0.1, 0.3, 4, 3), "zp": int4_zp},
         op="QuantizeLinear", opset=21, note="blocked int4 quantize then dequantize (int4 saturates at [-8,7])")

    case("DequantizeLinear_u8_zp", dq(["x", "s", "zp"]), {"x": r.i(0, 256, 2, 3, 4, dtype=np.uint8)},
         {"s": f32(0.05), "zp": np.array(128, np.uint8)}, note="per-tensor uint8")
    case("DequantizeLinear_i8_nozp", dq(["x", "s"]), {"x": r.i(-128, 128, 3, 4, dtype=np.int8)}, {"s": f32(0.1)},
         note="int8, no zero point")
    case("DequantizeLinear_per_axis0_i8", dq(["x", "s", "zp"], axis=0), {"x": r.i(-128, 128, 3, 4, dtype=np.int8)},
         {"s": f32([0.1, 0.2, 0.3]), "zp": np.array([0, 1, -1], np.int8)}, note="per-axis axis 0")
    case("DequantizeLinear_per_axis1_default", dq(["x", "s", "zp"]), {"x": r.i(0, 256, 2, 3, 4, dtype=np.uint8)},
         {"s": f32([0.1, 0.2, 0.3]), "zp": np.array([128, 0, 255], np.uint8)},
         note="per-axis with the axis attribute omitted (default 1), uint8")
    case("DequantizeLinear_i32", dq(["x", "s"]), {"x": r.i(-100000, 100000, 6, dtype=np.int32)}, {"s": f32(0.0003)},
         note="int32 (bias) dequantize, no zero point")
    case("DequantizeLinear_opset21_blocked_i8", dq(["x", "s", "zp"], axis=1, block_size=2),
         {"x": r.i(-128, 128, 4, 6, dtype=np.int8)}, {"s": r.u(0.01, 0.05, 4, 3), "zp": r.i(-5, 5, 4, 3, dtype=np.int8)},
         opset=21, note="blocked along axis 1")
    w4 = helper.make_tensor("x", TP.INT4, [4, 6], r.i(-8, 8, 24).tolist())
    case("DequantizeLinear_opset21_int4_blocked", dq(["x", "s"], axis=1, block_size=3), {"s": r.u(0.01, 0.05, 4, 2)},
         {"x": w4}, opset=21, note="int4 weight initializer, blocked (block 3 along axis 1); scale is the graph input")
    u4 = helper.make_tensor("x", TP.UINT4, [3, 5], r.i(0, 16, 15).tolist())
    case("DequantizeLinear_opset21_uint4_zp", dq(["x", "s", "zp"]), {"s": f32(0.1)},
         {"x": u4, "zp": helper.make_tensor("zp", TP.UINT4, [], [8])}, opset=21,
         note="uint4 initializer, per-tensor zero point 8; scale is the graph input")
    case("Subgraph_qdq_u8", [N("QuantizeLinear", ["x", "s", "zp"], ["q"]), N("DequantizeLinear", ["q", "s", "zp"], ["y"])],
         {"x": r.n(2, 8, scale=3.0)}, {"s": f32(0.02), "zp": np.array(128, np.uint8)},
         note="fake-quant QDQ pair (saturates outside [-2.56, 2.54])")


# --------------------------------------------------------------------------------------------------
# Recurrent operators


def recurrent_cases():
    """LSTM, GRU, RNN. ONNX Runtime's CPU kernels refuse layout=1 (batch-first), so that attribute is
    checked against layout=0 in crates/zeropoint-engine/src/ops/recurrent.rs instead."""
    r = Rand(151)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}

    def rec(kind, name, nd, seq, batch, inp, hs, bias=True, lens=None, h0=False, c0=False, peep=False,
            outputs=None, opset=14, note="", **attrs):
        """One recurrent node: X, initial states and sequence_lens are graph inputs, weights initializers."""
        g = gates[kind]
        feeds = {"x": r.n(seq, batch, inp)}
        inits = {"w": r.n(nd, g * hs, inp, scale=0.6), "r": r.n(nd, g * hs, hs, scale=0.6)}
        names = ["x", "w", "r", "", "", "", "", ""]
        if bias:
            inits["b"] = r.n(nd, 2 * g * hs, scale=0.5)
            names[3] = "b"
        if lens is not None:
            feeds["lens"] = np.array(lens, np.int32)
            names[4] = "lens"
        state = (nd, batch, hs)
        if h0:
            feeds["h0"] = r.n(*state)
            names[5] = "h0"
        if c0:
            feeds["c0"] = r.n(*state)
            names[6] = "c0"
        if peep:
            inits["p"] = r.n(nd, 3 * hs, scale=0.5)
            names[7] = "p"
        while names[-1] == "":
            names.pop()
        outs = outputs or (["y", "yh", "yc"] if kind == "LSTM" else ["y", "yh"])
        direction = {1: "forward", 2: "bidirectional"}[nd] if "direction" not in attrs else attrs.pop("direction")
        node = N(kind, names, outs, hidden_size=hs, direction=direction, **attrs)
        case(f"{kind}_{name}", node, feeds, inits, opset=opset, note=note)

    # LSTM: gates iofc, W [dirs, 4h, input], B [dirs, 8h], P [dirs, 3h] in iof order.
    rec("LSTM", "forward", 1, 5, 2, 3, 4, note="forward, bias, zero initial states")
    rec("LSTM", "reverse", 1, 4, 2, 3, 4, direction="reverse", h0=True, c0=True,
        note="reverse direction with initial_h / initial_c")
    rec("LSTM", "bidirectional", 2, 5, 3, 4, 5, h0=True, c0=True,
        note="bidirectional with B, initial_h, initial_c: Y [seq, 2, batch, hidden]")
    rec("LSTM", "seqlens_bidirectional", 2, 6, 3, 3, 4, lens=[6, 3, 1], h0=True, c0=True,
        note="unequal sequence_lens: Y zero past a length, Y_h/Y_c the last valid step, reverse within length")
    rec("LSTM", "seqlens_zero", 2, 4, 3, 2, 3, lens=[4, 0, 2],
        note="a sequence of length 0: zero Y, ORT gives zero Y_h / Y_c")
    rec("LSTM", "peepholes", 1, 5, 2, 3, 4, c0=True, peep=True, note="peepholes P (order i, o, f)")
    rec("LSTM", "peepholes_bidirectional", 2, 4, 2, 3, 3, h0=True, c0=True, peep=True,
        note="bidirectional peepholes, P [2, 3h]")
    rec("LSTM", "clip", 2, 5, 2, 3, 4, h0=True, c0=True, peep=True, clip=0.6,
        note="cell clip 0.6 on every gate's pre-activation")
    rec("LSTM", "input_forget", 1, 5, 2, 3, 4, c0=True, input_forget=1, note="input_forget=1: f = 1 - i")
    rec("LSTM", "only_Y_h", 2, 4, 2, 3, 4, h0=True, c0=True, outputs=["", "yh"],
        note="Y and Y_c omitted: only Y_h requested")
    rec("LSTM", "only_Y_c", 1, 4, 2, 3, 4, outputs=["", "", "yc"], note="only Y_c requested")
    rec("LSTM", "opset12_nobias", 2, 6, 2, 4, 5, bias=False, opset=12,
        note="opset 12 (ddddocr / PaddleOCR exports), bidirectional, no B")
    rec("LSTM", "activations", 2, 4, 2, 3, 4, h0=True, c0=True,
        activations=["Sigmoid", "Relu", "Tanh", "Sigmoid", "Tanh", "Relu"],
        note="per-direction activations f, g, h")
    # GRU: gates zrh, W [dirs, 3h, input], B [dirs, 6h].
    rec("LSTM", "wide_bidirectional", 2, 3, 6, 37, 40, h0=True, c0=True,
        note="input 37, hidden 40, batch 6: x·Wᵀ and H·Rᵀ in the kernels' 16-lane chunks, their tail and edge tiles")
    rec("GRU", "forward", 1, 5, 2, 3, 4, note="forward, linear_before_reset=0")
    rec("GRU", "wide_lbr0", 1, 3, 5, 50, 33, h0=True,
        note="input 50, hidden 33, linear_before_reset=0: (r ⊙ H)·Rhᵀ on R's rows in place")
    rec("GRU", "forward_lbr1", 1, 5, 2, 3, 4, h0=True, linear_before_reset=1,
        note="linear_before_reset=1: h~ = g(x Wh + r * (H Rh + Rbh) + Wbh)")
    rec("GRU", "bidirectional_lbr0", 2, 5, 3, 4, 5, h0=True, note="bidirectional, linear_before_reset=0, initial_h")
    rec("GRU", "bidirectional_lbr1", 2, 5, 3, 4, 5, h0=True, linear_before_reset=1, opset=13,
        note="bidirectional, linear_before_reset=1 (PyTorch exports), opset 13")
    rec("GRU", "seqlens_bidirectional", 2, 6, 3, 3, 4, lens=[2, 6, 5], h0=True, linear_before_reset=1,
        note="unequal sequence_lens, bidirectional")
    rec("GRU", "seqlens_reverse_lbr0", 1, 5, 3, 3, 4, lens=[5, 1, 3], direction="reverse",
        note="reverse with sequence_lens, linear_before_reset=0")
    rec("GRU", "clip", 1, 5, 2, 3, 4, h0=True, clip=0.5, note="clip 0.5")
    rec("GRU", "opset17_nobias", 2, 5, 2, 4, 3, bias=False, opset=17, linear_before_reset=1,
        note="opset 17 seq2seq encoder style, no bias")
    rec("GRU", "only_Y_h", 2, 4, 2, 3, 4, outputs=["", "yh"], note="Y omitted")
    # RNN: W [dirs, h, input], B [dirs, 2h].
    rec("RNN", "forward", 1, 5, 2, 3, 4, note="forward, default Tanh")
    rec("RNN", "bidirectional_relu", 2, 5, 3, 4, 5, h0=True, activations=["Relu", "Relu"],
        note="bidirectional, Relu activations, initial_h")
    rec("RNN", "reverse_relu_seqlens", 1, 6, 3, 3, 4, lens=[6, 2, 4], direction="reverse", activations=["Relu"],
        note="reverse Relu RNN with sequence_lens")
    rec("RNN", "only_Y_h", 1, 4, 2, 3, 3, outputs=["", "yh"], note="Y omitted")


def control_flow_cases():
    """If, Loop and Scan with subgraphs that read outer-scope values (captures), nest, carry state and
    stack per-iteration outputs."""
    r = Rand(171)
    G = helper.make_graph
    vi = helper.make_tensor_value_info
    f, i, b = TP.FLOAT, TP.INT64, TP.BOOL

    # If: each branch captures outer values (an input and an initializer).
    then_g = G([N("Mul", ["x", "w"], ["t"])], "then", [], [vi("t", f, None)])
    else_g = G([N("Sub", ["x", "w"], ["e"])], "else", [], [vi("e", f, None)])
    for flag in (True, False):
        case(f"If_{'then' if flag else 'else'}_captures",
             N("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
             {"c": np.array(flag), "x": r.n(2, 3)}, {"w": r.n(3)},
             note=f"cond {flag}: the branch reads an outer input and an outer initializer")
    # If whose branches give different shapes, and an If nested in a branch.
    inner_then = G([N("Relu", ["x"], ["ir"])], "inner_then", [], [vi("ir", f, None)])
    inner_else = G([N("Neg", ["x"], ["ie"])], "inner_else", [], [vi("ie", f, None)])
    outer_then = G([N("If", ["c2"], ["n"], then_branch=inner_then, else_branch=inner_else),
                    N("Add", ["n", "x"], ["ot"])], "outer_then", [], [vi("ot", f, None)])
    outer_else = G([N("ReduceSum", ["x"], ["oe"], keepdims=0)], "outer_else", [], [vi("oe", f, None)])
    for c1, c2 in ((True, False), (False, True)):
        case(f"If_nested_{int(c1)}{int(c2)}",
             N("If", ["c1"], ["y"], then_branch=outer_then, else_branch=outer_else),
             {"c1": np.array([c1]), "c2": np.array(c2), "x": r.n(2, 3)},
             note="an If inside a branch; the branches give different ranks")

    # Loop as a for loop: carries a running sum, stacks each iteration's value (scan output).
    body = G([N("Cast", ["i"], ["fi"], to=f),
              N("Mul", ["x", "fi"], ["xi"]),
              N("Add", ["acc_in", "xi"], ["acc_out"]),
              N("Identity", ["cond_in"], ["cond_out"]),
              N("Tanh", ["acc_out"], ["scan"])],
             "body", [vi("i", i, []), vi("cond_in", b, []), vi("acc_in", f, None)],
             [vi("cond_out", b, []), vi("acc_out", f, None), vi("scan", f, None)])
    case("Loop_for_scan_output", N("Loop", ["m", "", "acc0"], ["acc", "scans"], body=body),
         {"m": np.array(4, np.int64), "x": r.n(3), "acc0": r.n(3)},
         note="trip count only; the body captures x; carried sum and stacked per-iteration outputs")
    body2 = G(list(body.node) + [N("Neg", ["xi"], ["scan2"])], "body2", list(body.input),
              list(body.output) + [vi("scan2", f, None)])
    case("Loop_two_scan_outputs", N("Loop", ["m", "", "acc0"], ["acc", "scans", "scans2"], body=body2),
         {"m": np.array(3, np.int64), "x": r.n(3), "acc0": r.n(3)},
         note="one carried value and two stacked outputs (found by fuzzing: the second was misindexed)")
    # Loop as a while loop: the body's condition stops it.
    body = G([N("Add", ["v_in", "one"], ["v_out"]),
              N("Less", ["v_out", "limit"], ["cond_out"]),
              N("Identity", ["cond_in"], ["unused"])],
             "body", [vi("i", i, []), vi("cond_in", b, []), vi("v_in", f, [1])],
             [vi("cond_out", b, [1]), vi("v_out", f, [1])])
    case("Loop_while_condition", N("Loop", ["m", "c", "v0"], ["v"], body=body),
         {"m": np.array(100, np.int64), "c": np.array(True), "v0": f32([0.5])},
         {"one": f32([1.0]), "limit": f32([6.0])},
         note="trip count and condition: stops when the body's condition turns false")
    case("Loop_zero_trips", N("Loop", ["m", "c", "v0"], ["v"], body=body),
         {"m": np.array(0, np.int64), "c": np.array(True), "v0": f32([0.5])},
         {"one": f32([1.0]), "limit": f32([6.0])},
         note="M = 0: the carried value comes back unchanged")

    # tf2onnx's LSTM loop: the weight rides along as state that the body passes on unchanged
    # (zeropoint's canonicalization makes it the body's initializer).
    body = G([N("MatMul", ["h_in", "w_in"], ["hw"]),
              N("Tanh", ["hw"], ["h_out"]),
              N("Identity", ["cond_in"], ["cond_out"])],
             "body", [vi("i", i, []), vi("cond_in", b, []), vi("h_in", f, [1, 4]), vi("w_in", f, [4, 4])],
             [vi("cond_out", b, []), vi("h_out", f, [1, 4]), vi("w_in", f, [4, 4])])
    case("Loop_carried_constant", N("Loop", ["m", "", "h0", "w"], ["h", "w_last"], body=body),
         {"m": np.array(3, np.int64), "h0": r.n(1, 4)}, {"w": r.n(4, 4)}, outputs=["h"],
         note="a weight carried as loop state and passed on unchanged, as tf2onnx writes LSTMs")

    # Scan: a running sum over the sequence axis, reverse and axis variants.
    body = G([N("Add", ["s_in", "xt"], ["s_out"]),
              N("Mul", ["s_out", "k"], ["yt"])],
             "body", [vi("s_in", f, [3]), vi("xt", f, [3])],
             [vi("s_out", f, [3]), vi("yt", f, [3])])
    case("Scan_running_sum", N("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1),
         {"s0": r.n(3), "xs": r.n(5, 3)}, {"k": r.n(3)},
         opset=16, note="state carried over 5 steps; the body captures an initializer")
    case("Scan_reverse_axes", N("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                                scan_input_axes=[1], scan_input_directions=[1],
                                scan_output_axes=[1], scan_output_directions=[1]),
         {"s0": r.n(3), "xs": r.n(3, 4)}, {"k": r.n(3)},
         opset=16, note="scan along axis 1 in reverse, outputs stacked on axis 1 in reverse")


# --------------------------------------------------------------------------------------------------
# Small multi-op models


def subgraph_cases():
    r = Rand(134)
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        N("Relu", ["c"], ["a"]),
        N("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        N("Flatten", ["p"], ["f"]),
        N("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    case("Subgraph_tiny_cnn", nodes, {"x": r.n(2, 1, 8, 8)},
         {"w": r.n(4, 1, 3, 3), "b": r.n(4), "fw": r.n(10, 64, scale=0.2), "fb": r.n(10)},
         note="Conv -> Relu -> MaxPool -> Flatten -> Gemm(transB)")
    nodes = [
        N("Shape", ["x"], ["s"]),
        N("Gather", ["s", "zero"], ["n"]),
        N("Unsqueeze", ["n", "axes"], ["n1"]),
        N("Concat", ["n1", "minus1"], ["shape"], axis=0),
        N("Reshape", ["x", "shape"], ["y"]),
    ]
    case("Subgraph_dynamic_reshape", nodes, {"x": r.n(3, 2, 4)},
         {"zero": i64(0), "axes": i64([0]), "minus1": i64([-1])}, dims={"x": ["N", 2, 4]},
         note="PyTorch x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape; batch dim symbolic")
    nodes = [N("MatMul", ["x", "w"], ["m"]), N("Add", ["m", "b"], ["a"]), N("Relu", ["a"], ["y"])]
    case("Subgraph_dynamic_batch", nodes, {"x": r.n(3, 4)}, {"w": r.n(4, 5), "b": r.n(5)}, dims={"x": ["N", 4]},
         note="graph input declared [N,4] (dim_param N), run at batch 3")
    nodes = [
        N("MatMul", ["x", "wq"], ["q"]),
        N("MatMul", ["x", "wk"], ["k"]),
        N("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        N("MatMul", ["q", "kt"], ["qk"]),
        N("Mul", ["qk", "scale"], ["qks"]),
        N("Softmax", ["qks"], ["p"], axis=-1),
        N("MatMul", ["p", "x"], ["y"]),
    ]
    case("Subgraph_self_attention", nodes, {"x": r.n(2, 5, 8)},
         {"wq": r.n(8, 8, scale=0.3), "wk": r.n(8, 8, scale=0.3), "scale": f32(1 / np.sqrt(8))},
         dims={"x": ["batch", "seq", 8]}, note="single-head attention, symbolic batch and sequence dims")
    nodes = [
        N("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        N("Sigmoid", ["c"], ["s"]),
        N("Mul", ["c", "s"], ["m"]),
        N("Sigmoid", ["m"], ["t"]),
        N("Mul", ["t", "m"], ["u"]),
        N("Add", ["u", "t"], ["y"]),
    ]
    case("Subgraph_silu", nodes, {"x": r.n(2, 3, 20, 30, scale=3.0)}, {"w": r.n(8, 3, 3, 3), "b": r.n(8)},
         note="Conv -> Sigmoid -> Mul (YOLO's SiLU, which the executor runs as one pass), then a SiLU with the "
              "product's operands swapped and its Sigmoid read again")


def integer_cases():
    r = Rand(150)
    u8 = lambda v: np.array(v, np.uint8)
    ci = lambda **kw: N("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **kw)
    case("ConvInteger_zero_points", ci(pads=[1, 1, 1, 1]), {"x": r.i(0, 256, 1, 3, 6, 6, dtype=np.uint8)},
         {"w": r.i(0, 256, 4, 3, 3, 3, dtype=np.uint8), "xz": u8(128), "wz": u8(120)},
         note="uint8 codes, zero-points, padded: exact in float32")
    case("ConvInteger_beyond_float32", ci(), {"x": np.full((1, 65, 3, 3), 255, np.uint8)},
         {"w": np.full((2, 65, 3, 3), 253, np.uint8), "xz": u8(0), "wz": u8(0)},
         note="an odd sum of 585 odd products, 37.7M: past 2^24, float32 would round it")
    mi = lambda: N("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    i8 = lambda v: np.array(v, np.int8)
    case("MatMulInteger_zero_points", mi(), {"a": r.i(0, 256, 2, 3, 16, dtype=np.uint8)},
         {"b": r.i(-128, 128, 16, 5, dtype=np.int8), "az": u8(131), "bz": r.i(-3, 4, 5, dtype=np.int8)},
         note="batched uint8 A times int8 B, a scalar and a per-column zero-point: exact in float32")
    case("MatMulInteger_beyond_float32", mi(), {"a": np.full((1, 601), 255, np.uint8)},
         {"b": np.full((601, 2), -127, np.int8), "az": u8(0), "bz": i8(0)},
         note="an odd sum of 601 odd products, −19.5M: past 2^24, float32 would round it")


def spectral_cases():
    """DFT (opsets 17 and 20) and STFT (17): the Fourier front ends of audio models."""
    r = Rand(173)
    d17 = lambda k=1, **a: N("DFT", ["x", "n"][:k], ["y"], **a)
    case("DFT_real_forward", d17(), {"x": r.n(2, 12, 1, scale=0.3)}, opset=17, note="real signal along axis 1, full spectrum")
    case("DFT_complex_forward", d17(), {"x": r.n(2, 10, 2, scale=0.3)}, opset=17, note="complex signal, n = 10 (not a power of two)")
    case("DFT_real_onesided", d17(onesided=1), {"x": r.n(3, 16, 1, scale=0.3)}, opset=17, note="RFFT: n/2 + 1 = 9 bins")
    case("DFT_odd_onesided", d17(onesided=1), {"x": r.n(2, 15, 1, scale=0.3)}, opset=17, note="RFFT of odd n: 8 bins")
    case("DFT_inverse", d17(inverse=1), {"x": r.n(2, 12, 2, scale=0.3)}, opset=17, note="complex inverse, scaled by 1/n")
    case("DFT_padded", d17(2), {"x": r.n(2, 9, 1, scale=0.3)}, {"n": i64(16)}, opset=17, note="dft_length 16 > 9: zero-padded")
    case("DFT_truncated", d17(2, onesided=1), {"x": r.n(2, 20, 1, scale=0.3)}, {"n": i64(12)}, opset=17,
         note="dft_length 12 < 20: the first 12 values")
    case("DFT_axis2", d17(axis=2), {"x": r.n(2, 3, 8, 2, scale=0.3)}, opset=17, note="transform along axis 2 of [2,3,8,2]")
    case("DFT_axis_neg", d17(axis=-3), {"x": r.n(2, 6, 4, 1, scale=0.3)}, opset=17, note="axis -3 is axis 1")
    case("DFT_irfft", d17(inverse=1, onesided=1), {"x": r.n(2, 9, 2, scale=0.3)}, opset=17,
         note="one-sided inverse: 9 bins to a real signal of 16")
    d20 = lambda **a: N("DFT", ["x", "n", "axis"], ["y"], **a)
    case("DFT20_axis_input", d20(onesided=1), {"x": r.n(2, 5, 10, 1, scale=0.3)}, {"n": i64(10), "axis": i64(-2)}, opset=20,
         note="opset 20: the axis is an input (-2: the last signal axis)")
    case("DFT20_default_axis", N("DFT", ["x"], ["y"]), {"x": r.n(3, 7, 2, scale=0.3)}, opset=20,
         note="opset 20 default axis -2")
    st = lambda k=4, **a: N("STFT", ["x", "step", "w", "len"][:k], ["y"], **a)
    hann = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(16) / 16)).astype(np.float32)
    case("STFT_hann", st(3), {"x": r.n(2, 64, 1, scale=0.3)}, {"step": i64(8), "w": hann}, opset=17,
         note="Hann window of 16, hop 8: 7 frames of 9 bins")
    case("STFT_length_only", N("STFT", ["x", "step", "", "len"], ["y"]), {"x": r.n(1, 50, 1, scale=0.3)},
         {"step": i64(10), "len": i64(20)}, opset=17, note="no window (rectangular), frame 20 of 50: 4 frames")
    case("STFT_twosided", st(3, onesided=0), {"x": r.n(1, 40, 1, scale=0.3)}, {"step": i64(5), "w": hann[:12] + 0.1}, opset=17,
         note="both sides of the spectrum, odd step")
    case("STFT_window_and_length", st(4), {"x": r.n(2, 33, 1, scale=0.3)}, {"step": i64(4), "w": hann, "len": i64(16)}, opset=17,
         note="window and frame_length both given; signal length not a multiple of the hop")
    case("STFT_rank2_signal", st(3), {"x": r.n(2, 48, scale=0.3)}, {"step": i64(8), "w": hann}, opset=17,
         note="a real signal as [batch, length], which ONNX Runtime accepts (torch.stft exports)")


FAMILIES = [
    conv_cases, conv_transpose_cases, gemm_cases, matmul_cases, batchnorm_cases, activation_cases, unary_cases,
    softmax_cases, pool_cases, binary_cases, pow_cases, concat_cases, reshape_cases, flatten_cases,
    transpose_cases, squeeze_cases, pad_cases, resize_cases, dropout_constant_shape_cases, gather_cases, index_cases,
    slice_cases, split_cases, cast_cases, variadic_cases, reduce_cases, layernorm_cases, gelu_cases,
    where_expand_cases, compare_logic_cases, range_tile_cases, einsum_cases, mask_cases, quant_cases,
    subgraph_cases, recurrent_cases, control_flow_cases, integer_cases, spectral_cases,
]


def main(argv):
    if len(argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    start = time.perf_counter()
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        family()
    names = [c["name"] for c in CASES]
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, f"duplicate case names: {sorted(dup)}"
    index = []
    for c in CASES:
        name = c["name"]
        assert name.replace("_", "").isalnum() and name.isascii(), name
        try:
            model = build_model(c)
            results = run_ort(model, c["inputs"])
            dropped = fix_output_shapes(model, results)
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # onnxruntime (or the checker) rejects it: leave the case out
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"skipped {name}: {msg[:300]}", file=sys.stderr)
            continue
        note = c["note"]
        if dropped:
            note += f" [declared shape of {', '.join(dropped)} dropped: ONNX inference disagreed with onnxruntime]"
            print(f"note {name}: dropped inferred shape of {dropped}", file=sys.stderr)
        d = out / name
        d.mkdir(exist_ok=True)
        (d / "model.onnx").write_bytes(model.SerializeToString())
        write_npz(d / "inputs.npz", c["inputs"])
        write_npz(d / "expected.npz", dict(zip(c["outputs"], results)))
        ops = sorted({n.op_type for n in model.graph.node})  # the main graph's
        index.append({"name": name, "op": c["op"], "opset": c["opset"], "note": note, "ops": ops})
    (out / "cases.json").write_text("[\n" + ",\n".join(json.dumps(e) for e in index) + "\n]\n")
    print(f"{len(index)} cases written ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
