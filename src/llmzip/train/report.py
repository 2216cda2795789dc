"""What a run reports: the prequential code length of its corpus (beside `xz -9e` on the same
bytes, with a plot) and the model card written next to the model."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig
from .data import Corpus, WindowPlan, log, read_text_file, token_bytes_table


class Prequential:
    """During the first epoch every window is scored before the optimizer learns from it, so the
    summed cross-entropy is the code length an adaptive coder would pay to send the corpus while
    training on it. Rows are [step, bits, bytes] of the first-epoch windows of each step."""

    def __init__(self, work: Path, corpus: Corpus, plan: WindowPlan):
        self.work = work
        self.corpus = corpus
        self.plan = plan
        self.rows: list[list[int | float]] = []

    def record(self, step: int, bits: float, covered: int) -> None:
        self.rows.append([step, bits, covered])

    def first_epoch_complete(self, step: int) -> bool:
        return step * self.plan.batch_size >= len(self.plan.epoch(0)[1])

    def windows_scored(self, step: int) -> int:
        return min(len(self.plan.epoch(0)[1]), step * self.plan.batch_size)

    def xz_size_of_first_epoch(self, step: int) -> tuple[int, int]:
        """Size of the windows scored in the first epoch, in visit order, and its `xz -9e` size."""
        cache = self.work / "xz.json"
        visited = self.windows_scored(step)
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved["windows"] == visited:
                return saved["raw_bytes"], saved["xz_bytes"]
        tokens, window = self.corpus.train_tokens, self.plan.window
        table = token_bytes_table(self.corpus.tokenizer)
        offset, order = self.plan.epoch(0)
        total = sum(int(self.corpus.byte_lengths[torch.from_numpy(
                        tokens[offset + int(index) * window: offset + (int(index) + 1) * window]).long()].sum())
                    for index in order[:visited])
        # xz -9e, with the dictionary no larger than the data (same result, far less memory to set up).
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                    "dict_size": max(4096, min(64 * 2**20, total))}]
        compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=filters)
        raw = xz = 0
        for index in order[:visited]:
            start = offset + int(index) * window
            window_bytes = b"".join(table[token] for token in tokens[start:start + window])
            raw += len(window_bytes)
            xz += len(compressor.compress(window_bytes))
        xz += len(compressor.flush())
        cache.write_text(json.dumps({"windows": visited, "raw_bytes": raw, "xz_bytes": xz}) + "\n")
        return raw, xz

    def summary(self, step: int) -> dict:
        bits = sum(row[1] for row in self.rows)
        covered = sum(row[2] for row in self.rows)
        return {"bits": bits, "bytes": covered, "bits_per_byte": bits / covered if covered else None,
                "first_epoch_complete": self.first_epoch_complete(step), "corpus_bytes": self.corpus.raw_bytes}

    def write(self, step: int, with_xz: bool = False) -> dict:
        """prequential.json in the work folder; `xz -9e` is measured when asked or already cached."""
        summary = self.summary(step)
        cache = self.work / "xz.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached and cached["windows"] != self.windows_scored(step):
            cached = None
        if (with_xz or cached) and summary["bytes"]:
            if not cached:
                log("measuring xz -9e on the same windows")
            raw, xz = self.xz_size_of_first_epoch(step)
            summary.update({"xz_raw_bytes": raw, "xz_bytes": xz, "xz_bits_per_byte": 8 * xz / raw})
        (self.work / "prequential.json").write_text(json.dumps({"summary": summary, "steps": self.rows}) + "\n")
        return summary

    def plot(self, summary: dict) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log("matplotlib is not installed; skipping the prequential plot (pip install 'llmzip[bench]')")
            return
        if not self.rows:
            return
        rows = np.asarray(self.rows, dtype=np.float64)
        cumulative_bytes = np.cumsum(rows[:, 2])
        smooth = max(1, len(rows) // 200)
        kernel = np.ones(smooth)
        batch_bpb = np.convolve(rows[:, 1], kernel, "valid") / np.convolve(rows[:, 2], kernel, "valid")
        figure, axis = plt.subplots(figsize=(7, 4))
        axis.plot(cumulative_bytes[smooth - 1:] / 2**20, batch_bpb, label="model (per batch, before learning it)")
        axis.plot(cumulative_bytes / 2**20, np.cumsum(rows[:, 1]) / cumulative_bytes, label="model (running total)")
        if "xz_bits_per_byte" in summary:
            axis.axhline(summary["xz_bits_per_byte"], color="gray", linestyle="--", label="xz -9e (whole)")
        axis.set_xlabel("corpus seen (MiB)")
        axis.set_ylabel("bits per byte")
        axis.set_ylim(0, min(8.5, float(batch_bpb.max()) * 1.05))
        axis.set_title("Prequential code length of the training corpus")
        axis.legend()
        figure.tight_layout()
        figure.savefig(self.work / "prequential.png", dpi=120)
        plt.close(figure)


def model_card(name: str, config: TrainConfig, model, *, size: int, validation_bpb: float, summary: dict,
               quantised: bool, step: int, finished: bool, trained_seconds: float, device: str, corpus: Corpus,
               files: list[Path]) -> str:
    """README.md of a model directory: architecture, size, training and the prequential result."""
    c = model.config
    window = config.context_length - 1
    tokens_seen = step * config.batch_size * window
    file_rows = "\n".join(f"| {path} | {len(read_text_file(path)):,} |" for path in files)
    if summary.get("bits_per_byte") is not None:
        prequential = (f"{summary['bits_per_byte']:.4f} bits per byte over {summary['bytes']:,} bytes"
                       + ("" if summary["first_epoch_complete"] else " (first epoch not finished)"))
        if "xz_bits_per_byte" in summary:
            prequential += (f"; `xz -9e` on the same windows: {summary['xz_bits_per_byte']:.4f} bits per byte "
                            f"({summary['xz_raw_bytes']:,} -> {summary['xz_bytes']:,} bytes)")
    else:
        prequential = "not measured"
    if config.time_budget_minutes:
        schedule = f"over a training-time budget of {config.time_budget_minutes} minutes"
    else:
        schedule = f"over {config.steps:,} steps"
    status = "finished" if finished else f"stopped early at step {step} of {config.steps}"
    weights = ("on the int8 grid: per output channel, symmetric, scale = max abs(row) / 127 (quantisation-aware "
               f"training over the last {config.qat_fraction:.0%} of steps)" if quantised
               else "float32, not quantisation-aware trained")
    return f"""# {name}

A native llmzip model (architecture `llmzip-gpt`): a decoder-only transformer with RMSNorm, learned
positions, ReLU² MLP, no biases and an output head tied to the token embedding, and a byte-level BPE
tokenizer whose id 0 (`<|endoftext|>`) opens every chunk. Trained with `llmzip train`.

| | |
|---|---|
| parameters | {model.num_parameters():,} |
| size on disk | {size:,} bytes (config.json, model.safetensors float32, tokenizer.json) |
| vocabulary | {c.vocab_size} |
| context length | {c.context_length} (start token + {c.context_length - 1} text tokens) |
| layers / heads / width | {c.n_layer} / {c.n_head} / {c.n_embd} (MLP {c.mlp_ratio * c.n_embd}) |
| weights | {weights} |

## Training

- Status: {status}; {step:,} steps of {config.batch_size} windows, {tokens_seen:,} tokens seen,
  {trained_seconds / 60:.1f} minutes of training on {device}.
- Optimiser: AdamW (β = 0.9, 0.95), peak learning rate {config.learning_rate}, {config.warmup_steps} warm-up steps,
  cosine decay to {config.min_learning_rate_ratio} of the peak {schedule}, weight decay {config.weight_decay}, \
gradient clip {config.grad_clip}, seed {config.seed}.
- Training data: {corpus.raw_bytes:,} bytes ({corpus.raw_bytes / 2**20:.1f} MiB), \
{len(corpus.train_tokens):,} training tokens;
  the last {config.val_fraction:.0%} of every file is held out for validation.
- Prequential code length of the training corpus (each window scored before it was learned from): {prequential}.
- Validation loss on held-out training text: {validation_bpb:.4f} bits per byte.

| training file | bytes |
|---|---:|
{file_rows}

## Benchmark results

<!-- Results on corpora/bench are added here by the benchmark; none of those files were trained on. -->
To be added.
"""
