"""One exception hierarchy; every message says what failed and how to fix it."""


class LLMZipError(Exception):
    """Base class of every error llmzip raises on purpose."""


class FormatError(LLMZipError):
    """The data is not an llmzip file, or is of a format version this llmzip cannot read."""


class CorruptError(LLMZipError):
    """The file is damaged: a checksum, length or limit does not hold."""


class TruncatedError(CorruptError, EOFError):
    """The file ends before its end record; like the standard library, an EOFError."""


class ModelError(LLMZipError):
    """A model cannot be found, loaded, or is not the one a file was made with."""


class EngineMismatchError(LLMZipError):
    """A float-engine file met a machine whose numeric settings differ from the encoder's."""


class TokenizationError(LLMZipError):
    """A tokenizer cannot represent some bytes exactly (the chunk is then stored raw)."""


class TrainingError(LLMZipError):
    """A training run cannot start or continue: bad options, missing inputs, a mismatched work folder."""
