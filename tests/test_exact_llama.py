"""The exact engine for Llama models: rows are a pure function of weights and prefix, close to float."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed"),
    pytest.mark.usefixtures("one_thread"),
]

VOCAB = 300


def make_llama(seed: int, intermediate_size: int = 160, tie: bool = True):
    """A random Llama with grouped-query attention, sharpened like a trained model's predictions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.mul_(torch.rand_like(parameter) * 3 + 0.2)
            else:
                parameter.mul_(8)
    return model




@pytest.fixture(scope="module")
def llama():
    return make_llama(0)


@pytest.fixture(scope="module")
def engine(llama):
    from llmzip.engine.llama import ExactLlamaEngine

    return ExactLlamaEngine(llama, context_length=128)


@pytest.fixture(scope="module")
def wide_engine():
    from llmzip.engine.llama import ExactLlamaEngine

    # MLP width 1280 and an untied head: reductions longer than 1024, two separate embedding tables.
    return ExactLlamaEngine(make_llama(1, intermediate_size=1280, tie=False), context_length=128)


def random_tokens(seed: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=length)


def incremental_rows(engine, tokens: np.ndarray) -> np.ndarray:
    session = engine.start(1)
    inputs = np.concatenate([[engine.start_token], tokens[:-1]])
    return np.concatenate([session.advance(np.array([token])) for token in inputs])


@pytest.mark.parametrize("which", ["engine", "wide_engine"])
def test_full_pass_equals_incremental(which, request):
    engine = request.getfixturevalue(which)
    tokens = random_tokens(0, 90)
    assert np.array_equal(engine.sequence_weights([tokens])[0], incremental_rows(engine, tokens))


def test_batch_size_and_neighbours_do_not_matter(engine):
    tokens = random_tokens(1, 50)
    alone = engine.sequence_weights([tokens])[0]
    neighbours = [random_tokens(seed, length) for seed, length in zip(range(2, 17), range(5, 125, 8))]
    batched = engine.sequence_weights(neighbours[:7] + [tokens] + neighbours[7:])
    assert len(batched) == 16
    assert np.array_equal(batched[7], alone)
    # Incremental decoding of many streams at once, with one stream ending early.
    session = engine.start(3)
    streams = [tokens, random_tokens(20, 50), random_tokens(21, 50)]
    rows = [session.advance(np.array([engine.start_token] * 3))]
    for position in range(49):
        rows.append(session.advance(np.array([stream[position] for stream in streams])))
    assert np.array_equal(np.stack([row[0] for row in rows]), alone)


def test_thread_count_does_not_matter(wide_engine):
    tokens = random_tokens(3, 100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = wide_engine.sequence_weights([tokens])[0]
        torch.set_num_threads(2)
        two = wide_engine.sequence_weights([tokens])[0]
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(one, two)


def test_rows_are_valid_weights(engine):
    from llmzip.engine.integer import ROW_TOTAL_BITS

    rows = engine.sequence_weights([random_tokens(4, 60)])[0]
    assert rows.dtype.kind in "iu" and rows.shape == (60, VOCAB)
    assert (rows >= 0).all()
    assert (rows.sum(axis=1) == 2**ROW_TOTAL_BITS).all()


def test_close_to_float_model(llama, engine):
    from llmzip.engine.integer import ROW_TOTAL_BITS

    tokens = random_tokens(5, 100)
    # The coder gives every token at least one count; so does this comparison.
    rows = (engine.sequence_weights([tokens])[0] + 1.0) / (2**ROW_TOTAL_BITS + VOCAB)
    with torch.no_grad():
        inputs = torch.tensor([[engine.start_token, *tokens[:-1]]])
        log_p = torch.log_softmax(llama(inputs).logits[0].double(), -1).numpy()
    kl = (np.exp(log_p) * (log_p - np.log(rows))).sum(-1)
    assert kl.max() < 5e-3
    float_bits = -log_p[np.arange(100), tokens].sum() / math.log(2)
    exact_bits = -np.log2(rows[np.arange(100), tokens]).sum()
    assert abs(exact_bits - float_bits) < 0.01 * float_bits


def test_sigmoid_table():
    from llmzip.engine.llama import SIGMOID_BITS, SIGMOID_FRACTION_BITS, SIGMOID_RANGE, sigmoid_table

    table = sigmoid_table()
    steps = SIGMOID_RANGE << SIGMOID_FRACTION_BITS
    assert len(table) == 2 * steps + 1
    expected = [round(2**SIGMOID_BITS / (1 + math.exp(-i / 2**SIGMOID_FRACTION_BITS)))
                for i in range(-steps, steps + 1)]
    assert max(abs(a - b) for a, b in zip(table, expected)) <= 1
    assert table[steps] == 2 ** (SIGMOID_BITS - 1)
    assert all(a <= b for a, b in zip(table, table[1:]))


def test_rope_tables():
    from llmzip.engine.llama import ROPE_BITS, rope_tables

    cos, sin = rope_tables(10000.0, 16, 300)
    assert cos.shape == sin.shape == (300, 8) and cos.dtype == torch.int64
    angles = np.arange(300)[:, None] * 10000.0 ** (-np.arange(0, 16, 2) / 16)
    assert np.abs(cos.numpy() - np.cos(angles) * 2**ROPE_BITS).max() <= 1.5
    assert np.abs(sin.numpy() - np.sin(angles) * 2**ROPE_BITS).max() <= 1.5
    shorter = rope_tables(10000.0, 16, 40)
    assert torch.equal(shorter[0], cos[:40]) and torch.equal(shorter[1], sin[:40])


def test_unsupported_configs_are_named():
    from transformers import GPT2Config, LlamaConfig

    from llmzip.engine.llama import llama_support

    assert llama_support(LlamaConfig()) is None
    assert "gpt2" in llama_support(GPT2Config())
    assert "bias" in llama_support(LlamaConfig(attention_bias=True))
    assert "rotary" in llama_support(LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}))


@pytest.fixture(scope="module")
def llama_directory(tmp_path_factory):
    """A Hugging Face directory: a Llama briefly fitted to the tests' sample text, with their tokenizer."""
    import torch.nn.functional as F
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from conftest import SAMPLE_TEXT, train_tokenizer

    tokenizer_json = train_tokenizer(VOCAB)
    tokens = Tokenizer.from_str(tokenizer_json).encode(SAMPLE_TEXT * 4).ids
    windows = torch.tensor([[0] + tokens[start : start + 47] for start in range(0, len(tokens) - 48, 7)])
    torch.manual_seed(0)
    model = make_llama(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.div_(8 if parameter.dim() > 1 else 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        logits = model(windows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), windows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    directory = tmp_path_factory.mktemp("models") / "llama"
    model.eval().save_pretrained(directory)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json),
                                        bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_huggingface_llama_round_trip_is_exact_by_default(llama_directory):
    import llmzip
    from conftest import SAMPLE_TEXT

    data = SAMPLE_TEXT.encode() * 6 + bytes(range(0, 256, 7))
    packed = llmzip.compress(data, model=llama_directory, xz_fallback=False, chunk_tokens=40)
    details = llmzip.info(packed)
    assert details.model_settings["engine"]["kind"] == "exact"
    assert details.model_settings["engine"]["architecture"] == "llama"
    assert llmzip.decompress(packed, model=llama_directory) == data

    floating = llmzip.compress(data, model=llama_directory, engine="float", xz_fallback=False, chunk_tokens=40)
    assert llmzip.info(floating).model_settings["engine"]["kind"] == "float"
    assert llmzip.decompress(floating, model=llama_directory) == data
