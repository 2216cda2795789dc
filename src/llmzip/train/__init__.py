"""Train a native llmzip model from corpus files: `llmzip train` (like `zstd --train`).

    python -m llmzip.train data/corpus -o my-model --preset small --steps 20000

A run lives in a work folder (default: OUTPUT.train/) that holds the tokenizer, the tokenised
corpus, checkpoints and the prequential log, so `--resume` continues exactly where a run
stopped (`--max-minutes` stops one cleanly). Every run ends by writing OUTPUT as a model
directory: config.json, model.safetensors, tokenizer.json and a model card README.md.

Training samples are exactly what compression sees: the start token (id 0) at position 0
followed by context_length - 1 text tokens. The first epoch visits non-overlapping windows of
the corpus in a fixed shuffled order; later epochs shift the window grid by a random offset.

Learning is compression: during the first epoch every window is scored before the optimizer
learns from it, so the summed cross-entropy is the code length an adaptive coder would pay to
send the corpus while training on it (the prequential code length). It is reported beside the
corpus's `xz -9e` size.

Quantisation-aware training (the last 30% of steps by default) rounds every Linear and
Embedding weight to per-output-channel symmetric int8 in the forward pass (scale =
max|row| / 127, float32) with a straight-through gradient, as the exact integer engine does.

The modules: `config.py` (TrainConfig and the options), `data.py` (corpus, tokenizer, window
order), `loop.py` (the run: steps, checkpoints, the model directory), `report.py` (the
prequential code length and the model card).
"""

from __future__ import annotations

import argparse

from .config import PRESETS, TrainConfig, add_train_arguments
from .data import token_byte_lengths, train_tokenizer
from .loop import Run, fake_quantise_per_channel

__all__ = ["PRESETS", "TrainConfig", "add_train_arguments", "run_train", "train_tokenizer", "token_byte_lengths",
           "fake_quantise_per_channel", "main"]


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) and write the model directory; returns an exit status. Errors a user can
    cause are llmzip.errors.TrainingError (the CLI prints them in one line)."""
    return Run(args).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmzip train", description="Train a native llmzip model from text files.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))
