"""Models: run against ONNX Runtime, quantize_model from arrays and from files (the same
bytes), the quantized model in ONNX Runtime, evaluate, and errors."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

import zeropoint as zp
from conftest import DATA, MEAN, MODEL, STD, int8_kernels_saturate, mnist, ort_run

# The models the tests write declare IR version 10 (opsets up to 21), which every onnxruntime
# from 1.16 loads: onnx's default is its own newest, which the newest onnxruntime for
# CPython 3.9 (1.19) refuses.
IR = 10

ort = pytest.importorskip("onnxruntime")


def test_run_matches_onnx_runtime(test_set):
    x = test_set[0][:64]
    ours = zp.run(MODEL, {input_name(): x})
    (out,) = ours.values()
    np.testing.assert_allclose(out, ort_run(MODEL, x), rtol=1e-4, atol=1e-4)
    assert out.flags.writeable and out.dtype == np.float32


def input_name():
    import onnxruntime

    return onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).get_inputs()[0].name


def test_quantize_model_from_arrays_equals_from_files(tmp_path, calib, test_set):
    # The same 200 samples as a dict of arrays and as an .npy file: the same model, byte for byte.
    np.save(tmp_path / "calib.npy", calib)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ra = zp.quantize_model(MODEL, {input_name(): calib}, a)
    rb = zp.quantize_model(MODEL, tmp_path / "calib.npy", b)
    assert a.read_bytes() == b.read_bytes()
    assert ra.calibration_samples == 200 and ra.weights > 0 and ra.activations > 0
    # The per-layer report: a quarter of the calibration samples by default, at most 8.
    assert ra.report_samples == 8
    assert ra.bytes_after < ra.bytes_before
    assert [l.value for l in ra.layers] == [l.value for l in rb.layers]
    # The QDQ model runs in ONNX Runtime and keeps the float model's accuracy.
    x, labels = test_set
    float_acc = np.mean(ort_run(MODEL, x).argmax(1) == labels)
    quant_acc = np.mean(ort_run(a, x).argmax(1) == labels)
    assert quant_acc >= float_acc - 0.01, (float_acc, quant_acc)


def test_reduce_range_and_limit_pairs(tmp_path, calib):
    # reduce_range: every int8 weight code in 7 bits; limit_pairs: the 2-D (Gemm) weights' adjacent
    # same-sign codes along K sum to at most 128 in magnitude (ONNX Runtime's u8*s8 pairs);
    # both refuse what they cannot do.
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    def int8_weights(path):
        m = onnx.load(path)
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return [inits[n.input[0]] for n in m.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
                and inits[n.input[0]].ndim > 1]

    seven, paired, plain = tmp_path / "7.onnx", tmp_path / "p.onnx", tmp_path / "8.onnx"
    data = {input_name(): calib[:32]}
    zp.quantize_model(MODEL, data, seven, reduce_range=True, report_samples=0)
    zp.quantize_model(MODEL, data, paired, limit_pairs=True, report_samples=0)
    zp.quantize_model(MODEL, data, plain, report_samples=0)
    assert all(w.min() >= -64 and w.max() <= 63 for w in int8_weights(seven))

    def worst_pair(path):
        worst = 0
        for w in (w for w in int8_weights(path) if w.ndim == 2):
            a, b = w[:, 0:w.shape[1] // 2 * 2:2].astype(int), w[:, 1::2][:, :w.shape[1] // 2].astype(int)
            same = np.sign(a) == np.sign(b)
            worst = max(worst, int(np.abs(a + b)[same].max(initial=0)))
        return worst

    assert worst_pair(paired) <= 128 < worst_pair(plain), (worst_pair(paired), worst_pair(plain))
    for bad, match in ((dict(reduce_range=True, weights="int4"), "8-bit"), (dict(limit_pairs=True, weights="int4"), "8-bit"),
                       (dict(reduce_range=True, limit_pairs=True), "do not go together")):
        with pytest.raises(zp.SchemeError, match=match):
            zp.quantize_model(MODEL, data, tmp_path / "no.onnx", **bad)
        assert not (tmp_path / "no.onnx").exists()


def test_pixel_files_with_preprocessing_and_evaluate(tmp_path, test_set):
    out = tmp_path / "q.onnx"
    images = DATA / "mnist-train-500-images-idx3-ubyte.gz"
    r = zp.quantize_model(MODEL, images, out, samples=100, mean=[MEAN], std=[STD], preset="w4a8")
    assert r.calibration_samples == 100 and r.report_samples == 8
    e = zp.evaluate(
        MODEL,
        out,
        DATA / "mnist-test-2000-images-idx3-ubyte.gz",
        labels=DATA / "mnist-test-2000-labels-idx1-ubyte.gz",
        samples=300,
        mean=[MEAN],
        std=[STD],
    )
    x, labels = mnist("test", 300)
    assert e.samples == 300
    assert e.top1[0] == pytest.approx(np.mean(ort_run(MODEL, x).argmax(1) == labels))
    assert e.top1[1] == pytest.approx(np.mean(ort_run(out, x).argmax(1) == labels), abs=0.01)
    assert 0.9 < e.agreement <= 1 and e.cosine_mean > 0.99 and e.layers
    # Labels as an array give the same numbers.
    e2 = zp.evaluate(MODEL, out, {input_name(): x}, labels=labels)
    assert e2.top1 == e.top1


def test_ort_style_readers_and_feed_lists_are_accepted(tmp_path, calib):
    feeds = [{input_name(): calib[i : i + 1]} for i in range(len(calib))]
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    zp.quantize_model(MODEL, feeds, a, report_samples=0)
    zp.quantize_model(MODEL, {input_name(): calib}, b, report_samples=0)
    assert a.read_bytes() == b.read_bytes()


def test_model_errors_are_one_line_and_leave_nothing_behind(tmp_path, calib):
    out = tmp_path / "q.onnx"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    cases = [
        (zp.ModelError, lambda: zp.quantize_model(tmp_path / "missing.onnx", {"x": calib}, out), "missing.onnx"),
        (zp.ModelError, lambda: zp.quantize_model(bad, {"x": calib}, out), "bad.onnx"),
        (zp.ModelError, lambda: zp.quantize_model(MODEL, {"x": calib}, MODEL), "overwrite the input"),
        (zp.ModelError, lambda: zp.quantize_model(MODEL, {"x": calib}, tmp_path / "no" / "q.onnx"), "does not exist"),
        (zp.DataError, lambda: zp.quantize_model(MODEL, tmp_path / "none.npy", out), "none.npy"),
        (zp.DataError, lambda: zp.quantize_model(MODEL, {input_name(): calib[:, :, :10]}, out), input_name()),
        (zp.DataError, lambda: zp.quantize_model(MODEL, [], out), "no calibration"),
        (zp.SchemeError, lambda: zp.quantize_model(MODEL, {"x": calib}, out, preset="w3a3"), "unknown preset"),
        (zp.SchemeError, lambda: zp.quantize_model(MODEL, {"x": calib}, out, weights="int8,per-row"), "per-row"),
        (zp.SchemeError, lambda: zp.quantize_model(MODEL, {"x": calib}, out, activation_range="best"), "best"),
        (zp.ModelError, lambda: zp.run(bad, {"x": calib}), "bad.onnx"),
    ]
    for kind, call, text in cases:
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
        assert text in message and "\n" not in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def dynamic_width_model(path):
    """Conv → ReLU → GlobalAveragePool → Flatten over [N, 3, 8, W], W free (a text-line model's
    shape)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=IR), str(path))


def test_feeds_of_varying_shapes(tmp_path):
    model, out = tmp_path / "dyn.onnx", tmp_path / "dyn.q.onnx"
    dynamic_width_model(model)
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.standard_normal((1, 3, 8, w)).astype(np.float32)} for w in (5, 17, 9, 30) * 4]
    with pytest.raises(zp.DataError, match="shapes differ"):
        zp.calibration_arrays(feeds)
    r = zp.quantize_model(model, feeds, out)
    assert r.calibration_samples == 16
    x = rng.standard_normal((2, 3, 8, 23)).astype(np.float32)
    quantized, float_ = ort_run(out, x), ort_run(model, x)
    assert np.linalg.norm(quantized - float_) / np.linalg.norm(float_) < 0.05
    # zeropoint's executor runs the QDQ model as the ONNX spec (ORT without fusions) does.
    np.testing.assert_allclose(zp.run(out, {"x": x})["y"], ort_run(out, x, optimize=False), rtol=1e-5, atol=1e-5)
    assert not any(p.name.startswith("zeropoint-feeds-") for p in Path(tempfile.gettempdir()).iterdir())


def test_analyze_reports_the_debugging_flow(calib):
    a = zp.analyze(MODEL, {input_name(): calib[:64]}, samples=16, sensitivity_samples=4, plots=2, suggestions=False, preset="w4a8")
    db = lambda s: float(s["sqnr_db"])  # noqa: E731
    # 16 bits simulate the float model far more closely than the 4-bit weights do.
    assert db(a["check_16_bits"]) > db(a["quantized"]) + 20
    assert db(a["weights_only"]) >= db(a["quantized"]) - 0.5
    harm = [s["alone"]["sqnr_db"] for s in a["sensitivities"]]
    assert len(harm) > 4 and harm == sorted(harm)  # most harmful (lowest SQNR alone) first
    assert len(a["distributions"]) == 2
    with pytest.raises(zp.SchemeError, match="unknown option 'presets'"):
        zp.analyze(MODEL, {input_name(): calib[:8]}, presets="w8a8")


def test_train_improves_on_ptq(tmp_path, calib, test_set):
    # W2A2, where PTQ loses most and QAT wins back most (docs/qat.md): cross-entropy on labels.
    ptq, qat = tmp_path / "ptq.onnx", tmp_path / "qat.onnx"
    options = dict(weights="int2", activations="uint2", report_samples=0)
    x_train, y_train = mnist("train", 200)
    zp.quantize_model(MODEL, {input_name(): x_train}, ptq, **options)
    epochs = zp.train(MODEL, {input_name(): x_train}, qat, labels=y_train, epochs=3, lr=1e-2, **options)
    assert [e.epoch for e in epochs] == [1, 2, 3] and epochs[-1].loss < epochs[0].loss
    x, labels = test_set
    accuracy = lambda p: float(np.mean(ort_run(p, x).argmax(1) == labels))  # noqa: E731
    assert accuracy(qat) >= accuracy(ptq) + 0.05, (accuracy(qat), accuracy(ptq))


def test_train_options_augment_validate_and_batchnorm(tmp_path):
    # A short float run with augmentation and a validation every 2 steps writes a model; the new
    # options' bad values are refused as scheme errors before any work.
    x_train, y_train = mnist("train", 96)
    out = tmp_path / "aug.onnx"
    epochs = zp.train(MODEL, {input_name(): x_train}, out, labels=y_train, epochs=1, batch_size=16,
                      augment="flip,crop=2", validation_split=0.25, validate_every=2, report_samples=0)
    assert len(epochs) == 1 and epochs[0].validation is not None and out.exists()
    for bad, match in ((dict(augment="rotate"), "not flip or crop"), (dict(batchnorm="running"), "not fold or batch"),
                       (dict(validate_every=2), "validation_split")):
        with pytest.raises(zp.SchemeError, match=match):
            zp.train(MODEL, {input_name(): x_train}, tmp_path / "no.onnx", labels=y_train, epochs=1, **bad)
        assert not (tmp_path / "no.onnx").exists()


def test_float16_parts_compute_in_float32(tmp_path):
    """A model that computes one MatMul in float16 (Cast, MatMul with a float16 weight, Cast back)
    and one in float32: the float16 part is widened to float32 (docs/ptq.md), so both MatMuls are
    quantized, no float32 DequantizeLinear output reaches a float16 operator, ONNX Runtime loads
    the result, and its output stays close to the float model's."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(8)
    w16 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float16), "w16")
    w32 = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w32")
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16, name="to16"),
        helper.make_node("MatMul", ["xh", "w16"], ["m"], name="mm16"),
        helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT, name="to32"),
        helper.make_node("MatMul", ["mf", "w32"], ["y"], name="mm32"),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w16, w32],
    )
    model, out = tmp_path / "mixed.onnx", tmp_path / "mixed.q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR), str(model))
    # limit_pairs where ORT's int8 kernels add int16 pairs (x86 without VNNI), as the CLI tests do.
    zp.quantize_model(model, {"x": rng.standard_normal((16, 8)).astype(np.float32)}, out,
                      limit_pairs=int8_kernels_saturate())
    q = onnx.load(str(out))
    dequantized = {n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    assert {"w16_quantized", "w32_quantized"} <= dequantized
    halves = [n.name for n in q.graph.node if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16]
    assert not halves and all(t.data_type != TensorProto.FLOAT16 for t in q.graph.initializer)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    y, want = ort_run(out, x), ort_run(model, x)
    assert y.shape == (2, 4)
    assert np.abs(y - want).max() <= 0.05 * np.abs(want).max()


def test_adaround_bias_correction_and_output_range_samples_reach_the_run(tmp_path, calib):
    # Each knob changes the learned weights or biases (so it reached the run), the same call
    # twice gives the same bytes, and bad values are refused as scheme errors.
    data = {input_name(): calib[:32]}

    def model_bytes(name, **kw):
        out = tmp_path / f"{name}.onnx"
        zp.quantize_model(MODEL, data, out, weights="int4", report_samples=0, **kw)
        return out.read_bytes()

    four = model_bytes("a4", adaround=20, adaround_samples=4)
    assert four == model_bytes("a4again", adaround=20, adaround_samples=4)
    assert four != model_bytes("a8", adaround=20, adaround_samples=8)
    assert four != model_bytes("w4", adaround=20, adaround_samples=4, adaround_inputs="weights-only")
    assert four != model_bytes("act4", adaround=20, adaround_samples=4, adaround_loss="activation")
    assert four != model_bytes("half4", adaround=20, adaround_samples=4, adaround_settle=False)
    out4 = model_bytes("o4", weight_range="output", weight_range_samples=4)
    assert out4 != model_bytes("o8", weight_range="output", weight_range_samples=8)
    assert out4 != model_bytes("minmax", weight_range="minmax")
    bc4 = model_bytes("b4", bias_correction="empirical", bias_correction_samples=4)
    assert bc4 != model_bytes("b8", bias_correction="empirical", bias_correction_samples=8)
    # The model has no BatchNorm: measured means correct the layers plain analytic cannot.
    assert model_bytes("an", bias_correction="analytic") != model_bytes("am", bias_correction="analytic-means")
    for bad, match in ((dict(adaround=20, adaround_inputs="float"), "weights-only"),
                       (dict(adaround=20, adaround_loss="relu"), "'activation' or 'linear'"),
                       (dict(bias_correction="means"), "analytic-means"),
                       (dict(adaround=20, adaround_samples=0), "at least 1"),
                       (dict(weight_range="output", limit_pairs=True), "pair limit")):
        with pytest.raises(zp.SchemeError, match=match):
            zp.quantize_model(MODEL, data, tmp_path / "no.onnx", **bad)


def test_float_activations_quantize_the_weights_alone(tmp_path, calib, test_set):
    # activations="float": every DequantizeLinear reads a weight initializer, nothing is
    # quantized at run time, and the model keeps the float model's accuracy at int4 weights
    # with AdaRound, in ONNX Runtime.
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "w4.onnx"
    r = zp.quantize_model(MODEL, {input_name(): calib[:32]}, out, weights="int4",
                          activations="float", adaround=50, adaround_samples=4, report_samples=0)
    assert r.weights > 0 and r.activations == 0
    m = onnx.load(out)
    inits = {t.name for t in m.graph.initializer}
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == r.weights
    assert all(n.input[0] in inits for n in m.graph.node if n.op_type == "DequantizeLinear")
    x, labels = test_set
    float_acc = np.mean(ort_run(MODEL, x).argmax(1) == labels)
    quant_acc = np.mean(ort_run(out, x).argmax(1) == labels)
    assert quant_acc >= float_acc - 0.02, (float_acc, quant_acc)
