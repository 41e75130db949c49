"""zeropoint: neural-network quantization, natively.

The same engine as the ``zeropoint`` command, with numpy arrays in and out and no Python in the
hot path (the kernels run in Rust with the GIL released)::

    import numpy as np
    import zeropoint as zp

    x = np.random.randn(1000).astype(np.float32)
    scheme = zp.Scheme(bits=8)                      # uint8, asymmetric, per tensor
    scale, zero_point = zp.params_from_range(scheme, x.min(), x.max())
    q = zp.quantize(x, scheme, scale, zero_point)   # uint8 codes, as ONNX QuantizeLinear
    x_hat = zp.dequantize(q, scheme, scale, zero_point)

    obs = zp.Observer("mse", scheme)                # streaming range estimation
    obs.update(x)
    print(obs.range())

    report = zp.quantize_model("model.onnx", "calibration.npy", "model.int8.onnx")

Conventions (rounding, NaN, packing) are those of docs/conventions.md: bit-exact with ONNX
QuantizeLinear / DequantizeLinear. Packed 4- and 2-bit codes are flat uint8 arrays in ONNX's
order: element 0 in the lowest bits of byte 0, the last byte padded with zero bits.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.typing import NDArray

from . import _zeropoint as _native
from ._errors import DataError, Error, GgufError, ModelError, SchemeError
from ._zeropoint import (
    Observer,
    Scheme,
    __version__,
    dequantize,
    fake_quant,
    params_from_data,
    params_from_range,
    quantize,
    run,
)

__all__ = [
    "Scheme",
    "Observer",
    "quantize",
    "dequantize",
    "fake_quant",
    "params_from_range",
    "params_from_data",
    "explain",
    "Explanation",
    "run",
    "quantize_model",
    "QuantizationReport",
    "LayerReport",
    "evaluate",
    "Evaluation",
    "gguf",
    "analyze",
    "train",
    "Epoch",
    "calibration_arrays",
    "Error",
    "SchemeError",
    "ModelError",
    "DataError",
    "GgufError",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]
Data = Union[PathLike, Sequence[PathLike], Mapping[str, NDArray[Any]], Iterable[Mapping[str, NDArray[Any]]]]


@dataclass(frozen=True)
class Example:
    """One row of the worked example: x → x/s → rounded → code q → x̂."""

    x: float
    x_over_s: float
    rounded: float
    q: int
    x_hat: float
    note: str


@dataclass(frozen=True)
class Occupancy:
    """How many of the grid's levels the range uses under a scheme, and its parameters."""

    used: int
    levels: int
    scale: float
    zero_point: int


@dataclass(frozen=True)
class Clip:
    """The quality of one clipping range over the data."""

    label: str
    min: float
    max: float
    scale: float
    sqnr_db: float
    clipped_fraction: float
    clip_mse: float
    round_mse: float


@dataclass(frozen=True)
class Explanation:
    """What a quantizer of [min, max] does (``zeropoint explain``): its scale, zero-point and
    offset (= -zero_point, AIMET's convention), the grid and the real range it covers, a worked
    example, what asymmetric and symmetric grids use of it, and, when data was given, the error
    split into clipping and rounding, and the dynamic-range verdict."""

    scheme: Scheme
    min: float
    max: float
    scale: float
    zero_point: int
    offset: int
    grid: Tuple[int, int]
    real_range: Tuple[float, float]
    examples: Tuple[Example, ...]
    asymmetric: Optional[Occupancy]
    symmetric: Optional[Occupancy]
    mse: Optional[float] = None
    sqnr_db: Optional[float] = None
    max_error: Optional[float] = None
    clip_mse: Optional[float] = None
    round_mse: Optional[float] = None
    clipped_fraction: Optional[float] = None
    levels_per_std: Optional[float] = None
    verdict: Optional[str] = None
    clips: Tuple[Clip, ...] = ()


def explain(
    scheme: Scheme,
    min: Optional[float] = None,
    max: Optional[float] = None,
    data: Optional[NDArray[Any]] = None,
) -> Explanation:
    """Explains the quantizer of ``scheme`` over [min, max], or over the data's range when only
    ``data`` is given (per tensor: the scheme's granularity is ignored)."""
    d = _native.explain(scheme, min, max, data)

    def occupancy(o: Optional[Sequence[Any]]) -> Optional[Occupancy]:
        return Occupancy(*o) if o is not None else None

    return Explanation(
        scheme=d["scheme"],
        min=d["min"],
        max=d["max"],
        scale=d["scale"],
        zero_point=d["zero_point"],
        offset=d["offset"],
        grid=tuple(d["grid"]),
        real_range=tuple(d["real_range"]),
        examples=tuple(Example(*e) for e in d["examples"]),
        asymmetric=occupancy(d["asymmetric"]),
        symmetric=occupancy(d["symmetric"]),
        mse=d.get("mse"),
        sqnr_db=d.get("sqnr_db"),
        max_error=d.get("max_error"),
        clip_mse=d.get("clip_mse"),
        round_mse=d.get("round_mse"),
        clipped_fraction=d.get("clipped_fraction"),
        levels_per_std=d.get("levels_per_std"),
        verdict=d.get("verdict"),
        clips=tuple(Clip(*c) for c in d.get("clips", ())),
    )


def _feeds(samples: Any) -> Iterator[Mapping[str, Any]]:
    """The feed dicts of an ONNX Runtime reader (get_next until None) or of an iterable."""
    if hasattr(samples, "get_next"):
        return iter(samples.get_next, None)
    return iter(samples)


def calibration_arrays(samples: Iterable[Mapping[str, Any]]) -> Dict[str, NDArray[Any]]:
    """Feeds (one dict of input name → array per call, as ONNX Runtime's
    ``CalibrationDataReader.get_next`` returns them, or any iterable of such dicts) joined along
    the first axis into one batch-first array per input. Samples whose shapes differ (dynamic
    sizes) cannot be joined: ``quantize_model`` and ``evaluate`` pass those as a folder of
    ``.npz`` files instead, one per feed."""
    columns = _columns(_feeds(samples))
    joined = _joined(columns)
    if joined is None:
        raise DataError("the samples' shapes differ: they cannot be joined into one array per input")
    return joined


def _columns(feeds: Iterator[Mapping[str, Any]]) -> Dict[str, List[NDArray[Any]]]:
    columns: Dict[str, List[NDArray[Any]]] = {}
    for i, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise DataError(f"calibration sample {i} is a {type(feed).__name__}, not a dict of arrays by input name")
        if columns and set(feed) != set(columns):
            raise DataError(f"calibration sample {i} has inputs {sorted(feed)}, the first had {sorted(columns)}")
        for name, value in feed.items():
            columns.setdefault(name, []).append(np.asarray(value))
    if not columns:
        raise DataError("the calibration data holds no samples")
    return columns


def _joined(columns: Dict[str, List[NDArray[Any]]]) -> Optional[Dict[str, NDArray[Any]]]:
    """One array per input, or None when some input's samples differ in shape."""
    joined = {}
    for name, arrays in columns.items():
        if any(a.ndim == 0 for a in arrays):
            joined[name] = arrays[0]  # a scalar shared by every sample
        elif len({a.shape[1:] for a in arrays}) > 1:
            return None
        else:
            joined[name] = np.concatenate(arrays, axis=0)
    return joined


@contextlib.contextmanager
def _data(data: Data) -> Iterator[Any]:
    """What the native functions take: paths as they are, a dict of arrays as it is, and feeds
    (a reader, a list of dicts) joined along their first axis (the batches zeropoint then reads
    are the feeds' rows, regrouped as the model's fixed batch if it has one) or, when their
    shapes vary, written to a temporary folder of .npz files, one per feed, each read as a batch
    of its own (removed afterwards)."""
    if isinstance(data, (str, os.PathLike, Mapping)):
        yield data
        return
    if isinstance(data, (list, tuple)) and all(isinstance(d, (str, os.PathLike)) for d in data):
        yield list(data)
        return
    columns = _columns(_feeds(data))
    joined = _joined(columns)
    if joined is not None:
        yield joined
        return
    with tempfile.TemporaryDirectory(prefix="zeropoint-feeds-") as folder:
        count = len(next(iter(columns.values())))
        for i in range(count):
            savez: Any = np.savez  # (numpy's stub takes the arrays for its allow_pickle flag)
            savez(os.path.join(folder, f"{i:08d}.npz"), **{k: v[i] for k, v in columns.items()})
        yield folder


@dataclass(frozen=True)
class LayerReport:
    """One quantized activation (or graph output) of the report: its range and parameters and
    the SQNR of the simulated quantized model at that value."""

    value: str
    sqnr_db: Optional[float]
    range: Optional[Tuple[float, float]]
    scale: Optional[float]
    zero_point: Optional[int]
    bits: Optional[int]
    shares: Optional[str]
    output: bool


@dataclass(frozen=True)
class QuantizationReport:
    """What ``quantize_model`` did (``zeropoint quantize --json``): sizes, the quantizers
    placed, the layers' errors; ``details`` holds the whole report (CLE, bias correction,
    AdaRound, stage times)."""

    model: str
    output: str
    bytes_before: int
    bytes_after: int
    calibration_samples: int
    report_samples: int
    weights: int
    biases: int
    activations: int
    layers: Tuple[LayerReport, ...]
    seconds: float
    details: Dict[str, Any] = field(repr=False)


def quantize_model(
    model: PathLike,
    calib: Data,
    output: PathLike,
    *,
    preset: str = "w8a8",
    weights: Optional[str] = None,
    activations: Optional[str] = None,
    weight_range: Optional[str] = None,
    activation_range: str = "mse",
    range_options: Optional[Mapping[str, Any]] = None,
    exclude: Sequence[str] = (),
    samples: Optional[int] = None,
    batch: int = 32,
    report_samples: Optional[int] = None,
    cle: bool = False,
    bias_correction: Optional[str] = None,
    bias_correction_samples: int = 16,
    adaround: Optional[int] = None,
    adaround_samples: int = 16,
    adaround_inputs: str = "quantized",
    adaround_loss: str = "linear",
    adaround_settle: bool = True,
    weight_range_samples: int = 64,
    reduce_range: bool = False,
    limit_pairs: bool = False,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> QuantizationReport:
    """Post-training quantization of an ONNX model (``zeropoint quantize``): writes the QDQ model
    to ``output`` (atomically; never over ``model``) and returns the report.

    ``calib``: a data file (.npy, .npz, idx, an image folder) or a list of them, a dict of one
    batch-first array per model input, or an iterable of feed dicts (an ONNX Runtime
    ``CalibrationDataReader`` works as it is). ``preset``: "w8a8", "w4a8", "w8a16", "w4a16";
    ``weights`` / ``activations`` override it with specs such as "int8,sym,per-channel",
    "int4,per-block=32", "uint8"; ``activations="float"`` quantizes the weights alone (any
    layer, biases float). Range methods: "minmax", "ema", "percentile",
    "abs-percentile", "mse", "entropy", "cross-entropy", and for ``weight_range`` also "output":
    each layer's weight range fitted to its output on ``weight_range_samples`` calibration
    samples (docs/algorithms.md); ``range_options``: the activation
    method's parameters, as ``Observer`` takes them (``{"percentile": 99.999}``). ``exclude``: node names or operator
    types kept float. ``report_samples``: samples of the per-layer report (0: none; by default
    a quarter of the calibration samples, at least 4, at most 8). ``cle``: cross-layer equalization; ``bias_correction``: "empirical"
    (measured on ``bias_correction_samples``), "analytic" (from the BatchNorm statistics) or
    "analytic-means" (and the float model's means where no BatchNorm gives them); ``adaround``: AdaRound iterations per
    layer, fitted on ``adaround_samples`` with each layer's input from the "quantized" model or,
    with ``adaround_inputs="weights-only"``, the one with only its weights quantized (the
    samples wait on disk between layers: memory does not grow with them), reconstructing each
    layer's product W·x or, with ``adaround_loss="activation"``, its output after the bias and
    the Relu or Clip fused into it (the paper's eq. 25); ``adaround_settle=False`` rounds the
    weights the fit leaves undecided at h = ½, as the paper does, instead of settling them on
    the reconstruction error (docs/algorithms.md, "Settling"). ``reduce_range``: 7-bit weights
    (ONNX Runtime's reduce_range); ``limit_pairs``: 8-bit weights whose same-sign pairs ONNX
    Runtime's int8 kernels cannot overflow on x86 CPUs without VNNI (docs/ptq.md).
    ``mean`` / ``std``: pixel files
    (idx, image folders) become ``(x / 255 - mean[c]) / std[c]``; arrays are taken as they are."""
    with _data(calib) as data:
        text = _native.quantize_model(
            os.fspath(model),
            data,
            os.fspath(output),
            preset=preset,
            weights=weights,
            activations=activations,
            weight_range=weight_range,
            activation_range=activation_range,
            range_options=dict(range_options) if range_options else None,
            exclude=list(exclude),
            samples=samples,
            batch=batch,
            report_samples=report_samples,
            cle=cle,
            bias_correction=bias_correction,
            bias_correction_samples=bias_correction_samples,
            adaround=adaround,
            adaround_samples=adaround_samples,
            adaround_inputs=adaround_inputs,
            adaround_loss=adaround_loss,
            adaround_settle=adaround_settle,
            weight_range_samples=weight_range_samples,
            reduce_range=reduce_range,
            limit_pairs=limit_pairs,
            mean=list(mean),
            std=list(std),
        )
    d = json.loads(text)
    layers = tuple(
        LayerReport(
            value=l["value"],
            sqnr_db=l.get("sqnr_db"),
            range=(l["range"][0], l["range"][1]) if l.get("range") else None,
            scale=l.get("scale"),
            zero_point=l.get("zero_point"),
            bits=l.get("bits"),
            shares=l.get("shares"),
            output=l.get("output", False),
        )
        for l in d["layers"]
    )
    q = d["quantizers"]
    return QuantizationReport(
        model=d["model"],
        output=d["output"],
        bytes_before=d["bytes_before"],
        bytes_after=d["bytes_after"],
        calibration_samples=d["calibration_samples"],
        report_samples=d["report_samples"],
        weights=q["weights"],
        biases=q["biases"],
        activations=q["activations"],
        layers=layers,
        seconds=d["seconds"],
        details=d,
    )


@dataclass(frozen=True)
class Evaluation:
    """A float model against its quantized version on the same data (``zeropoint eval``).
    Accuracies and agreement are fractions in [0, 1]; ``top1`` / ``top5`` are (float,
    quantized) with labels, else None; ``layers`` is (value, SQNR dB) for every value both
    models compute."""

    samples: int
    output: str
    top1: Optional[Tuple[float, float]]
    top5: Optional[Tuple[float, float]]
    agreement: float
    output_sqnr_db: float
    cosine_mean: float
    cosine_min: float
    layers: Tuple[Tuple[str, float], ...]


def evaluate(
    float_model: PathLike,
    quantized_model: PathLike,
    data: Data,
    *,
    labels: Union[None, PathLike, Sequence[int], NDArray[Any]] = None,
    samples: Optional[int] = None,
    batch: int = 64,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
) -> Evaluation:
    """Runs both models on ``data`` in zeropoint's executor and compares them (``labels``: an
    idx1 / .npy file or integers, one per sample; ``mean`` / ``std`` as in quantize_model)."""
    with _data(data) as spec:
        text = _native.evaluate(
            os.fspath(float_model),
            os.fspath(quantized_model),
            spec,
            labels=labels,
            samples=samples,
            batch=batch,
            mean=list(mean),
            std=list(std),
        )
    d = json.loads(text)

    def db(v: Any) -> float:
        return float(v)  # an exact match's "inf" crosses as text

    return Evaluation(
        samples=d["samples"],
        output=d["output"],
        top1=(d["top1"][0], d["top1"][1]) if d["top1"] else None,
        top5=(d["top5"][0], d["top5"][1]) if d["top5"] else None,
        agreement=d["agreement"],
        output_sqnr_db=db(d["output_sqnr_db"]),
        cosine_mean=d["cosine_mean"],
        cosine_min=d["cosine_min"],
        layers=tuple((name, db(v)) for name, v in d["layers"]),
    )


def gguf(
    input: PathLike,
    output: PathLike,
    type: str = "Q4_K_M",
    *,
    imatrix: Optional[PathLike] = None,
    pure: bool = False,
    calib: Optional[PathLike] = None,
    awq: bool = False,
    awq_clip: bool = True,
    method: str = "gptq",
    act_order: Optional[bool] = None,
    calib_chunks: int = 32,
    calib_ctx: Optional[int] = None,
) -> List[Tuple[str, str, str]]:
    """A float GGUF language model (or a Hugging Face Llama checkpoint folder) to llama.cpp's
    ``type`` (``zeropoint gguf``), byte-identical to llama-quantize without ``calib``. With
    ``calib``, GPTQ (with its act-order unless ``act_order=False``) or ``method="rtn"``, AWQ
    first with ``awq=True``. Returns (tensor, input type, output type) for every tensor written."""
    return _native.gguf(
        os.fspath(input),
        os.fspath(output),
        type,
        imatrix=os.fspath(imatrix) if imatrix is not None else None,
        pure=pure,
        calib=os.fspath(calib) if calib is not None else None,
        awq=awq,
        awq_clip=awq_clip,
        method=method,
        act_order=act_order,
        calib_chunks=calib_chunks,
        calib_ctx=calib_ctx,
    )


def analyze(
    model: PathLike,
    calib: Data,
    *,
    samples: int = 32,
    sensitivity_samples: int = 8,
    plots: int = 6,
    suggestions: bool = True,
    **options: Any,
) -> Dict[str, Any]:
    """The white paper's debugging flow (``zeropoint analyze``) for the quantization that
    ``options`` (those of ``quantize_model``: ``preset``, ``weights``, ...) describe: output SQNR
    of the 16-bit check, of the quantized model, of weights only and activations only; every
    quantizer's sensitivity (``"sensitivities"``, worst first); the worst ones' value
    distributions; and fixes measured on the model (``"suggestions"``). Returns the report as
    ``zeropoint analyze --json`` prints it."""
    with _data(calib) as data:
        text = _native.analyze(
            os.fspath(model),
            data,
            samples=samples,
            sensitivity_samples=sensitivity_samples,
            plots=plots,
            suggestions=suggestions,
            **options,
        )
    report: Dict[str, Any] = json.loads(text)
    return report


@dataclass(frozen=True)
class Epoch:
    """One epoch of ``train``: mean loss, the learning rate at its end, the validation metric
    (top-1 % with labels, else output SQNR in dB against float; None without validation)."""

    epoch: int
    loss: float
    learning_rate: float
    validation: Optional[float]
    seconds: float


def train(
    model: PathLike,
    data: Data,
    output: PathLike,
    *,
    labels: Optional[Sequence[int]] = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    scale_lr: float = 1.0,
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup: int = 0,
    distill: str = "kl",
    output_name: Optional[str] = None,
    temperature: float = 1.0,
    seed: int = 0,
    freeze_ranges: bool = False,
    validation_split: float = 0.0,
    validate_every: int = 0,
    augment: Optional[str] = None,
    batchnorm: str = "fold",
    **options: Any,
) -> List[Epoch]:
    """Quantization-aware training (``zeropoint train``, docs/qat.md) from the PTQ result that
    ``options`` (those of ``quantize_model``) describe: learned scales and zero-points (LSQ /
    LSQ+), cross-entropy on ``labels`` or distillation from the float model (``distill``: "kl"
    or "mse"), ``optimizer`` "adam", "adamw" or "sgd" with warm-up and cosine decay. Writes the
    QDQ model to ``output`` (the best validated one's with ``validation_split``, validated after
    each epoch and every ``validate_every`` steps) and returns the epochs. ``augment``
    ("flip", "crop=P" or "flip,crop=4") randomly crops and mirrors image inputs [N, C, H, W].
    ``batchnorm="batch"`` normalizes with batch statistics while training, re-estimates them and
    folds them at export (per-channel weights); "fold" (the default) trains the folded weights."""
    with _data(data) as spec:
        text = _native.train(
            os.fspath(model),
            spec,
            os.fspath(output),
            labels=[int(v) for v in np.asarray(labels).ravel()] if labels is not None else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            scale_lr=scale_lr,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            warmup=warmup,
            distill=distill,
            output_name=output_name,
            temperature=temperature,
            seed=seed,
            freeze_ranges=freeze_ranges,
            validation_split=validation_split,
            validate_every=validate_every,
            augment=augment,
            batchnorm=batchnorm,
            **options,
        )
    return [Epoch(**e) for e in json.loads(text)]
