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
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models.gpt import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, GPT, GPTConfig, save_model_directory
from .tokenization import byte_level_alphabet

__all__ = ["PRESETS", "add_train_arguments", "run_train", "train_tokenizer", "fake_quantise_per_channel", "main"]

START_TOKEN = 0
SPECIAL_TOKEN = "<|endoftext|>"

# Named sizes; the parameter counts include the tied embedding / output head.
PRESETS = {
    "tiny": dict(vocab_size=4096, context_length=256, n_layer=2, n_head=2, n_embd=96),  # ~0.6M, llmzip-tiny
    "small": dict(vocab_size=4096, context_length=256, n_layer=4, n_head=4, n_embd=128),  # ~1.3M, llmzip-small
    "base": dict(vocab_size=8192, context_length=512, n_layer=8, n_head=4, n_embd=256),  # ~8.6M
    "large": dict(vocab_size=16384, context_length=512, n_layer=8, n_head=8, n_embd=512),  # ~34M
}
MODEL_OPTIONS = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")
# Options that shape the bitstream-relevant result; a resumed run takes them from the work folder.
RUN_OPTIONS = MODEL_OPTIONS + ("steps", "batch_size", "learning_rate", "min_learning_rate_ratio", "warmup_steps",
                               "weight_decay", "grad_clip", "seed", "qat_fraction", "val_fraction", "val_windows",
                               "tokenizer_sample_bytes", "time_budget_minutes")
DEFAULTS = dict(steps=2000, batch_size=16, learning_rate=2e-3, min_learning_rate_ratio=0.1, warmup_steps=100,
                weight_decay=0.1, grad_clip=1.0, seed=1234, qat_fraction=0.3, val_fraction=0.01, val_windows=128,
                tokenizer_sample_bytes=24 * 2**20, time_budget_minutes=None)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE: id 0 is <|endoftext|> (the start token) and all 256 byte tokens exist."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.token_to_id(SPECIAL_TOKEN) != START_TOKEN:
        raise RuntimeError("the start token did not get id 0")
    return tokenizer


def token_byte_lengths(tokenizer) -> np.ndarray:
    """How many bytes each token id stands for (0 for special tokens)."""
    character_to_byte = byte_level_alphabet()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    lengths = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for piece, token_id in vocab.items():
        if piece != SPECIAL_TOKEN and all(character in character_to_byte for character in piece):
            lengths[token_id] = len(piece)
    return lengths


def token_bytes_table(tokenizer) -> list[bytes]:
    character_to_byte = byte_level_alphabet()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    for piece, token_id in vocab.items():
        if piece != SPECIAL_TOKEN:
            table[token_id] = bytes(character_to_byte[character] for character in piece)
    return table


def _text_pieces(data: bytes, piece_bytes: int = 1 << 20):
    """Split text at line ends into pieces the tokenizer can encode in parallel."""
    start = 0
    while start < len(data):
        end = min(start + piece_bytes, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            end = newline + 1 if newline > start else end
        yield data[start:end].decode("utf-8", errors="replace")
        start = end


def corpus_files(inputs: list[str]) -> list[Path]:
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"training input '{name}' does not exist")
    if not files:
        raise FileNotFoundError("no training files found in " + ", ".join(inputs))
    return files


def read_text_file(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def tokenizer_sample(files: list[Path], budget: int, chunk: int = 64 * 1024):
    """Evenly spaced chunks of every file, in proportion to its size, up to `budget` bytes."""
    sizes = [len(read_text_file(path)) for path in files]
    total = sum(sizes)
    for path, size in zip(files, sizes):
        data = read_text_file(path)
        share = size if total <= budget else max(chunk, int(budget * size / total))
        count = max(1, share // chunk)
        step = max(chunk, size // count)
        for start in range(0, size, step)[:count]:
            yield data[start:start + chunk].decode("utf-8", errors="replace")


def tokenise_corpus(tokenizer, files: list[Path], val_fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Token streams for training and validation (the tail of every file), and the raw byte count."""
    train_parts, val_parts = [], []
    raw_bytes = 0
    for path in files:
        data = read_text_file(path)
        raw_bytes += len(data)
        ids = [token for encoding in tokenizer.encode_batch(list(_text_pieces(data))) for token in encoding.ids]
        ids = np.asarray(ids, dtype=np.int32)
        held_out = int(len(ids) * val_fraction)
        train_parts.append(ids[:len(ids) - held_out])
        val_parts.append(ids[len(ids) - held_out:])
    return np.concatenate(train_parts), np.concatenate(val_parts), raw_bytes


# ---------------------------------------------------------------- quantisation

def fake_quantise_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """Round each row to symmetric int8 (scale = max|row| / 127, float32); gradients pass straight through."""
    master = weight.float()
    scale = master.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantised = torch.clamp(torch.round(master / scale), -127, 127) * scale
    return weight + (quantised.to(weight.dtype) - weight).detach()


def quantised_weight_names(model: GPT) -> list[str]:
    return [f"{module_name}.weight" for module_name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))]


def forward(model: GPT, tokens: torch.Tensor, quantise: bool) -> torch.Tensor:
    if not quantise:
        return model(tokens)
    parameters = dict(model.named_parameters())
    replaced = {name: fake_quantise_per_channel(parameters[name]) for name in quantised_weight_names(model)}
    return torch.func.functional_call(model, replaced, (tokens,))


# ---------------------------------------------------------------- data order

@dataclass
class WindowPlan:
    """Which windows of the token stream each step sees; a pure function of (seed, step)."""
    stream_length: int
    window: int  # text tokens per sample (context_length - 1)
    batch_size: int
    seed: int

    def __post_init__(self):
        self._epochs: list[tuple[int, np.ndarray]] = []  # (offset, order of window indices)

    def epoch(self, number: int) -> tuple[int, np.ndarray]:
        while len(self._epochs) <= number:
            index = len(self._epochs)
            rng = np.random.default_rng([self.seed, index])
            offset = 0 if index == 0 else int(rng.integers(0, self.window))
            count = (self.stream_length - offset) // self.window
            self._epochs.append((offset, rng.permutation(count)))
        return self._epochs[number]

    def batch(self, step: int) -> list[tuple[int, int]]:
        """(epoch, start) of each sample of a step."""
        first, last = step * self.batch_size, (step + 1) * self.batch_size
        samples, seen, number = [], 0, 0
        while len(samples) < self.batch_size:
            offset, order = self.epoch(number)
            if seen + len(order) > first:
                for position in range(max(first, seen) - seen, min(last, seen + len(order)) - seen):
                    samples.append((number, offset + int(order[position]) * self.window))
            seen += len(order)
            number += 1
        return samples


def make_batch(stream: np.ndarray, starts: list[int], window: int) -> tuple[torch.Tensor, torch.Tensor]:
    text = np.stack([stream[start:start + window] for start in starts]).astype(np.int64)  # (B, W)
    inputs = np.concatenate([np.full((len(starts), 1), START_TOKEN, dtype=np.int64), text[:, :-1]], axis=1)
    return torch.from_numpy(inputs), torch.from_numpy(text)


# ---------------------------------------------------------------- arguments

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llmzip train`; the CLI adds them to its subcommand."""
    parser.add_argument("inputs", nargs="+", help="training files or folders (.xz files are decompressed)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="model directory to write")
    parser.add_argument("--work-dir", type=Path, help="checkpoints, tokens and logs (default: OUTPUT.train)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the work folder")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="small", help="named size (default: small)")
    model.add_argument("--vocab-size", type=int, help="BPE vocabulary, <|endoftext|> included")
    model.add_argument("--context-length", type=int)
    model.add_argument("--n-layer", type=int)
    model.add_argument("--n-head", type=int)
    model.add_argument("--n-embd", type=int)
    model.add_argument("--tokenizer", type=Path, help="use this tokenizer.json instead of training one")
    run = parser.add_argument_group("training")
    run.add_argument("--steps", type=int, help=f"optimizer steps (default {DEFAULTS['steps']})")
    run.add_argument("--batch-size", type=int, help=f"windows per step (default {DEFAULTS['batch_size']})")
    run.add_argument("--learning-rate", type=float, help=f"peak AdamW learning rate (default {DEFAULTS['learning_rate']})")
    run.add_argument("--min-learning-rate-ratio", type=float, help="end of the cosine, as a share of the peak")
    run.add_argument("--warmup-steps", type=int)
    run.add_argument("--weight-decay", type=float)
    run.add_argument("--grad-clip", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--qat-fraction", type=float,
                     help="share of the last steps trained with int8 fake quantisation (default 0.3; 0 turns it off)")
    run.add_argument("--val-fraction", type=float, help="tail of every file held out for validation (default 0.01)")
    run.add_argument("--val-windows", type=int, help="most validation windows scored (default 128)")
    run.add_argument("--time-budget-minutes", type=float,
                     help="schedule the learning rate and quantisation by training time instead of steps and stop "
                          "when it is spent (for shared machines of unknown speed; resuming is then not bit-exact)")
    run.add_argument("--tokenizer-sample-bytes", type=int, help="bytes of text the BPE is trained on")
    machine = parser.add_argument_group("machine")
    machine.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    machine.add_argument("--threads", type=int, help="torch CPU threads")
    machine.add_argument("--compile", action="store_true", help="torch.compile the model")
    machine.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint + model) after this long")
    machine.add_argument("--pause-at-step", type=int,
                         help="stop cleanly once this step is reached (with --resume at the current step: only "
                              "write the model directory again)")
    machine.add_argument("--checkpoint-minutes", type=float, default=5.0)
    machine.add_argument("--snapshot-minutes", type=float, default=15.0,
                         help="write an intermediate model directory to WORK/snapshots this often (0: never)")
    machine.add_argument("--log-every", type=int, default=20)


def resolve_settings(args) -> dict:
    settings = dict(PRESETS[args.preset])
    settings.update(DEFAULTS)
    for name in RUN_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    settings["preset"] = args.preset
    settings["inputs"] = [str(Path(name)) for name in args.inputs]
    return settings


# ---------------------------------------------------------------- the run

class Run:
    def __init__(self, args):
        self.args = args
        self.work = args.work_dir or args.output.with_name(args.output.name + ".train")
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        settings_path = self.work / "settings.json"
        checkpoint_path = self.work / "checkpoint.pt"
        if args.resume:
            if not checkpoint_path.is_file():
                raise FileNotFoundError(f"nothing to resume: {checkpoint_path} does not exist")
            self.settings = json.loads(settings_path.read_text())
        else:
            self.settings = resolve_settings(args)
            settings_path.write_text(json.dumps(self.settings, indent=2) + "\n")
        s = self.settings
        outputs = (args.output.resolve(), self.work.resolve())
        self.files = [path for path in corpus_files(s["inputs"])
                      if not any(parent in outputs for parent in path.resolve().parents)]
        self.prepare_data()
        self.config = GPTConfig(vocab_size=self.tokenizer.get_vocab_size(), context_length=s["context_length"],
                                n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"])
        torch.manual_seed(s["seed"])
        self.model = GPT(self.config).to(self.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": s["weight_decay"]},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=s["learning_rate"], betas=(0.9, 0.95), fused=fused)
        self.window = s["context_length"] - 1
        self.plan = WindowPlan(len(self.train_tokens), self.window, s["batch_size"], s["seed"])
        self.step = 0
        self.prequential: list[list[int | float]] = []  # [step, bits, bytes] of first-epoch windows
        self.trained_seconds = 0.0
        self.val_history: list[list[float]] = []
        if args.resume:
            self.load_checkpoint(checkpoint_path)
        self.forward_model = torch.compile(self.model) if args.compile else self.model

    # -- data

    def prepare_data(self) -> None:
        from tokenizers import Tokenizer

        s = self.settings
        tokenizer_path = self.work / TOKENIZER_FILE
        if not tokenizer_path.is_file():
            if self.args.tokenizer:
                tokenizer_path.write_text(Path(self.args.tokenizer).read_text())
            else:
                log(f"training a {s['vocab_size']}-token BPE on up to {s['tokenizer_sample_bytes']:,} bytes")
                tokenizer = train_tokenizer(tokenizer_sample(self.files, s["tokenizer_sample_bytes"]), s["vocab_size"])
                tokenizer_path.write_text(tokenizer.to_str())
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        request_path = self.work / "tokenizer-request.json"
        if not request_path.is_file():
            request_path.write_text(json.dumps({"vocab_size": s["vocab_size"], "tokenizer": str(self.args.tokenizer or "")}) + "\n")
        requested = json.loads(request_path.read_text())
        if requested["vocab_size"] != s["vocab_size"] or requested["tokenizer"] != str(self.args.tokenizer or ""):
            raise ValueError(f"the work folder {self.work} holds a tokenizer made for other settings ({requested}); "
                             "use a new --work-dir")
        self.byte_lengths = torch.from_numpy(token_byte_lengths(self.tokenizer))
        tokens_path = self.work / "tokens.npz"
        if not tokens_path.is_file():
            log(f"tokenising {len(self.files)} files")
            train, val, raw = tokenise_corpus(self.tokenizer, self.files, s["val_fraction"])
            dtype = np.uint16 if self.tokenizer.get_vocab_size() <= 65536 else np.int32
            with open(tokens_path.with_suffix(".tmp"), "wb") as handle:
                np.savez(handle, train=train.astype(dtype), val=val.astype(dtype), raw_bytes=np.int64(raw))
            os.replace(tokens_path.with_suffix(".tmp"), tokens_path)
        saved = np.load(tokens_path)
        self.train_tokens = saved["train"].astype(np.int32)
        self.val_tokens = saved["val"].astype(np.int32)
        self.raw_bytes = int(saved["raw_bytes"])
        log(f"{self.raw_bytes:,} bytes -> {len(self.train_tokens):,} training + {len(self.val_tokens):,} validation tokens")

    # -- schedule

    def learning_rate(self, step: int) -> float:
        s = self.settings
        peak, floor = s["learning_rate"], s["learning_rate"] * s["min_learning_rate_ratio"]
        if step < s["warmup_steps"]:
            return peak * (step + 1) / s["warmup_steps"]
        if s.get("time_budget_minutes"):
            progress = self.trained_seconds / (60 * s["time_budget_minutes"])
        else:
            progress = (step - s["warmup_steps"]) / max(1, s["steps"] - s["warmup_steps"])
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))

    def quantising(self, step: int) -> bool:
        s = self.settings
        if s["qat_fraction"] <= 0:
            return False
        if s.get("time_budget_minutes"):
            return self.trained_seconds >= 60 * s["time_budget_minutes"] * (1 - s["qat_fraction"])
        return step >= round(s["steps"] * (1 - s["qat_fraction"]))

    def finished(self) -> bool:
        s = self.settings
        budget = s.get("time_budget_minutes")
        return self.step >= s["steps"] or bool(budget and self.trained_seconds >= 60 * budget)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    # -- steps

    def train_step(self) -> float:
        samples = self.plan.batch(self.step)
        inputs, targets = make_batch(self.train_tokens, [start for _, start in samples], self.window)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.model.train()
        with self.autocast():
            logits = forward(self.forward_model, inputs, self.quantising(self.step))  # (B, T, V)
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        loss = losses.mean()
        first_epoch = torch.tensor([epoch == 0 for epoch, _ in samples], device=self.device)
        if bool(first_epoch.any()):
            bits = (losses.detach().sum(dim=1) / math.log(2))[first_epoch].sum().item()
            covered = self.byte_lengths.to(self.device)[targets][first_epoch].sum().item()
            self.prequential.append([self.step, bits, int(covered)])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.settings["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["grad_clip"])
        self.optimizer.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validation_bits_per_byte(self) -> float:
        count = len(self.val_tokens) // self.window
        if count == 0:
            return float("nan")
        chosen = np.linspace(0, count - 1, min(count, self.settings["val_windows"])).round().astype(int)
        starts = [int(index) * self.window for index in np.unique(chosen)]
        bits = covered = 0.0
        self.model.eval()
        for first in range(0, len(starts), 16):
            inputs, targets = make_batch(self.val_tokens, starts[first:first + 16], self.window)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self.autocast():
                logits = forward(self.model, inputs, self.quantising(max(0, self.step - 1)))
            bits += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item() / math.log(2)
            covered += self.byte_lengths.to(self.device)[targets].sum().item()
        return bits / covered

    # -- checkpoints

    def save_checkpoint(self) -> None:
        path = self.work / "checkpoint.pt"
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "windows_consumed": self.step * self.settings["batch_size"], "torch_rng": torch.get_rng_state(),
                 "prequential": self.prequential, "trained_seconds": self.trained_seconds,
                 "val_history": self.val_history, "settings": self.settings}
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        self.write_prequential()

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        self.prequential = state["prequential"]
        self.trained_seconds = state["trained_seconds"]
        self.val_history = state["val_history"]
        log(f"resumed at step {self.step} of {self.settings['steps']}")

    # -- prequential code length

    def first_epoch_complete(self) -> bool:
        return self.step * self.settings["batch_size"] >= len(self.plan.epoch(0)[1])

    def windows_scored(self) -> int:
        return min(len(self.plan.epoch(0)[1]), self.step * self.settings["batch_size"])

    def xz_size_of_first_epoch(self) -> tuple[int, int]:
        """Size of the windows scored in the first epoch, in visit order, and its `xz -9e` size."""
        cache = self.work / "xz.json"
        visited = self.windows_scored()
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved["windows"] == visited:
                return saved["raw_bytes"], saved["xz_bytes"]
        table = token_bytes_table(self.tokenizer)
        offset, order = self.plan.epoch(0)
        total = sum(int(self.byte_lengths[torch.from_numpy(self.train_tokens[offset + int(index) * self.window:
                                                                         offset + (int(index) + 1) * self.window]).long()].sum())
                    for index in order[:visited])
        # xz -9e, with the dictionary no larger than the data (same result, far less memory to set up).
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                    "dict_size": max(4096, min(64 * 2**20, total))}]
        compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=filters)
        raw = xz = 0
        for index in order[:visited]:
            start = offset + int(index) * self.window
            piece = b"".join(table[token] for token in self.train_tokens[start:start + self.window])
            raw += len(piece)
            xz += len(compressor.compress(piece))
        xz += len(compressor.flush())
        cache.write_text(json.dumps({"windows": visited, "raw_bytes": raw, "xz_bytes": xz}) + "\n")
        return raw, xz

    def prequential_summary(self) -> dict:
        bits = sum(row[1] for row in self.prequential)
        covered = sum(row[2] for row in self.prequential)
        return {"bits": bits, "bytes": covered, "bits_per_byte": bits / covered if covered else None,
                "first_epoch_complete": self.first_epoch_complete(), "corpus_bytes": self.raw_bytes}

    def write_prequential(self, with_xz: bool = False) -> dict:
        summary = self.prequential_summary()
        cache = self.work / "xz.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached and cached["windows"] != self.windows_scored():
            cached = None
        if (with_xz or cached) and summary["bytes"]:
            if not cached:
                log("measuring xz -9e on the same windows")
            raw, xz = self.xz_size_of_first_epoch()
            summary.update({"xz_raw_bytes": raw, "xz_bytes": xz, "xz_bits_per_byte": 8 * xz / raw})
        (self.work / "prequential.json").write_text(json.dumps({"summary": summary, "steps": self.prequential}) + "\n")
        return summary

    def plot_prequential(self, summary: dict) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            log("matplotlib is not installed; skipping the prequential plot")
            return
        if not self.prequential:
            return
        rows = np.asarray(self.prequential, dtype=np.float64)
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

    # -- model directory

    def export_model(self, directory: Path, validation_bpb: float, summary: dict) -> None:
        model = self.model
        quantised = self.quantising(max(0, self.step - 1))
        if quantised:  # store the weights the model was trained to use: already on the int8 grid
            model = GPT(self.config)
            model.load_state_dict(self.model.state_dict())
            with torch.no_grad():
                for name in quantised_weight_names(model):
                    parameter = model.get_parameter(name)
                    parameter.copy_(fake_quantise_per_channel(parameter.detach().cpu()))
        save_model_directory(directory, model, self.tokenizer.to_str())
        size = sum((directory / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE))
        (directory / "README.md").write_text(self.model_card(size, validation_bpb, summary, quantised))

    def model_card(self, size: int, validation_bpb: float, summary: dict, quantised: bool) -> str:
        s = self.settings
        c = self.config
        tokens_seen = self.step * s["batch_size"] * self.window
        files = "\n".join(f"| {path} | {len(read_text_file(path)):,} |" for path in self.files)
        if summary.get("bits_per_byte") is not None:
            prequential = (f"{summary['bits_per_byte']:.4f} bits per byte over {summary['bytes']:,} bytes"
                           + ("" if summary["first_epoch_complete"] else " (first epoch not finished)"))
            if "xz_bits_per_byte" in summary:
                prequential += (f"; `xz -9e` on the same windows: {summary['xz_bits_per_byte']:.4f} bits per byte "
                                f"({summary['xz_raw_bytes']:,} -> {summary['xz_bytes']:,} bytes)")
        else:
            prequential = "not measured"
        if s.get("time_budget_minutes"):
            schedule = f"over a training-time budget of {s['time_budget_minutes']} minutes"
        else:
            schedule = f"over {s['steps']:,} steps"
        status = "finished" if self.finished() else f"stopped early at step {self.step} of {s['steps']}"
        return f"""# {self.args.output.name}

A native llmzip model (architecture `llmzip-gpt`): a decoder-only transformer with RMSNorm, learned
positions, ReLU² MLP, no biases and an output head tied to the token embedding, and a byte-level BPE
tokenizer whose id 0 (`<|endoftext|>`) opens every chunk. Trained with `llmzip train`.

| | |
|---|---|
| parameters | {self.model.num_parameters():,} |
| size on disk | {size:,} bytes (config.json, model.safetensors float32, tokenizer.json) |
| vocabulary | {c.vocab_size} |
| context length | {c.context_length} (start token + {c.context_length - 1} text tokens) |
| layers / heads / width | {c.n_layer} / {c.n_head} / {c.n_embd} (MLP {c.mlp_ratio * c.n_embd}) |
| weights | {"on the int8 grid: per output channel, symmetric, scale = max abs(row) / 127 (quantisation-aware training over the last " + format(s["qat_fraction"], ".0%") + " of steps)" if quantised else "float32, not quantisation-aware trained"} |

## Training

- Status: {status}; {self.step:,} steps of {s['batch_size']} windows, {tokens_seen:,} tokens seen,
  {self.trained_seconds / 60:.1f} minutes of training on {self.args.device}.
- Optimiser: AdamW (β = 0.9, 0.95), peak learning rate {s['learning_rate']}, {s['warmup_steps']} warm-up steps,
  cosine decay to {s['min_learning_rate_ratio']} of the peak {schedule}, weight decay {s['weight_decay']}, gradient clip {s['grad_clip']}, seed {s['seed']}.
- Training data: {self.raw_bytes:,} bytes ({self.raw_bytes / 2**20:.1f} MiB), {len(self.train_tokens):,} training tokens;
  the last {s['val_fraction']:.0%} of every file is held out for validation.
- Prequential code length of the training corpus (each window scored before it was learned from): {prequential}.
- Validation loss on held-out training text: {validation_bpb:.4f} bits per byte.

| training file | bytes |
|---|---:|
{files}

## Benchmark results

<!-- Results on corpora/bench are added here by the benchmark; none of those files were trained on. -->
To be added.
"""

    # -- main loop

    def run(self) -> int:
        s = self.settings
        args = self.args
        log(f"model: {self.model.num_parameters():,} parameters, {self.config}")
        started = time.monotonic()
        last_checkpoint = last_snapshot = started
        last_log, last_log_step = started, self.step
        stop_reason = None
        interrupted = []
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():  # finish the step, then checkpoint and stop
            previous_handlers = {number: signal.signal(number, lambda number, frame: interrupted.append(number))
                                 for number in (signal.SIGINT, signal.SIGTERM)}
        while not self.finished():
            if interrupted:
                stop_reason = f"signal {signal.Signals(interrupted[0]).name}"
                break
            if args.pause_at_step is not None and self.step >= args.pause_at_step:
                stop_reason = f"--pause-at-step {args.pause_at_step} reached"
                break
            step_start = time.monotonic()
            loss = self.train_step()
            now = time.monotonic()
            self.trained_seconds += now - step_start
            if self.step % args.log_every == 0 or self.step == s["steps"]:
                rate = (self.step - last_log_step) * s["batch_size"] * self.window / max(1e-9, now - last_log)
                bytes_per_token = float(self.byte_lengths[torch.from_numpy(self.train_tokens[:100000]).long()].float().mean())
                log(f"step {self.step}/{s['steps']} loss {loss:.4f} ({loss / math.log(2) / bytes_per_token:.3f} bpb) "
                    f"lr {self.learning_rate(self.step - 1):.2e}{' qat' if self.quantising(self.step - 1) else ''} "
                    f"{rate:,.0f} tokens/s")
                last_log, last_log_step = now, self.step
            if args.snapshot_minutes and now - last_snapshot >= args.snapshot_minutes * 60:
                self.snapshot()
                last_snapshot = time.monotonic()
            if now - last_checkpoint >= args.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_checkpoint = time.monotonic()
            if args.max_minutes is not None and now - started >= args.max_minutes * 60:
                stop_reason = f"--max-minutes {args.max_minutes} reached"
                break
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        if stop_reason:
            log(f"stopping at step {self.step}: {stop_reason}; continue with --resume")
        finished = self.finished()
        summary = self.write_prequential(with_xz=finished)
        self.plot_prequential(summary)
        validation = self.validation_bits_per_byte()
        self.val_history.append([self.step, validation])
        self.export_model(args.output, validation, summary)
        self.save_checkpoint()
        if summary["bits_per_byte"] is not None:
            xz_text = f", xz -9e {summary['xz_bits_per_byte']:.4f}" if "xz_bits_per_byte" in summary else ""
            log(f"prequential: {summary['bits_per_byte']:.4f} bits per byte over {summary['bytes']:,} bytes{xz_text}")
        log(f"validation: {validation:.4f} bits per byte; model written to {args.output}")
        return 0

    def snapshot(self) -> None:
        validation = self.validation_bits_per_byte()
        self.val_history.append([self.step, validation])
        directory = self.work / "snapshots" / f"step-{self.step:07d}"
        self.export_model(directory, validation, self.prequential_summary())
        log(f"snapshot at step {self.step}: validation {validation:.4f} bits per byte -> {directory}")


def run_train(args) -> int:
    """Train (or resume) and write the model directory; returns an exit status."""
    return Run(args).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmzip train", description="Train a native llmzip model from text files.")
    add_train_arguments(parser)
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
