"""The exceptions zeropoint raises. Each message is one line that names the file, tensor or node
and the problem, the same line the ``zeropoint`` command prints."""


class Error(Exception):
    """Base class of every error zeropoint raises."""


class SchemeError(Error, ValueError):
    """A scheme, parameters or arrays that do not fit together (bit-width, scale, zero-point,
    shape, storage type)."""


class ModelError(Error):
    """A model file that cannot be read, run, quantized or written."""


class DataError(Error):
    """Calibration or evaluation data that cannot be read or does not fit the model."""


class GgufError(Error):
    """A GGUF file (or checkpoint) that cannot be read or quantized."""
