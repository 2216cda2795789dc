"""Tiny models the tests build themselves: a byte-level BPE tokenizer and a random native GPT."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Language models predict the next token; an arithmetic coder turns predictions into bits. "
    "红楼梦是中国古典小说。 Ünïcödé, emoji 🙂 and tabs\tand\nnewlines.\n"
)


def train_tokenizer(vocab_size: int = 320) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([SAMPLE_TEXT] * 20, trainer)
    return tokenizer.to_str()


def make_model_directory(directory: Path, *, seed: int = 0, context_length: int = 48, n_embd: int = 32,
                         train_steps: int = 40) -> Path:
    """A tiny GPT, briefly fitted to SAMPLE_TEXT so that it predicts such text better than xz does."""
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from llmzip.models.gpt import GPT, GPTConfig, save_model_directory

    torch.manual_seed(seed)
    tokenizer_json = train_tokenizer()
    config = GPTConfig(vocab_size=320, context_length=context_length, n_layer=2, n_head=2, n_embd=n_embd)
    model = GPT(config)
    tokens = Tokenizer.from_str(tokenizer_json).encode(SAMPLE_TEXT * 4).ids
    windows = torch.tensor([[0] + tokens[start : start + context_length - 1] for start in range(0, len(tokens) - context_length, 7)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only wait on each other, badly so on a busy machine
    for _ in range(train_steps):
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    save_model_directory(directory, model.eval(), tokenizer_json)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_model_directory(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> str:
    """Same shape as tiny_model, other weights: a file made with one must not decode with the other."""
    return str(make_model_directory(tmp_path_factory.mktemp("models") / "other", seed=1))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny products gain nothing from threads, and on a busy
    machine thread start-up dominates. Tests that compare thread counts set their own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def random_bytes():
    return random.Random(1234).randbytes(3000)
