"""Inference engines: they turn a model and token prefixes into the coder's weights.

An engine's output for one position is a row of V non-negative weights (the unnormalised
next-token distribution handed to the entropy coder). Encoder and decoder obtain every row
through the engine, so the coder never sees anything the decoder could not reproduce.

Two kinds exist:
- exact engines: integer arithmetic, so a row is a pure function of the weights and the token
  prefix on any device, thread count, batch or pass shape. `exact.py` holds the integer
  primitives, the shared engine and sessions, and the native GPT family; `gguf_llama.py` runs
  Llama GGUF files (the default SmolLM2-135M) on their own quantised integers with compiled
  kernels (`_quantized.c`); `exact_llama.py` runs other Llama models on int16 weights;
- the float engine (any model): ordinary float inference, reproducible only on the same
  device type, dtype, library versions and thread count, all of which go into the header.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Session(Protocol):
    """Incremental inference for a fixed batch of sequences that all start at position 0."""

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per sequence (B,) and return weights for the next one (B, V)."""


class Engine(Protocol):
    #: Everything about the engine that changes the bitstream; written into the header.
    settings: dict
    #: True when a row does not depend on batch size, batch neighbours or pass shape.
    batch_invariant: bool
    vocab_size: int
    start_token: int

    def start(self, batch_size: int) -> Session:
        """A fresh incremental session, used by the decoder and by float-engine encoders."""

    def sequence_weights(self, token_lists: list[np.ndarray]) -> list[np.ndarray] | None:
        """Weights for every position of each sequence in one full pass, (T_i, V) each.

        Row t predicts token t from the start token and tokens[:t]. Only batch-invariant
        engines provide this; others return None and are driven through `start` instead.
        Batch-invariant engines also yield the same rows in pieces, `sequence_pieces(token_lists)`
        -> (sequence, start, rows), so an encoder never holds a whole chunk's rows.
        """
