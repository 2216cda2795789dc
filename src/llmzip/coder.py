"""Entropy coding: a range coder over integer CDFs, knowing nothing about models.

Each position comes with a row of non-negative weights over the vocabulary. constriction turns
a row into an integer CDF at 24-bit precision by a deterministic rule that gives every symbol at
least one count (so any token can be coded), then range-codes the symbol. The quantisation is a
pure function of the float64 row, so encoder and decoder agree whenever their rows are equal.
"""

from __future__ import annotations

import constriction
import numpy as np

from .errors import CorruptError

CODER_SETTINGS = {
    "name": "range",
    "library": "constriction",
    "library_version": "0.5",
    "precision": 24,
    "quantisation": "categorical-fast",
}

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)
_WORD = np.dtype("<u4")


def float_rows(weights: np.ndarray) -> np.ndarray:
    """Weights as the float64 rows the coder takes: themselves when they already are."""
    rows = np.ascontiguousarray(weights, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError("weights must be a (positions, vocabulary) array")
    return rows


class FloatRows:
    """One float64 buffer that rows are converted into before coding, reused from call to call: a
    fresh 100 MB array per piece of rows costs more in page faults than the conversion itself.
    Rows that are float64 already (the compiled GGUF engine writes them so) need no buffer."""

    def __init__(self):
        self._buffer = np.empty(0, dtype=np.float64)

    def convert(self, weights: np.ndarray) -> np.ndarray:
        """weights (T, V) as float64: themselves if they are, else in the buffer (valid until the next call)."""
        if weights.dtype == np.float64 and weights.flags.c_contiguous:
            return weights
        if self._buffer.size < weights.size:
            self._buffer = np.empty(weights.size, dtype=np.float64)
        rows = self._buffer[: weights.size].reshape(weights.shape)
        np.copyto(rows, weights, casting="unsafe")
        return rows


class Encoder:
    """Codes symbols one row or many rows at a time into one payload."""

    def __init__(self):
        self._encoder = constriction.stream.queue.RangeEncoder()

    def encode(self, symbols: np.ndarray, weights: np.ndarray) -> None:
        """Code symbols (T,) under weights (T, V); one vectorised call, no loop per symbol."""
        symbols = np.ascontiguousarray(symbols, dtype=np.int32)
        if len(symbols):
            self._encoder.encode(symbols, _CATEGORICAL, float_rows(weights))

    def finish(self) -> bytes:
        return self._encoder.get_compressed().astype(_WORD).tobytes()


class Decoder:
    def __init__(self, payload: bytes):
        if len(payload) % 4:
            raise CorruptError("a chunk's payload is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype=_WORD).astype(np.uint32)
        self._decoder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, weights: np.ndarray) -> np.ndarray:
        """Decode one symbol per row of weights (T, V)."""
        return np.asarray(self._decoder.decode(_CATEGORICAL, float_rows(weights)), dtype=np.int64)


def encode(symbols: np.ndarray, weights: np.ndarray) -> bytes:
    encoder = Encoder()
    encoder.encode(symbols, weights)
    return encoder.finish()


def code_length_bits(symbols: np.ndarray, weights: np.ndarray, total: int | None = None) -> np.ndarray:
    """The ideal cost −log2 p of each symbol under its row (the cross-entropy bound); `total`:
    what every row sums to, when the caller knows it (exact engines), saving a pass over the rows.

    A probability below the coder's smallest count (2^-precision) is counted at that floor,
    since the coder gives every symbol at least that much.
    """
    if np.ndim(weights) != 2:
        raise ValueError("weights must be a (positions, vocabulary) array")
    # Only the chosen entries and the row sums are needed: no float copy of the whole rows.
    totals = np.full(len(weights), float(total)) if total is not None else \
        np.asarray(weights.sum(axis=1), dtype=np.float64)
    chosen = np.asarray(weights[np.arange(len(symbols)), symbols], dtype=np.float64)
    chosen = np.maximum(chosen, totals * 2.0 ** -CODER_SETTINGS["precision"])
    return np.log2(totals) - np.log2(chosen)
