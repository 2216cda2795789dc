"""Tiny models the tests build themselves: a byte-level BPE tokenizer and a random native GPT."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Language models predict the next token; an arithmetic coder turns predictions into bits. "
    "红楼梦是中国古典小说。 Ünïcödé, emoji 🙂 and tabs\tand\nnewlines.\n"
)


def default_sigint() -> None:
    """For a subprocess's preexec_fn: a job a shell starts in the background ignores SIGINT, and
    children inherit that; the llmzip under test must see Ctrl-C as a user at a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
    windows = torch.tensor([[0] + tokens[start : start + context_length - 1]
                            for start in range(0, len(tokens) - context_length, 7)])
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


def make_gguf_llama(path: Path, *, matrix_type: str = "Q4_1", seed: int = 0, dim: int = 64, heads: int = 4,
                    kv_heads: int = 2, hidden: int = 128, layers: int = 2, context_length: int = 96) -> Path:
    """A random Llama GGUF file: quantised matrices, a Q8_0 token embedding tied to the output, F32
    norms, and a byte-level BPE tokenizer (the GPT-2 byte alphabet plus a few merges)."""
    import gguf
    import numpy as np

    from llmzip.tokenization import byte_level_alphabet

    rng = np.random.default_rng(seed)
    alphabet = sorted(byte_level_alphabet(), key=lambda character: byte_level_alphabet()[character])
    merges = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "Ġ s"]
    tokens = ["<|endoftext|>"] + alphabet + ["".join(merge.split(" ")) for merge in merges]
    tokens += [f"<|unused{n}|>" for n in range(-len(tokens) % 8)]  # output rows come in eights
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(context_length)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    matrix = getattr(gguf.GGMLQuantizationType, matrix_type)

    def add_matrix(name, rows, inputs, kind=matrix, scale=0.1):
        weight = (rng.standard_normal((rows, inputs)) * scale).astype(np.float32)
        writer.add_tensor(name, gguf.quants.quantize(weight, kind), raw_dtype=kind)

    add_matrix("token_embd.weight", len(tokens), dim, gguf.GGMLQuantizationType.Q8_0, 0.02)
    writer.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
    head_dim = dim // heads
    for layer in range(layers):
        name = f"blk.{layer}."
        writer.add_tensor(name + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        writer.add_tensor(name + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32))
        add_matrix(name + "attn_q.weight", dim, dim, scale=0.3)
        add_matrix(name + "attn_k.weight", kv_heads * head_dim, dim, scale=0.3)
        add_matrix(name + "attn_v.weight", kv_heads * head_dim, dim)
        add_matrix(name + "attn_output.weight", dim, dim)
        add_matrix(name + "ffn_gate.weight", hidden, dim)
        add_matrix(name + "ffn_up.weight", hidden, dim)
        add_matrix(name + "ffn_down.weight", dim, hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def gguf_llama(tmp_path_factory) -> str:
    return str(make_gguf_llama(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q4_1.gguf"))
