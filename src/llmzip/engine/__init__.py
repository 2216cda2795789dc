"""Inference engines: they turn a model and token prefixes into the coder's weights.

An engine's output for one position is a row of V non-negative integer weights (the
unnormalised next-token distribution handed to the entropy coder). Encoder and decoder obtain
every row through the engine, so the coder never sees anything the decoder could not reproduce.

The modules, bottom up:
- `integer.py`: integer building blocks (exact products on float BLAS, fixed-point scales,
  integer RMSNorm, softmax tables and attention, output rows);
- `exact.py`: what every exact engine shares (full passes, incremental sessions, caches);
- one module per architecture, each an ExactEngine: `gpt.py` (the native GPT family, the
  built-in llmzip-tiny), `llama.py` (Llama models from float weights, on int16 weights) and
  `gguf_llama.py` (Llama GGUF files such as the default SmolLM2-135M on their own quantised
  integers, with the compiled kernels of `_quantized.c`);
- `float.py`: ordinary float inference for any model, reproducible only on the same device
  type, dtype, library versions and thread count, all of which go into the model record.

An exact engine's row is a pure function of the weights and the token prefix on any device,
thread count, batch or pass shape. `EXACT_ENGINES` maps a model's architecture to its engine.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Session(Protocol):
    """Incremental inference for a fixed batch of sequences that all start at position 0."""

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per sequence (B,) and return weights for the next one (B, V)."""


class Engine(Protocol):
    """What the stream coder needs from an engine (exact.ExactEngine and float.FloatEngine)."""

    #: Everything about the engine that changes the bitstream; written into the model record.
    settings: dict
    #: True when a row does not depend on batch size, batch neighbours or pass shape.
    batch_invariant: bool
    vocab_size: int
    start_token: int

    def start(self, batch_size: int) -> Session:
        """A fresh incremental session, used by the decoder and by float-engine encoders."""

    def sequence_weights(self, token_lists: list[np.ndarray]) -> list[np.ndarray] | None:
        """Weights for every position of each sequence in one full pass, (T_i, V) each.

        Row t predicts token t from the start token and tokens[:t]. An exact engine's rows are
        integers summing to 2**30, as int64 or as float64 (the compiled GGUF engine writes the
        form the coder takes); the values are what matter, never the dtype. Only batch-invariant
        engines provide this; others return None and are driven through `start` instead.
        Batch-invariant engines also yield the same rows in pieces, `sequence_pieces(token_lists,
        positions, step_major)` -> (sequence, start, rows), so an encoder never holds a whole
        chunk's rows; `step_major` yields every sequence's piece at one start before the next start.
        """


# Architecture (LoadedModel.architecture) -> (module, exact engine class).
EXACT_ENGINES = {
    "gpt": ("llmzip.engine.gpt", "ExactGPTEngine"),
    "llama": ("llmzip.engine.llama", "ExactLlamaEngine"),
    "llama-gguf": ("llmzip.engine.gguf_llama", "ExactGGUFLlamaEngine"),
}


def exact_engine_class(architecture: str) -> type:
    """The exact engine class of an architecture, imported on demand (engines import torch)."""
    import importlib

    module, name = EXACT_ENGINES[architecture]
    return getattr(importlib.import_module(module), name)
