"""Training data: the corpus files, a byte-level BPE tokenizer, the tokenised corpus kept in the
work folder, and the order in which windows of it are visited."""

from __future__ import annotations

import json
import lzma
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainingError
from ..models.gpt import TOKENIZER_FILE
from ..tokenization import byte_level_alphabet
from .config import TrainConfig

START_TOKEN = 0
SPECIAL_TOKEN = "<|endoftext|>"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


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
        raise TrainingError("the start token did not get id 0")
    return tokenizer


def token_byte_lengths(tokenizer) -> np.ndarray:
    """How many bytes each token id stands for (0 for special tokens)."""
    character_to_byte = byte_level_alphabet()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    lengths = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for token_text, token_id in vocab.items():
        if token_text != SPECIAL_TOKEN and all(character in character_to_byte for character in token_text):
            lengths[token_id] = len(token_text)
    return lengths


def token_bytes_table(tokenizer) -> list[bytes]:
    character_to_byte = byte_level_alphabet()
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    for token_text, token_id in vocab.items():
        if token_text != SPECIAL_TOKEN:
            table[token_id] = bytes(character_to_byte[character] for character in token_text)
    return table


def _text_parts(data: bytes, part_bytes: int = 1 << 20):
    """Split text at line ends into parts the tokenizer can encode in parallel."""
    start = 0
    while start < len(data):
        end = min(start + part_bytes, len(data))
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
            raise TrainingError(f"training input '{name}' does not exist")
    if not files:
        raise TrainingError("no training files found in " + ", ".join(inputs))
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
        ids = [token for encoding in tokenizer.encode_batch(list(_text_parts(data))) for token in encoding.ids]
        ids = np.asarray(ids, dtype=np.int32)
        held_out = int(len(ids) * val_fraction)
        train_parts.append(ids[:len(ids) - held_out])
        val_parts.append(ids[len(ids) - held_out:])
    return np.concatenate(train_parts), np.concatenate(val_parts), raw_bytes


@dataclass
class Corpus:
    """The tokenised corpus of a run: training and validation token streams, and their bytes."""

    tokenizer: object  # tokenizers.Tokenizer
    train_tokens: np.ndarray  # int32
    val_tokens: np.ndarray  # int32
    raw_bytes: int
    byte_lengths: torch.Tensor  # bytes each token stands for


def prepare_corpus(work: Path, files: list[Path], config: TrainConfig, tokenizer_file: Path | None) -> Corpus:
    """Train (or read) the tokenizer and tokenise the corpus once; both are kept in the work folder."""
    from tokenizers import Tokenizer

    tokenizer_path = work / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        if tokenizer_file:
            try:
                tokenizer_path.write_text(Path(tokenizer_file).read_text())
            except OSError as error:
                raise TrainingError(f"cannot read the tokenizer {tokenizer_file}: {error.strerror}") from None
        else:
            log(f"training a {config.vocab_size}-token BPE on up to {config.tokenizer_sample_bytes:,} bytes")
            tokenizer = train_tokenizer(tokenizer_sample(files, config.tokenizer_sample_bytes), config.vocab_size)
            tokenizer_path.write_text(tokenizer.to_str())
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception:  # the tokenizers library raises its own exception types
        raise TrainingError(f"{tokenizer_path} is not a tokenizer.json the tokenizers library can read") from None
    request_path = work / "tokenizer-request.json"
    request = {"vocab_size": config.vocab_size, "tokenizer": str(tokenizer_file or "")}
    if not request_path.is_file():
        request_path.write_text(json.dumps(request) + "\n")
    requested = json.loads(request_path.read_text())
    if requested != request:
        raise TrainingError(f"the work folder {work} holds a tokenizer made for other settings ({requested}); "
                            "use a new --work-dir")
    tokens_path = work / "tokens.npz"
    if not tokens_path.is_file():
        log(f"tokenising {len(files)} files")
        train, val, raw = tokenise_corpus(tokenizer, files, config.val_fraction)
        dtype = np.uint16 if tokenizer.get_vocab_size() <= 65536 else np.int32
        with open(tokens_path.with_suffix(".tmp"), "wb") as handle:
            np.savez(handle, train=train.astype(dtype), val=val.astype(dtype), raw_bytes=np.int64(raw))
        os.replace(tokens_path.with_suffix(".tmp"), tokens_path)
    saved = np.load(tokens_path)
    corpus = Corpus(tokenizer, saved["train"].astype(np.int32), saved["val"].astype(np.int32), int(saved["raw_bytes"]),
                    torch.from_numpy(token_byte_lengths(tokenizer)))
    log(f"{corpus.raw_bytes:,} bytes -> {len(corpus.train_tokens):,} training + {len(corpus.val_tokens):,} "
        "validation tokens")
    if len(corpus.train_tokens) < config.context_length - 1:
        raise TrainingError(f"the corpus has {len(corpus.train_tokens)} training tokens, fewer than one window of "
                            f"{config.context_length - 1}; give more text or a shorter --context-length")
    return corpus


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
    """Inputs (the start token, then the window minus its last token) and targets (the window)."""
    text = np.stack([stream[start:start + window] for start in starts]).astype(np.int64)  # (B, W)
    inputs = np.concatenate([np.full((len(starts), 1), START_TOKEN, dtype=np.int64), text[:, :-1]], axis=1)
    return torch.from_numpy(inputs), torch.from_numpy(text)
