"""Which ONNX Runtime integer kernels this CPU runs, for the tests that compare against them.

On x86 without VNNI, ONNX Runtime's uint8 x int8 kernels (QGemm, MatMulInteger, DynamicQuantizeLSTM)
add pairs of products in int16 with saturation (AVX2's vpmaddubsw), so a model with 8-bit weights of
full range departs from the QDQ semantics there; `--limit-pairs` is zeropoint's remedy for static
models, `--reduce-range` for dynamic ones. The same rule as tests/support.rs's
ort_int8_kernels_saturate, which the Rust tests use.
"""

import platform
from pathlib import Path


def int8_kernels_saturate():
    """Whether ONNX Runtime's uint8 x int8 kernels add int16 pairs with saturation here."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


# Extra `zeropoint quantize` arguments for a static model that ONNX Runtime's kernels run exactly.
LIMIT_PAIRS = ["--limit-pairs"] if int8_kernels_saturate() else []
