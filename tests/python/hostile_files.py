#!/usr/bin/env python3
"""Hostile model and data files, as an attacker (or a broken exporter) would write them, for the
regression tests of docs/security.md (crates/zeropoint-cli/tests/hostile.rs).

  hostile_files.py OUT_DIR

Writes OUT_DIR/cases.json, a list of {"name", "args", "expect"}: the zeropoint arguments (paths
relative to OUT_DIR; {mnist} stands for the embedded MNIST CNN) and a text the one-line error must
contain, or null for a case that must succeed. Large files are sparse or compressed: the folder
takes a few MB of disk however large the sizes it claims.
"""

import io
import json
import os
import struct
import sys
import zipfile
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIB = 1 << 20
LIMIT = "64M"  # the --max-memory of the limit cases


def save_npy(path, array):
    np.save(path, array, allow_pickle=False)


def model(path, nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, path)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def external_model(folder, location):
    """y = x + w, w [4] float32 stored as external data at `location`."""
    os.makedirs(folder, exist_ok=True)
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    model(os.path.join(folder, "model.onnx"), [helper.make_node("Add", ["x", "w"], ["y"])],
          [f32("x", [4])], [f32("y", [4])], [w])
    save_npy(os.path.join(folder, "x.npy"), np.zeros(4, np.float32))


def escapes(out, cases):
    # A secret outside the model's folder, and links to it from inside.
    with open(os.path.join(out, "secret.bin"), "wb") as f:
        f.write(b"S" * 64)
    os.makedirs(os.path.join(out, "elsewhere"), exist_ok=True)
    with open(os.path.join(out, "elsewhere", "w.bin"), "wb") as f:
        f.write(b"S" * 64)
    external_model(os.path.join(out, "file_link"), "data.bin")
    os.symlink("../secret.bin", os.path.join(out, "file_link", "data.bin"))
    cases.append(case("external data through a linked file", ["run", "file_link/model.onnx", "-i", "file_link/x.npy"],
                      "outside the model's folder"))
    external_model(os.path.join(out, "dir_link"), "weights/w.bin")
    os.symlink("../elsewhere", os.path.join(out, "dir_link", "weights"))
    cases.append(case("external data through a linked folder", ["run", "dir_link/model.onnx", "-i", "dir_link/x.npy"],
                      "outside the model's folder"))
    external_model(os.path.join(out, "fifo"), "pipe.bin")
    os.mkfifo(os.path.join(out, "fifo", "pipe.bin"))
    cases.append(case("external data that is a FIFO", ["run", "fifo/model.onnx", "-i", "fifo/x.npy"],
                      "is not a regular file"))
    os.mkfifo(os.path.join(out, "model_fifo.onnx"))
    cases.append(case("a model that is a FIFO", ["graph", "model_fifo.onnx"], "not a regular file"))
    # An image folder whose file links out of it.
    os.makedirs(os.path.join(out, "images_link"), exist_ok=True)
    os.symlink("../secret.bin", os.path.join(out, "images_link", "a.png"))
    cases.append(case("an image that links out of its folder",
                      ["quantize", "{mnist}", "--calib", "images_link", "-o", "out.onnx"], "outside the folder"))


def sparse(path, size, head=b""):
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def npy_header(shape, descr="<f4"):
    """A version-1 .npy header for `shape`, padded as numpy pads it."""
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, str(tuple(shape)))
    total = 10 + len(d) + 1
    d += " " * ((total + 63) // 64 * 64 - total) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()


def limits(out, cases):
    lim = ["--max-memory", LIMIT]
    # Files larger than the limit, read whole.
    sparse(os.path.join(out, "big.npy"), 256 * MIB, npy_header([64 * MIB]))
    cases.append(case("an .npy file over the limit", ["inspect", "big.npy"] + lim, "over the memory limit"))
    sparse(os.path.join(out, "big.onnx"), 256 * MIB)
    cases.append(case("a model file over the limit", ["graph", "big.onnx"] + lim, "over the memory limit"))
    header = json.dumps({"w": {"dtype": "F32", "shape": [64 * MIB], "data_offsets": [0, 256 * MIB]}}).encode()
    sparse(os.path.join(out, "big.safetensors"), 8 + len(header) + 256 * MIB, struct.pack("<Q", len(header)) + header)
    cases.append(case("a safetensors file over the limit", ["inspect", "big.safetensors"] + lim, "over the memory limit"))
    # External data whose declared length is over the limit (the side file is that long).
    folder = os.path.join(out, "big_external")
    external_model(folder, "w.bin")
    m = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "length":
            e.value = str(256 * MIB)
    onnx.save(m, os.path.join(folder, "model.onnx"))
    sparse(os.path.join(folder, "w.bin"), 256 * MIB)
    cases.append(case("external data over the limit", ["run", "big_external/model.onnx", "-i", "big_external/x.npy"] + lim,
                      "over the memory limit"))
    # A compressed archive of 1 GiB of MNIST-shaped samples, honest and lying about its size:
    # read whole it is over the limit; streamed, the honest one calibrates in bounded memory.
    bomb(os.path.join(out, "bomb.npz"), (342392, 1, 28, 28), lie=False)
    cases.append(case("a 1 GiB .npz member read whole", ["run", "{mnist}", "-i", "bomb.npz"] + lim, "over the memory limit"))
    cases.append(case("a 1 GiB .npz member streamed", ["quantize", "{mnist}", "--calib", "bomb.npz", "--samples", "64",
                                                       "-o", "streamed.onnx"] + lim, None))
    bomb(os.path.join(out, "liar.npz"), (342392, 1, 28, 28), lie=True)
    cases.append(case("a .npz member lying about its size, read whole", ["run", "{mnist}", "-i", "liar.npz"] + lim,
                      "cannot decompress"))
    cases.append(case("a .npz member lying about its size, streamed",
                      ["quantize", "{mnist}", "--calib", "liar.npz", "-o", "out.onnx"] + lim, "the archive says the member holds"))
    # One sample of 1 GiB: refused before its first batch is allocated.
    bomb(os.path.join(out, "one_sample.npz"), (1, 268435456), lie=False, name="x")
    model(os.path.join(out, "wide.onnx"), [helper.make_node("Relu", ["x"], ["y"])], [f32("x", ["N", "M"])],
          [f32("y", ["N", "M"])])
    cases.append(case("a 1 GiB sample", ["quantize", "wide.onnx", "--calib", "one_sample.npz", "-o", "out.onnx"] + lim,
                      "a batch of 1 sample needs 1.0 GiB"))
    gz_labels(os.path.join(out, "labels-idx1-ubyte.gz"))
    save_npy(os.path.join(out, "digits.npy"), np.zeros((2, 1, 28, 28), np.float32))
    cases.append(case("a label file bomb", ["eval", "{mnist}", "{mnist}", "--data", "digits.npy", "--labels",
                                             "labels-idx1-ubyte.gz"] + lim, "larger than the memory limit"))
    png(os.path.join(out, "huge_image"), 60000, 60000)
    cases.append(case("an image claiming 60000x60000 pixels",
                      ["quantize", "{mnist}", "--calib", "huge_image", "-o", "out.onnx"] + lim, "cannot decode image"))
    operators(out, cases, lim)
    malformed(out, cases)


def bomb(path, shape, lie, name="input"):
    """An .npz whose member `name` of `shape` float32 zeros (about 1 GiB) deflates to about 1 MB.
    With `lie`, the archive declares 1 MiB for it."""
    head = npy_header(shape)
    body = 4 * int(np.prod(shape))
    size = len(head) + body
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc, zeros = [comp.compress(head)], zlib.crc32(head), bytes(16 * MIB)
    left = body
    while left:
        chunk = zeros[: min(left, len(zeros))]
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    parts.append(comp.flush())
    data = b"".join(parts)
    declared = MIB if lie else size
    name = f"{name}.npy".encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), declared, len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), declared,
                          len(name), 0, 0, 0, 0, 0, 0)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), len(local) + len(name) + len(data), 0)
    with open(path, "wb") as f:
        f.write(local + name + data + central + name + end)


def gz_labels(path):
    """An idx1 label file claiming 2 labels whose gzip body inflates to 512 MiB."""
    import gzip
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">II", 0x801, 2))
        zeros = bytes(16 * MIB)
        for _ in range(32):
            f.write(zeros)


def png(folder, width, height):
    """A PNG whose header claims width x height grayscale pixels, with almost no data."""
    os.makedirs(folder, exist_ok=True)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    with open(os.path.join(folder, "a.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def operators(out, cases, lim):
    """Operators whose output size their inputs decide, each asked for 2^40 elements."""
    folder = os.path.join(out, "ops")
    os.makedirs(folder, exist_ok=True)
    save_npy(os.path.join(folder, "x.npy"), np.zeros((2, 2), np.float32))
    big = 1 << 20
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    f32c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)
    ops = {
        "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
                            [i64("s", [big, big])]),
        "Expand": ([helper.make_node("Expand", ["x", "s"], ["y"])], [i64("s", [big, big, 2, 2])]),
        "Tile": ([helper.make_node("Tile", ["x", "r"], ["y"])], [i64("r", [big, big])]),
        "Range": ([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])],
                  [f32c("a", 0.0), f32c("b", float(1 << 40)), f32c("d", 1.0)]),
        "Pad": ([helper.make_node("Pad", ["x", "p"], ["y"])], [i64("p", [0, 0, big, big])]),
        "Resize": ([helper.make_node("Resize", ["x", "", "", "z"], ["y"])], [i64("z", [big, big])]),
        "Reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"])], [i64("s", [1 << 40, 1 << 40])]),
        # Products outgrow their operands: 8192 x 8192 floats from two 32 KiB ones.
        "MatMul outer product": ([helper.make_node("ConstantOfShape", ["s1"], ["col"]),
                                  helper.make_node("ConstantOfShape", ["s2"], ["row"]),
                                  helper.make_node("MatMul", ["col", "row"], ["y"])],
                                 [i64("s1", [8192, 1]), i64("s2", [1, 8192])]),
        # A broadcast of a column against a row (graph_mutations: an Add of two rewired inputs
        # asked for 9 GB).
        "Add outer broadcast": ([helper.make_node("ConstantOfShape", ["s1"], ["col"]),
                                 helper.make_node("ConstantOfShape", ["s2"], ["row"]),
                                 helper.make_node("Add", ["col", "row"], ["y"])],
                                [i64("s1", [8192, 1]), i64("s2", [1, 8192])]),
        "Where outer broadcast": ([helper.make_node("ConstantOfShape", ["s1"], ["col"]),
                                   helper.make_node("ConstantOfShape", ["s2"], ["row"]),
                                   helper.make_node("Less", ["x", "x"], ["m"]),
                                   helper.make_node("Where", ["m", "col", "row"], ["y"])],
                                  [i64("s1", [8192, 1, 1, 1]), i64("s2", [1, 8192, 1, 1])]),
        "Gather of repeated rows": ([helper.make_node("ConstantOfShape", ["s1"], ["idx"],
                                                      value=numpy_helper.from_array(np.array([0], np.int64))),
                                     helper.make_node("Gather", ["t", "idx"], ["y"])],
                                    [i64("s1", [8192]), f32c("t", np.ones((1, 8192)))]),
        "Conv pads": ([helper.make_node("Conv", ["x4", "w"], ["y"], pads=[big, big, big, big])],
                      [f32c("w", np.ones((1, 1, 1, 1)))]),
        "ConvTranspose strides": ([helper.make_node("ConvTranspose", ["x4", "w"], ["y"], strides=[big, big])],
                                  [f32c("w", np.ones((1, 1, 1, 1)))]),
        # Pooling windows over padding: graph_passes' MaxPool with pads up to 3.7M took 2.1 GB
        # under a 512 KiB limit.
        "MaxPool pads": ([helper.make_node("MaxPool", ["x4"], ["y"], kernel_shape=[1, 1], pads=[0, 0, big, big])], []),
        "AveragePool pads": ([helper.make_node("AveragePool", ["x4"], ["y"], kernel_shape=[1, 1],
                                               pads=[0, 0, big, big])], []),
        # A block whose square overflows (graph_mutations: it wrapped to 0, a remainder by zero).
        "DepthToSpace block": ([helper.make_node("DepthToSpace", ["x4"], ["y"], blocksize=1 << 32)], []),
    }
    # A loop that never ends (its condition stays true), and one whose per-iteration outputs,
    # stacked, outgrow the limit.
    vi = helper.make_tensor_value_info
    b, f = TensorProto.BOOL, TensorProto.FLOAT
    forever = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Neg", ["v_in"], ["v_out"])],
        "forever", [vi("i", TensorProto.INT64, []), vi("c_in", b, []), vi("v_in", f, None)],
        [vi("c_out", b, []), vi("v_out", f, None)])
    stacking = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Tile", ["v_in", "r"], ["big"])],
        "stacking", [vi("i", TensorProto.INT64, []), vi("c_in", b, []), vi("v_in", f, None)],
        [vi("c_out", b, []), vi("v_in_out", f, None), vi("big", f, None)])
    stacking.node.append(helper.make_node("Identity", ["v_in"], ["v_in_out"]))
    ops["Loop forever"] = ([helper.make_node("Loop", ["", "t", "x"], ["y"], body=forever)],
                           [numpy_helper.from_array(np.array(True), "t")])
    ops["Loop stacking"] = ([helper.make_node("Loop", ["m", "", "x"], ["last", "y"], body=stacking)],
                            [i64("m", 1 << 40), i64("r", [256, 256])])
    for op, (nodes, inits) in ops.items():
        name = op.replace(" ", "_")
        path = os.path.join(folder, f"{name}.onnx")
        if op.startswith("Conv") or "Pool" in op or "Space" in op:
            nodes = [helper.make_node("Reshape", ["x", "s4"], ["x4"])] + nodes
            inits = inits + [i64("s4", [1, 1, 2, 2])]
        model(path, nodes, [f32("x", [2, 2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        expect = {"Reshape": "cannot reshape", "Loop forever": "more than 1048576 iterations",
                  "DepthToSpace block": "do not divide into blocks"}.get(op, "over the memory limit")
        cases.append(case(f"{op} asked for a huge output", ["run", f"ops/{name}.onnx", "-i", "ops/x.npy"] + lim, expect))


def malformed(out, cases):
    """Nodes whose attributes contradict their inputs, found by fuzzing the graph passes."""
    folder = os.path.join(out, "ops")
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)
    f32c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)
    to_4d = helper.make_node("Reshape", ["x", "s4"], ["x4"])
    nodes = {
        # Gather on a rank-0 tensor has no axis to gather on.
        "Gather on a scalar": ([helper.make_node("Gather", ["c", "i"], ["g"]), helper.make_node("Add", ["x", "g"], ["y"])],
                               [f32c("c", 1.0), i64("i", 0)], "axis 0 is out of range for rank 0"),
        # Three kernel axes on an input with two spatial axes.
        "MaxPool kernel of the wrong rank": ([to_4d, helper.make_node("MaxPool", ["x4"], ["y"], kernel_shape=[1, 1, 1])],
                                             [], "does not fit the 2 spatial axes"),
        # A Resize from an axis of size 0 to 3: nothing to interpolate from (a fuzz find).
        "Resize of an empty axis": ([helper.make_node("Slice", ["x", "zero", "zero", "zero"], ["e"]),
                                     helper.make_node("Resize", ["e", "", "", "sz"], ["y"], mode="linear")],
                                    [i64("zero", [0]), i64("sz", [3, 2])], "there is nothing to resize"),
        # Pads whose sum fits but whose index range does not (a fuzz find: a capacity overflow).
        "Pad reflect with i64 extremes": ([helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect")],
                                          [i64("p", [-(1 << 63), 0, (1 << 63) - 1, 0])], "do not fit axis"),
        "Conv pads of 2^40": ([to_4d, helper.make_node("Conv", ["x4", "w"], ["y"], pads=[1 << 40] * 4)],
                              [f32c("w", np.ones((1, 1, 1, 1)))], "beyond the supported magnitude"),
        # The same axis twice (graph_mutations: an insertion past the end of the shape).
        "Unsqueeze of a repeated axis": ([helper.make_node("Unsqueeze", ["x", "ax"], ["y"])],
                                         [i64("ax", [3, 3])], "repeat an axis"),
        # Crops that leave fewer than no elements (ONNX Runtime refuses them too).
        "Pad cropping past the axis": ([helper.make_node("Pad", ["x", "crop"], ["y"])],
                                       [i64("crop", [0, -2, 0, -1])], "leave -1 elements of axis 1"),
        # A bias of another length than the output channels: the kernels index it per channel and
        # wrapped around; an empty one divided by zero (graph_mutations: a Conv whose bias was
        # rewired to an empty input).
        "Conv bias of the wrong length": ([to_4d, helper.make_node("Conv", ["x4", "w2", "b3"], ["y"])],
                                          [f32c("w2", np.ones((2, 1, 1, 1))), f32c("b3", [1, 2, 3])],
                                          "bias [3] for 2 output channels"),
        "Conv with an empty bias": ([to_4d, helper.make_node("Conv", ["x4", "w2", "b0"], ["y"])],
                                    [f32c("w2", np.ones((2, 1, 1, 1))), f32c("b0", np.zeros(0))],
                                    "bias [0] for 2 output channels"),
        "ConvTranspose bias of the wrong length": (
            [to_4d, helper.make_node("ConvTranspose", ["x4", "w2", "b3"], ["y"])],
            [f32c("w2", np.ones((1, 2, 1, 1))), f32c("b3", [1, 2, 3])], "bias [3] for 2 output channels"),
        # Weights that do not fit the input: the kernels read them with the wrong strides
        # (graph_mutations: a rank-3 weight on a 2-D convolution made a 4 GB output).
        "Conv weight of the wrong rank": ([to_4d, helper.make_node("Conv", ["x4", "w3"], ["y"])],
                                          [f32c("w3", np.ones((1, 200, 1)))], "the ranks must be equal"),
        "Conv weight of the wrong channels": ([to_4d, helper.make_node("Conv", ["x4", "w3c"], ["y"])],
                                              [f32c("w3c", np.ones((4, 3, 1, 1)))],
                                              "does not fit 1 input channels in 1 group(s)"),
        "Conv outputs not divisible by group": (
            [helper.make_node("Reshape", ["x", "s2c"], ["x2c"]), helper.make_node("Conv", ["x2c", "w3g"], ["y"], group=2)],
            [i64("s2c", [1, 2, 2, 1]), f32c("w3g", np.ones((3, 1, 1, 1)))], "does not fit 2 input channels in 2 group(s)"),
        # An output_shape of fewer axes than the kernel (graph_passes: indexed past its end).
        "ConvTranspose output_shape of one axis": (
            [to_4d, helper.make_node("ConvTranspose", ["x4", "w1t"], ["y"], output_shape=[3])],
            [f32c("w1t", np.ones((1, 1, 2, 2)))], "output_shape [3] does not fit 2 spatial axes"),
        "ConvTranspose weight of the wrong channels": (
            [to_4d, helper.make_node("ConvTranspose", ["x4", "w2t"], ["y"])],
            [f32c("w2t", np.ones((2, 1, 1, 1)))], "does not fit 1 input channels"),
        # Scatters and OneHot with operands that contradict each other.
        "ScatterND index out of range": ([helper.make_node("ScatterND", ["x", "nd_idx", "nd_u"], ["y"])],
                                         [i64("nd_idx", [[5, 0]]), f32c("nd_u", [1.0])],
                                         "index 5 is out of range for axis 0 of size 2"),
        "ScatterElements updates of another shape": (
            [helper.make_node("ScatterElements", ["x", "se_idx", "se_u"], ["y"])],
            [i64("se_idx", [[0]]), f32c("se_u", [[1.0, 2.0]])], "must have one shape"),
        "OneHot of depth 0": ([helper.make_node("OneHot", ["oh_i", "oh_d", "oh_v"], ["oh"]),
                               helper.make_node("Shape", ["oh"], ["oh_c0"]),
                               helper.make_node("Cast", ["oh_c0"], ["oh_c"], to=TensorProto.FLOAT),
                               helper.make_node("Add", ["x", "oh_c"], ["y"])],
                              [i64("oh_i", [0, 1]), i64("oh_d", [0]), f32c("oh_v", [0.0, 1.0])],
                              "depth must be one number, at least 1"),
        # Two nodes writing one value (graph_mutations: a layout Transpose's reader then sorted
        # before it, and the pass that moves Transposes removed a node past the end).
        "A value written twice": ([helper.make_node("Relu", ["x"], ["r"], name="first"),
                                   helper.make_node("Neg", ["x"], ["r"], name="second"),
                                   helper.make_node("Add", ["r", "x"], ["y"])],
                                  [], "node 'second' (Neg): its output 'r' is written twice: node 'first' (Relu) writes it too"),
        # A Split asked for 2^62 parts (graph_mutations: a capacity overflow).
        "Split into 2^62 parts": ([helper.make_node("Split", ["x"], ["y"], axis=0, num_outputs=1 << 62)],
                                  [], "does not fit the node's 1 outputs"),
    }
    for op, (ns, inits, expect) in nodes.items():
        name = op.replace(" ", "_").replace("^", "")
        path = os.path.join(folder, f"{name}.onnx")
        inits = inits + [i64("s4", [1, 1, 2, 2])]
        model(path, ns, [f32("x", [2, 2])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        cases.append(case(op, ["run", f"ops/{name}.onnx", "-i", "ops/x.npy"], expect))

def claims(out, cases):
    """Models whose headers claim what zeropoint must not take on trust."""
    save_npy(os.path.join(out, "x4.npy"), np.ones((2, 4), np.float32))
    # Quantized already (an ONNX Runtime quantize_dynamic-style MatMul): nothing float to calibrate.
    w = numpy_helper.from_array(np.ones((4, 2), np.uint8), "w")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "xs"], ["y"])]
    model(os.path.join(out, "quantized.onnx"), nodes, [f32("x", [2, 4])], [f32("y", [2, 2])], [w])
    # (--mode dynamic reads no --calib without --smoothquant, and refuses one.)
    for mode, data in (("static", ["--calib", "x4.npy"]), ("dynamic", [])):
        cases.append(case(f"a quantized model, {mode}", ["quantize", "quantized.onnx", *data, "--mode", mode, "-o",
                                                         "requantized.onnx"],
                          "quantized already (1 DynamicQuantizeLinear, 1 MatMulInteger"))
    # ONNX Runtime's operator format (QLinearConv, which zeropoint does not run): the same refusal.
    u8 = lambda name, v: numpy_helper.from_array(np.array(v, np.uint8), name)
    f = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)
    qconv = helper.make_node("QLinearConv", ["xq8", "s", "z", "wq8", "s", "z", "s", "z"], ["yq8"])
    model(os.path.join(out, "qlinear.onnx"), [qconv],
          [helper.make_tensor_value_info("xq8", TensorProto.UINT8, [1, 1, 2, 2])],
          [helper.make_tensor_value_info("yq8", TensorProto.UINT8, [1, 1, 2, 2])],
          [u8("wq8", np.ones((1, 1, 1, 1))), f("s", 0.5), u8("z", 0)])
    cases.append(case("a model in ONNX Runtime's operator format", ["quantize", "qlinear.onnx", "--calib", "x4.npy",
                                                                    "-o", "requantized.onnx"],
                      "quantized already (1 QLinearConv"))
    # A free batch dimension the graph cannot take (a Reshape to a constant shape inside):
    # calibration goes one sample at a time instead of failing.
    save_npy(os.path.join(out, "x8.npy"), np.arange(32, dtype=np.float32).reshape(8, 4))
    nodes = [helper.make_node("Reshape", ["x", "one_row"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1, 4], np.int64), "one_row"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "w2")]
    model(os.path.join(out, "batch_of_one.onnx"), nodes, [f32("x", ["N", 4])], [f32("y", [1, 2])], inits)
    cases.append(case("a free batch dimension that takes one sample", ["quantize", "batch_of_one.onnx", "--calib",
                                                                       "x8.npy", "-o", "one_at_a_time.onnx"], None))
    # High-bias absorption measured on data with a NaN in it: the ReLU between the two layers would
    # turn it into 0 in zeropoint's executor before the measured value, so the data is checked.
    conv = lambda name, x, y: helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name)
    nodes = [conv("c1", "x", "a"), helper.make_node("Relu", ["a"], ["h"]), conv("c2", "h", "y")]
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "c1_w"),
             numpy_helper.from_array(np.full(2, 5.0, np.float32), "c1_b"),
             numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "c2_w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "c2_b")]
    model(os.path.join(out, "two_convs.onnx"), nodes, [f32("x", [1, 2, 4, 4])], [f32("y", [1, 2, 4, 4])], inits)
    nan = np.zeros((3, 2, 4, 4), np.float32)
    nan[2, 1, 3, 3] = np.nan
    save_npy(os.path.join(out, "x_nan.npy"), nan)
    cases.append(case("equalization's statistics on data holding a NaN", ["equalize", "two_convs.onnx", "--calib",
                                                                         "x_nan.npy", "-o", "equalized.onnx"],
                      "input 'x': non-finite value (NaN): check the data"))
    # An opset no ONNX release defines: its operators mean nothing known, and runtimes refuse it.
    model(os.path.join(out, "opset1000.onnx"), [helper.make_node("Relu", ["x"], ["y"])],
          [f32("x", [2, 4])], [f32("y", [2, 4])], opset=1000)
    cases.append(case("an opset from the future", ["quantize", "opset1000.onnx", "--calib", "x4.npy",
                                                    "-o", "future.onnx"], "imports ai.onnx opset 1000"))


def case(name, args, expect):
    return {"name": name, "args": args, "expect": expect}


def main(out):
    os.makedirs(out, exist_ok=True)
    cases = []
    escapes(out, cases)
    limits(out, cases)
    claims(out, cases)
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print(f"{len(cases)} hostile cases in {out}")


if __name__ == "__main__":
    main(sys.argv[1])
