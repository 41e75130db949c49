"""Shared fixtures of the Python package's tests: the embedded MNIST model and data, read with
numpy alone (an independent path from zeropoint's own idx reader)."""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# tests/python's rule for ONNX Runtime's int8 kernels on this CPU, re-exported to the tests here.
sys.path.insert(0, str(REPO / "tests" / "python"))
from ort_kernels import int8_kernels_saturate  # noqa: E402,F401
MODEL = REPO / "assets" / "models" / "mnist_cnn.onnx"
DATA = REPO / "assets" / "data"
# The embedded model's preprocessing (crates/zeropoint-cli/src/embedded.rs).
MEAN, STD = 0.1307, 0.3081


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(split: str, n: int):
    """(images [n, 1, 28, 28] float32 normalized, labels [n] int64)."""
    count = 500 if split == "train" else 2000
    images = read_idx(DATA / f"mnist-{split}-{count}-images-idx3-ubyte.gz")[:n]
    labels = read_idx(DATA / f"mnist-{split}-{count}-labels-idx1-ubyte.gz")[:n]
    x = ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None, :, :]
    return np.ascontiguousarray(x, dtype=np.float32), labels.astype(np.int64)


@pytest.fixture(scope="session")
def calib():
    return mnist("train", 200)[0]


@pytest.fixture(scope="session")
def test_set():
    return mnist("test", 500)


def ort_run(path, x, optimize=True):
    """The first output of the model in ONNX Runtime; without graph optimizations, QDQ pairs run
    as the separate QuantizeLinear / DequantizeLinear the spec defines (no integer kernels)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]
