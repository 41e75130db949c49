"""The drop-in: ONNX Runtime's quantize_static call, same arguments and reader, with the import
swapped; the models compared in ONNX Runtime."""

import warnings

import numpy as np
import pytest

from conftest import MODEL, ort_run

onnx = pytest.importorskip("onnx")
ortq = pytest.importorskip("onnxruntime.quantization")

import zeropoint.onnxruntime as zpo  # noqa: E402


class Reader(ortq.CalibrationDataReader):
    """The reader of ORT's examples: one sample per get_next, then None."""

    def __init__(self, name, x):
        self.items = iter([{name: x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def input_name():
    return onnx.load(str(MODEL)).graph.input[0].name


def accuracy(path, x, labels):
    return float(np.mean(ort_run(path, x).argmax(1) == labels))


CONFIGS = [
    dict(),  # ORT's defaults: QDQ, per tensor, int8 activations and weights, MinMax
    dict(per_channel=True, activation_type=ortq.QuantType.QUInt8),
    dict(per_channel=True, calibrate_method=ortq.CalibrationMethod.Entropy),
    dict(per_channel=True, calibrate_method=ortq.CalibrationMethod.Percentile),
    dict(weight_type=ortq.QuantType.QUInt8, activation_type=ortq.QuantType.QUInt8, reduce_range=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={getattr(v, 'name', v)}" for k, v in c.items()) or "defaults")
def test_same_call_same_accuracy_as_onnx_runtime(tmp_path, calib, test_set, config):
    x, labels = test_set
    theirs, ours = tmp_path / "ort.onnx", tmp_path / "zp.onnx"
    ortq.quantize_static(str(MODEL), str(theirs), Reader(input_name(), calib), **config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every option here has an equivalent
        zpo.quantize_static(str(MODEL), str(ours), Reader(input_name(), calib), **config)
    float_logits = ort_run(MODEL, x)
    agree = lambda p: float(np.mean(ort_run(p, x).argmax(1) == float_logits.argmax(1)))  # noqa: E731
    a_theirs, a_ours = accuracy(theirs, x, labels), accuracy(ours, x, labels)
    print(f"{config}: top-1 ORT {a_theirs:.4f} zeropoint {a_ours:.4f}; agreement {agree(theirs):.4f} {agree(ours):.4f}")
    assert a_ours >= a_theirs - 0.004  # at most 2 of 500 images
    assert agree(ours) >= 0.98


def test_options_without_an_equivalent_warn(tmp_path, calib):
    with pytest.warns(zpo.ZeropointCompatibilityWarning, match="extra_options\\['SmoothQuantFolding'\\]"):
        zpo.quantize_static(
            str(MODEL),
            str(tmp_path / "q.onnx"),
            Reader(input_name(), calib[:20]),
            extra_options={"SmoothQuantFolding": True, "ActivationSymmetric": True},
        )
    with pytest.warns(zpo.ZeropointCompatibilityWarning, match="QOperator"):
        zpo.quantize_static(
            str(MODEL), str(tmp_path / "r.onnx"), Reader(input_name(), calib[:20]), quant_format=ortq.QuantFormat.QOperator
        )


def test_op_types_and_nodes_select_what_is_quantized(tmp_path, calib):
    model = onnx.load(str(MODEL))
    ops = {n.op_type for n in model.graph.node}
    out = tmp_path / "conv-only.onnx"
    # A ModelProto in, as ORT accepts.
    zpo.quantize_static(model, str(out), Reader(input_name(), calib[:20]), op_types_to_quantize=["Conv"])
    q = onnx.load(str(out))
    dq_outputs = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.op_type for n in q.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq_outputs & set(n.input)}
    assert "Conv" in quantized and not (quantized & ({"Gemm", "MatMul"} & ops))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    out2 = tmp_path / "excluded.onnx"
    zpo.quantize_static(str(MODEL), str(out2), Reader(input_name(), calib[:20]), nodes_to_exclude=[first_conv])
    q2 = onnx.load(str(out2))
    conv = next(n for n in q2.graph.node if n.name == first_conv)
    assert not (set(conv.input) & {o for n in q2.graph.node if n.op_type == "DequantizeLinear" for o in n.output})
