"""A drop-in for ONNX Runtime's ``quantize_static``: change one import,

    from onnxruntime.quantization import quantize_static      # before
    from zeropoint.onnxruntime import quantize_static         # after

and the same call (same arguments, the same ``CalibrationDataReader``) quantizes with zeropoint's
engine: each option is mapped to zeropoint's equivalent, and an option without one is named in
a ``ZeropointCompatibilityWarning`` (never silently ignored). The output is a QDQ model that
ONNX Runtime runs.

What maps to what:

=========================  ==================================================================
ORT                        zeropoint
=========================  ==================================================================
quant_format               QDQ (QOperator is written as QDQ, with a warning: ORT fuses the
                           QDQ pairs around an operator into its integer kernel)
activation_type            uint8 / int8 / uint16 / int16 activations (QuantType or the
                           onnx.TensorProto element type, as ORT takes), asymmetric unless
                           extra_options["ActivationSymmetric"]
weight_type                int8 / uint8 / int16 / uint16 / int4 / uint4 weights, symmetric for
                           the signed types unless extra_options["WeightSymmetric"] says
per_channel                per output channel, else per tensor
reduce_range               7-bit weights (ORT's reduce_range)
calibrate_method           MinMax → minmax (CalibMovingAverage → ema, with a warning: ORT
                           averages the feeds' extremes instead), Entropy → entropy
                           (CalibNumBins / CalibNumQuantizedBins, ORT's 128 / 128 by default),
                           Percentile → abs-percentile (CalibPercentile, 99.999),
                           Distribution → mse (with a warning)
op_types_to_quantize       every other operator type of the model kept float (an empty
                           list: all, as in ORT)
nodes_to_quantize          every other node kept float
nodes_to_exclude           those nodes kept float
=========================  ==================================================================
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _zeropoint as _native
from . import quantize_model

try:  # ORT's own enums and reader base class, when ONNX Runtime is installed
    from onnxruntime.quantization import (  # type: ignore[import-untyped,unused-ignore]
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
except ImportError:  # the same names, so that code written for ORT runs without it
    import abc
    from enum import Enum

    class QuantType(Enum):  # type: ignore[no-redef]
        QInt8 = 0
        QUInt8 = 1
        QFLOAT8E4M3FN = 2
        QInt16 = 3
        QUInt16 = 4
        QInt4 = 5
        QUInt4 = 6

    class QuantFormat(Enum):  # type: ignore[no-redef]
        QOperator = 0
        QDQ = 1

    class CalibrationMethod(Enum):  # type: ignore[no-redef]
        MinMax = 0
        Entropy = 1
        Percentile = 2
        Distribution = 3

    class CalibrationDataReader(metaclass=abc.ABCMeta):  # type: ignore[no-redef]
        @abc.abstractmethod
        def get_next(self) -> Optional[Dict[str, Any]]:
            """A dict of input name → array, or None when there is no more data."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            return self

        def __next__(self):  # type: ignore[no-untyped-def]
            item = self.get_next()
            if item is None:
                raise StopIteration
            return item


__all__ = [
    "quantize_static",
    "QuantType",
    "QuantFormat",
    "CalibrationMethod",
    "CalibrationDataReader",
    "ZeropointCompatibilityWarning",
]


class ZeropointCompatibilityWarning(UserWarning):
    """An ONNX Runtime option that zeropoint has no equivalent for (or maps differently)."""


def _warn(message: str) -> None:
    warnings.warn(message, ZeropointCompatibilityWarning, stacklevel=3)


def _name(value: Any) -> str:
    """An enum member's name (ORT's enums or ours), or the string given."""
    return value if isinstance(value, str) else getattr(value, "name", str(value))


# ORT also takes onnx.TensorProto element types (ints) for activation_type / weight_type.
_TENSOR_TYPES = {3: "QInt8", 2: "QUInt8", 5: "QInt16", 4: "QUInt16", 22: "QInt4", 21: "QUInt4", 17: "QFLOAT8E4M3FN"}


def _type_name(qtype: Any) -> str:
    if isinstance(qtype, int) and not hasattr(qtype, "name"):
        return _TENSOR_TYPES.get(qtype, f"TensorProto type {qtype}")
    return _name(qtype)


_TYPES = {
    "QInt8": (True, 8),
    "QUInt8": (False, 8),
    "QInt16": (True, 16),
    "QUInt16": (False, 16),
    "QInt4": (True, 4),
    "QUInt4": (False, 4),
}


def _scheme_type(qtype: Any, what: str) -> Tuple[bool, int]:
    name = _type_name(qtype)
    if name not in _TYPES:
        raise _native_error(f"{what} {name} has no zeropoint equivalent (zeropoint quantizes to 2-16 bit integers)")
    return _TYPES[name]


def _native_error(message: str) -> Exception:
    from ._errors import SchemeError

    return SchemeError(message)


def _activation_spec(activation_type: Any, extra: Dict[str, Any]) -> str:
    signed, bits = _scheme_type(activation_type, "activation_type")
    if bits == 4:
        raise _native_error("activation_type QInt4/QUInt4: zeropoint quantizes activations to 8 or 16 bits")
    symmetric = bool(extra.get("ActivationSymmetric", False))
    return f"{'int' if signed else 'uint'}{bits},{'sym' if symmetric else 'asym'}"


def _weight_spec(weight_type: Any, per_channel: bool, reduce_range: bool, extra: Dict[str, Any]) -> str:
    signed, bits = _scheme_type(weight_type, "weight_type")
    # ORT's default: symmetric for signed weight types, asymmetric for unsigned ones.
    symmetric = bool(extra.get("WeightSymmetric", signed))
    if reduce_range:
        if bits != 8:
            _warn(f"reduce_range applies to 8-bit weights; {bits}-bit weights are kept at {bits} bits")
        else:
            bits = 7
    granularity = "per-channel" if per_channel else "per-tensor"
    return f"{'int' if signed else 'uint'}{bits},{'sym' if symmetric else 'asym'},{granularity}"


def _range_method(calibrate_method: Any, extra: Dict[str, Any]) -> Tuple[str, Dict[str, float]]:
    """zeropoint's estimator and its parameters for ORT's calibrator, with ORT's defaults."""
    name = _name(calibrate_method)
    if name == "MinMax":
        if extra.get("CalibMovingAverage"):
            # ORT averages every feed's min and max alike; zeropoint has no such estimator.
            _warn(
                "CalibMovingAverage: ONNX Runtime averages the feeds' minima and maxima; zeropoint has no "
                "such estimator and uses its moving average (ema, momentum 0.9) instead"
            )
            return "ema", {"momentum": 0.9}
        return "minmax", {}
    if name == "Entropy":
        # ORT's histogram: 128 bins quantized to 128 unless told otherwise.
        bins = int(extra.get("CalibNumBins", 128))
        return "entropy", {"bins": bins, "quantized_bins": int(extra.get("CalibNumQuantizedBins", 128))}
    if name == "Percentile":
        if "CalibNumBins" in extra:
            _warn("CalibNumBins: zeropoint's percentiles come from its own 8192-bin histogram")
        return "abs-percentile", {"percentile": float(extra.get("CalibPercentile", 99.999))}
    if name == "Distribution":
        _warn("calibrate_method Distribution: zeropoint has no equivalent; using MSE ranges")
        return "mse", {}
    raise _native_error(f"calibrate_method {name} is not MinMax, Entropy, Percentile or Distribution")


# extra_options zeropoint maps (above) or that change nothing in the result it writes.
_MAPPED = {
    "ActivationSymmetric",
    "WeightSymmetric",
    "CalibMovingAverage",
    "CalibPercentile",
    "CalibNumBins",
    "CalibNumQuantizedBins",
    "CalibMaxIntermediateOutputs",  # memory only; zeropoint streams
    "CalibStridedMinMax",  # memory only
}


def _excluded(model: str, op_types: Optional[Sequence[str]], nodes: Optional[Sequence[str]], exclude: Optional[Sequence[str]]) -> List[str]:
    """The nodes kept float: those not of the given types, not among the given nodes, and
    those excluded."""
    out: List[str] = list(exclude or [])
    if not op_types and not nodes:  # ORT reads an empty list as "every type it quantizes"
        return out
    for name, op in _native.graph_nodes(model):
        if op_types and op not in op_types:
            out.append(name)
        elif nodes and name not in nodes:
            out.append(name)
    return out


def quantize_static(
    model_input: Union[str, Path, Any],
    model_output: Union[str, Path],
    calibration_data_reader: Optional[Any] = None,
    quant_format: Any = QuantFormat.QDQ,
    op_types_to_quantize: Optional[Sequence[str]] = None,
    per_channel: bool = False,
    reduce_range: bool = False,
    activation_type: Any = QuantType.QInt8,
    weight_type: Any = QuantType.QInt8,
    nodes_to_quantize: Optional[Sequence[str]] = None,
    nodes_to_exclude: Optional[Sequence[str]] = None,
    use_external_data_format: bool = False,
    calibrate_method: Any = CalibrationMethod.MinMax,
    calibration_providers: Optional[Sequence[str]] = None,
    extra_options: Optional[Dict[str, Any]] = None,
    calibration_cache_path: Union[str, Path, None] = None,
) -> None:
    """ONNX Runtime's ``quantize_static`` (same signature and defaults), done by zeropoint."""
    extra = dict(extra_options or {})
    if calibration_data_reader is None:
        raise _native_error("quantize_static needs a calibration_data_reader")
    if _name(quant_format) == "QOperator":
        _warn("quant_format QOperator: zeropoint writes QDQ; ONNX Runtime fuses the Q/DQ pairs around an operator into its integer kernel")
    if use_external_data_format:
        _warn("use_external_data_format: zeropoint writes external data only when the model needs it (over 2 GB)")
    if calibration_providers and list(calibration_providers) != ["CPUExecutionProvider"]:
        _warn("calibration_providers: zeropoint calibrates in its own executor, not in ONNX Runtime")
    if calibration_cache_path is not None:
        _warn("calibration_cache_path: zeropoint keeps no calibration cache; calibrating again")
    for key in sorted(set(extra) - _MAPPED):
        _warn(f"extra_options['{key}'] has no zeropoint equivalent and is not applied")
    activations = _activation_spec(activation_type, extra)
    weights = _weight_spec(weight_type, per_channel, reduce_range, extra)
    method, method_options = _range_method(calibrate_method, extra)

    with tempfile.TemporaryDirectory(prefix="zeropoint-") as tmp:
        if isinstance(model_input, (str, os.PathLike)):
            model_path = os.fspath(model_input)
        else:  # an onnx.ModelProto
            model_path = os.path.join(tmp, "model.onnx")
            with open(model_path, "wb") as f:
                f.write(model_input.SerializeToString())
        exclude = _excluded(model_path, op_types_to_quantize, nodes_to_quantize, nodes_to_exclude)
        quantize_model(
            model_path,
            calibration_data_reader,
            os.fspath(model_output),
            weights=weights,
            activations=activations,
            weight_range="minmax",
            activation_range=method,
            range_options=method_options,
            exclude=exclude,
            report_samples=0,
        )

