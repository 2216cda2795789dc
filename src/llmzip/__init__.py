"""llmzip: lossless compression with language models.

    >>> import llmzip
    >>> packed = llmzip.compress(data, model="path/to/model")
    >>> llmzip.decompress(packed) == data
"""

from .api import CompressOptions, Compressor, Decompressor, Info, LLMZipFile, compress, decompress, info, open
from .errors import (
    CorruptError,
    EngineMismatchError,
    FormatError,
    LLMZipError,
    ModelError,
    TokenizationError,
    TrainingError,
    TruncatedError,
)

__version__ = "0.1.0"

__all__ = [
    "CompressOptions",
    "Compressor",
    "CorruptError",
    "Decompressor",
    "EngineMismatchError",
    "FormatError",
    "Info",
    "LLMZipError",
    "LLMZipFile",
    "ModelError",
    "TokenizationError",
    "TrainingError",
    "TruncatedError",
    "compress",
    "decompress",
    "info",
    "open",
]
