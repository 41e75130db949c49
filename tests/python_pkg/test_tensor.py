"""Tensors: the kernels against numpy's formula and the onnx reference evaluator, packing,
zero-copy outputs, and errors."""

import numpy as np
import pytest

import zeropoint as zp


def reference_quantize(x, scale, zero_point, qmin, qmax):
    # ONNX QuantizeLinear: a true division, round half to even, saturate.
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax)


@pytest.mark.parametrize(
    "bits,symmetric,signed", [(8, False, False), (8, True, True), (16, False, False), (16, True, True), (6, False, True)]
)
def test_quantize_matches_the_onnx_formula(bits, symmetric, signed):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal(10_000) * 3).astype(np.float32)
    s = zp.Scheme(bits=bits, symmetric=symmetric, signed=signed)
    scale, z = zp.params_from_range(s, float(x.min()) * 0.8, float(x.max()) * 0.8)  # some saturate
    q = zp.quantize(x, s, scale, z)
    qmin, qmax = s.grid
    assert q.dtype == np.dtype(s.storage)
    np.testing.assert_array_equal(q.astype(np.int64), reference_quantize(x, scale, z, qmin, qmax))
    back = zp.dequantize(q, s, scale, z)
    np.testing.assert_array_equal(back, ((q.astype(np.float32) - z) * np.float32(scale)).astype(np.float32))
    np.testing.assert_array_equal(zp.fake_quant(x, s, scale, z), back)


def test_ties_round_to_even_and_nan_goes_to_qmin():
    s = zp.Scheme(bits=8)
    x = np.array([0.5, 1.5, 2.5, -0.5, np.nan, np.inf, -np.inf], dtype=np.float32)
    q = zp.quantize(x, s, 1.0, 10)
    np.testing.assert_array_equal(q, [10, 12, 12, 10, 0, 255, 0])


def test_per_channel_and_blocked_match_the_onnx_reference_evaluator():
    onnx = pytest.importorskip("onnx")
    from onnx import helper, TensorProto
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 40)).astype(np.float32)
    for scheme, axis, block in [
        (zp.Scheme(bits=8, symmetric=True, granularity="per-channel", axis=0), 0, 0),
        (zp.Scheme(bits=8, granularity="per-block", axis=1, block_size=16), 1, 16),
    ]:
        scale, z = zp.params_from_data(w, scheme)
        q = zp.quantize(w, scheme, scale, z)
        attrs = {"axis": axis} | ({"block_size": block} if block else {})
        node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)
        zdtype = TensorProto.INT8 if scheme.signed else TensorProto.UINT8
        graph = helper.make_graph(
            [node],
            "q",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, w.shape),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, scale.shape),
                helper.make_tensor_value_info("z", zdtype, z.shape),
            ],
            [helper.make_tensor_value_info("y", zdtype, w.shape)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        ref = ReferenceEvaluator(model).run(None, {"x": w, "s": scale, "z": z.astype(q.dtype)})[0]
        np.testing.assert_array_equal(q, ref, err_msg=repr(scheme))


def test_int4_codes_are_packed_as_onnx_packs_them():
    s = zp.Scheme(bits=4, symmetric=True)
    x = np.array([-8, -1, 0, 1, 7, 3, -5], dtype=np.float32)
    packed = zp.quantize(x, s, 1.0)
    assert packed.dtype == np.uint8 and packed.shape == (4,)
    codes = np.array([-8, -1, 0, 1, 7, 3, -5, 0], dtype=np.int8).astype(np.uint8) & 0xF
    np.testing.assert_array_equal(packed, codes[0::2] | (codes[1::2] << 4))  # element 0 low nibble
    np.testing.assert_array_equal(zp.dequantize(packed, s, 1.0, shape=x.shape), x)
    wide = zp.quantize(x, s, 1.0, storage="int8")  # one code per element instead
    np.testing.assert_array_equal(wide, x.astype(np.int8))


def test_outputs_are_written_in_place_without_copies():
    s = zp.Scheme(bits=8)
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    expected = zp.fake_quant(x, s, 0.01, 128)
    y = x.copy()
    assert zp.fake_quant(y, s, 0.01, 128, out=y) is y
    np.testing.assert_array_equal(y, expected)
    out = np.empty(1000, dtype=np.uint8)
    assert zp.quantize(x, s, 0.01, 128, out=out) is out
    # A non-contiguous or float64 input is converted once, with the same result.
    np.testing.assert_array_equal(zp.quantize(x.astype(np.float64), s, 0.01, 128), out)
    twice = np.repeat(x, 2)[::2]
    np.testing.assert_array_equal(zp.quantize(twice, s, 0.01, 128), out)


def test_params_from_range_and_data():
    s = zp.Scheme(bits=8)
    scale, z = zp.params_from_range(s, -1.0, 3.0)
    assert scale == pytest.approx(4 / 255) and z == 64
    sc, zz = zp.params_from_range(zp.Scheme(bits=8, symmetric=True), [-1.0, -2.0], [0.5, 4.0])
    np.testing.assert_allclose(sc, [1 / 127, 4 / 127], rtol=1e-6)
    np.testing.assert_array_equal(zz, [0, 0])
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    sc, zz = zp.params_from_data(w, zp.Scheme(bits=8, symmetric=True, granularity="per-channel"))
    assert sc.shape == (3,)
    np.testing.assert_allclose(sc, np.abs(w).max(axis=1) / 127, rtol=1e-6)


def test_explain_reports_parameters_and_the_error_split():
    s = zp.Scheme(bits=4)
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    e = zp.explain(s, -1.0, 3.0, data=x)
    assert (e.scale, e.zero_point, e.offset) == (pytest.approx(4 / 15), 4, -4)
    assert e.grid == (0, 15)
    fq = zp.fake_quant(x, s, e.scale, e.zero_point)
    assert e.mse == pytest.approx(float(np.mean((fq.astype(np.float64) - x) ** 2)), rel=1e-6)
    assert e.clip_mse + e.round_mse == pytest.approx(e.mse, rel=1e-6)
    lo, hi = e.real_range  # the grid's ends: (qmin - z)·s, (qmax - z)·s
    assert (lo, hi) == (pytest.approx(-4 * e.scale), pytest.approx(11 * e.scale))
    assert e.clipped_fraction == float(np.mean((x < lo) | (x > hi)))
    assert e.verdict in ("coarse", "moderate", "fine") and e.clips
    assert zp.explain(s, data=x).min == float(x.min())


def test_bad_arguments_raise_one_line_errors():
    s = zp.Scheme(bits=8)
    x = np.ones(10, dtype=np.float32)
    cases = [
        (lambda: zp.Scheme(bits=1), "bit-width 1"),
        (lambda: zp.Scheme(granularity="per-row"), "granularity 'per-row'"),
        (lambda: zp.quantize(x, s, 0.0), "scale 0"),
        (lambda: zp.quantize(x, s, float("nan")), "scale NaN"),
        (lambda: zp.quantize(x, s, 0.1, 300), "zero-point 300"),
        (lambda: zp.quantize(x, s, [0.1, 0.2], [0, 0]), "scale holds 2 values"),
        (lambda: zp.quantize(x, s, 0.1, out=np.empty(3, np.uint8)), "out has shape [3]"),
        (lambda: zp.quantize(x, s, 0.1, storage="int3"), "storage 'int3'"),
        (lambda: zp.quantize(x, s, 0.1, storage="int8"), "does not fit in int8"),
        (lambda: zp.params_from_range(s, 2.0, 1.0), "inverted"),
        (lambda: zp.params_from_data(np.array([np.nan], np.float32), s), "NaN"),
        (lambda: zp.params_from_data(np.zeros(0, np.float32), s), "empty"),
        (lambda: zp.dequantize(np.zeros(3, np.float32), s, 0.1), "codes must be"),
    ]
    for call, text in cases:
        with pytest.raises(zp.SchemeError) as info:
            call()
        message = str(info.value)
        assert text in message and "\n" not in message, message
        assert isinstance(info.value, ValueError)


def test_schemes_pickle_and_compare():
    import pickle

    s = zp.Scheme(bits=4, symmetric=True, narrow=True, granularity="per-block", axis=1, block_size=64)
    t = pickle.loads(pickle.dumps(s))
    assert t == s and hash(t) == hash(s) and repr(t) == repr(s)
    assert (t.axis, t.block_size, t.grid, t.storage) == (1, 64, (-7, 7), "int4")
    assert zp.Scheme(bits=8) != zp.Scheme(bits=8, symmetric=True)


@pytest.mark.parametrize("bits,symmetric", [(2, True), (2, False), (3, False), (4, False)])
def test_every_packed_storage_round_trips(bits, symmetric):
    s = zp.Scheme(bits=bits, symmetric=symmetric)
    qmin, qmax = s.grid
    x = np.arange(qmin, qmax + 1, dtype=np.float32).repeat(3)[:-1]  # every code, odd length
    packed = zp.quantize(x, s, 1.0, 0 if symmetric else qmin * 0)
    per_byte = 8 // (2 if bits == 2 else 4)
    assert packed.dtype == np.uint8 and packed.shape == (-(-x.size // per_byte),)
    codes = np.clip(x, qmin, qmax).astype(np.int64) & ((1 << (8 // per_byte)) - 1)
    codes = np.concatenate([codes, np.zeros(-x.size % per_byte, np.int64)]).reshape(-1, per_byte)
    expected = sum(codes[:, k] << (k * 8 // per_byte) for k in range(per_byte)).astype(np.uint8)
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(zp.dequantize(packed, s, 1.0, 0, shape=x.shape), np.clip(x, qmin, qmax))


def test_the_gil_is_released_while_a_kernel_runs():
    import threading
    import time

    x = np.random.default_rng(0).standard_normal(1 << 24).astype(np.float32)
    o = zp.Observer("mse", zp.Scheme(bits=8))
    started, took = threading.Event(), []

    def work():
        started.set()
        t0 = time.perf_counter()
        o.update(x)  # one native call of about a tenth of a second
        took.append(time.perf_counter() - t0)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    last, longest = time.perf_counter(), 0.0
    while t.is_alive():  # this loop runs only while the other thread does not hold the GIL
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    t.join()
    # Holding the GIL, the call would stall this loop for its whole duration.
    assert longest < 0.5 * took[0], (longest, took[0])
