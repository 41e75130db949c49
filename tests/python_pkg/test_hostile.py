"""Hostile arguments to every tensor function and observer: each call returns or raises a
zeropoint.Error (one line) or the TypeError / ValueError / OverflowError of a wrong Python type;
never a Rust panic (pyo3's PanicException) or anything else."""

import itertools

import numpy as np

import zeropoint as zp

ARRAYS = [
    np.zeros(0, np.float32),
    np.float32(3.0),
    np.array(2.5, np.float32),
    np.ones((3, 0, 2), np.float32),
    np.array([np.nan, np.inf, -np.inf], np.float32),
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.arange(24, dtype=np.int64).reshape(4, 6),
    np.ones((5,), np.float16),
    [1.0, 2.0],
    "text",
    None,
    np.ones((2, 3), np.float32)[:, ::2],
    np.full(7, 1e38, np.float32),
]
SCHEMES = [
    dict(bits=2),
    dict(bits=16, symmetric=True),
    dict(bits=4, granularity="per-channel", axis=5),
    dict(bits=8, granularity="per-block", axis=1, block_size=1),
    dict(bits=8, granularity="per-block", axis=0, block_size=10**9),
    dict(bits=3, narrow=True, symmetric=True),
    dict(bits=8, pow2=True),
]
SCALES = [0.1, 0.0, -1.0, float("nan"), 1e-45, 1e38, [0.1, 0.2, 0.3], np.ones((2, 1, 4), np.float32), "x", None]
ZERO_POINTS = [None, 0, -1, 2**40, [0, 1, 2], 1.5, np.zeros((2, 1, 4), np.int64)]
METHODS = ["minmax", "ema", "percentile", "mse", "entropy", "cross-entropy", "abs-percentile"]


def outcome(f, *args, **kwargs):
    try:
        f(*args, **kwargs)
        return None
    except zp.Error as e:
        assert "\n" not in str(e), str(e)
        return None
    except (TypeError, ValueError, OverflowError):
        return None
    except BaseException as e:  # noqa: BLE001  (what this test is about)
        return f"{f.__name__}({[type(a).__name__ for a in args]}, {kwargs}): {type(e).__name__}: {e}"


def test_no_call_panics():
    schemes = [zp.Scheme(**s) for s in SCHEMES]
    failures = []
    for x, s, scale, z in itertools.product(ARRAYS, schemes, SCALES, ZERO_POINTS):
        failures += [
            outcome(zp.quantize, x, s, scale, z),
            outcome(zp.quantize, x, s, scale, z, storage="uint2"),
            outcome(zp.fake_quant, x, s, scale, z),
            outcome(zp.dequantize, x, s, scale, z),
            outcome(zp.dequantize, x, s, scale, z, shape=[3, 4]),
        ]
    for x, s in itertools.product(ARRAYS, schemes):
        failures += [
            outcome(zp.params_from_data, x, s),
            outcome(zp.params_from_range, s, x, x),
            outcome(zp.explain, s, data=x),
            outcome(zp.explain, s, -1.0, x),
        ]
        for m in METHODS:
            try:
                o = zp.Observer(m, s)
            except zp.Error:
                continue
            failures += [outcome(o.update, x), outcome(o.range), outcome(o.params)]
    failures = [f for f in failures if f]
    assert not failures, "\n".join(failures[:10])
