"""Shared fixtures of the Python package's tests: the embedded MNIST model and data, read with
numpy alone (an independent path from zeropoint's own idx reader)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
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


def int8_kernels_saturate():
    """Whether ONNX Runtime's uint8 x int8 kernels add int16 pairs with saturation here: x86 without
    VNNI (the rule of tests/support.rs's ort_int8_kernels_saturate)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


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
