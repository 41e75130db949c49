"""Type stubs of zeropoint's native module (crates/zeropoint-py). Checked against the built
module by mypy's stubtest in the test suite."""

from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "Scheme",
    "quantize",
    "dequantize",
    "fake_quant",
    "params_from_range",
    "params_from_data",
    "explain",
    "_kernel_seconds",
    "Observer",
    "_observer_from_state",
    "run",
    "graph_nodes",
    "quantize_model",
    "evaluate",
    "analyze",
    "train",
    "gguf",
]
__version__: str

_Path = Union[str, PathLike[str]]
_Data = Union[_Path, Sequence[_Path], Mapping[str, npt.ArrayLike]]
_Params = Union[float, npt.ArrayLike]

@final
class Scheme:
    """A quantization scheme: bit-width, grid, symmetry and granularity."""

    def __new__(
        cls,
        bits: int = 8,
        symmetric: bool = False,
        signed: Optional[bool] = None,
        narrow: bool = False,
        pow2: bool = False,
        granularity: str = "per-tensor",
        axis: int = 0,
        block_size: int = 32,
    ) -> Scheme: ...
    @property
    def bits(self) -> int: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def signed(self) -> bool: ...
    @property
    def narrow(self) -> bool: ...
    @property
    def pow2(self) -> bool: ...
    @property
    def granularity(self) -> str: ...
    @property
    def axis(self) -> Optional[int]: ...
    @property
    def block_size(self) -> Optional[int]: ...
    @property
    def grid(self) -> Tuple[int, int]: ...
    @property
    def storage(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...
    def __reduce__(self) -> Tuple[Any, Tuple[int, bool, bool, bool, bool, str, int, int]]: ...

@final
class Observer:
    """A streaming range estimator for one tensor."""

    def __new__(
        cls,
        method: str = "minmax",
        scheme: Optional[Scheme] = None,
        *,
        histogram_bins: int = 8192,
        **params: float,
    ) -> Observer: ...
    def update(self, x: npt.ArrayLike) -> None: ...
    def merge(self, other: Observer) -> None: ...
    def range(self) -> Tuple[Any, Any]: ...
    def params(self) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...
    @property
    def method(self) -> str: ...
    @property
    def scheme(self) -> Scheme: ...
    @property
    def state_bytes(self) -> int: ...
    def __reduce__(self) -> Tuple[Any, Tuple[bytes, Scheme]]: ...

def _observer_from_state(state: bytes, scheme: Scheme) -> Observer: ...
def quantize(
    x: npt.ArrayLike,
    scheme: Scheme,
    scale: _Params,
    zero_point: Optional[_Params] = None,
    *,
    storage: Optional[str] = None,
    out: Optional[npt.NDArray[Any]] = None,
) -> npt.NDArray[Any]: ...
def dequantize(
    q: npt.NDArray[Any],
    scheme: Scheme,
    scale: _Params,
    zero_point: Optional[_Params] = None,
    *,
    shape: Optional[Sequence[int]] = None,
    out: Optional[npt.NDArray[np.float32]] = None,
) -> npt.NDArray[np.float32]: ...
def fake_quant(
    x: npt.ArrayLike,
    scheme: Scheme,
    scale: _Params,
    zero_point: Optional[_Params] = None,
    *,
    out: Optional[npt.NDArray[np.float32]] = None,
) -> npt.NDArray[np.float32]: ...
def params_from_range(scheme: Scheme, min: _Params, max: _Params) -> Tuple[Any, Any]: ...
def params_from_data(
    x: npt.ArrayLike, scheme: Scheme
) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...
def explain(
    scheme: Scheme,
    min: Optional[float] = None,
    max: Optional[float] = None,
    data: Optional[npt.ArrayLike] = None,
) -> Dict[str, Any]: ...
def _kernel_seconds(
    op: str, x: npt.ArrayLike, scheme: Scheme, scale: float, zero_point: int, repeats: int
) -> float: ...
def run(model: _Path, inputs: Mapping[str, npt.ArrayLike]) -> Dict[str, npt.NDArray[Any]]: ...
def graph_nodes(model: _Path) -> List[Tuple[str, str]]: ...
def quantize_model(model: _Path, data: _Data, output: _Path, **options: Any) -> str: ...
def analyze(
    model: _Path,
    data: _Data,
    *,
    samples: int = 32,
    sensitivity_samples: int = 8,
    plots: int = 6,
    suggestions: bool = True,
    **options: Any,
) -> str: ...
def train(
    model: _Path,
    data: _Data,
    output: _Path,
    *,
    labels: Optional[Sequence[int]] = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 0.001,
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
) -> str: ...
def evaluate(
    float_model: _Path,
    quantized_model: _Path,
    data: _Data,
    *,
    labels: Any = None,
    samples: Optional[int] = None,
    batch: int = 64,
    mean: Sequence[float] = ...,
    std: Sequence[float] = ...,
) -> str: ...
def gguf(
    input: _Path,
    output: _Path,
    type_: str = "Q4_K_M",
    *,
    imatrix: Optional[_Path] = None,
    pure: bool = False,
    calib: Optional[_Path] = None,
    awq: bool = False,
    awq_clip: bool = True,
    method: str = "gptq",
    act_order: Optional[bool] = None,
    calib_chunks: int = 32,
    calib_ctx: Optional[int] = None,
) -> List[Tuple[str, str, str]]: ...
