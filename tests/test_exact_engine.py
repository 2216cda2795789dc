"""The exact engine: rows are a pure function of weights and prefix, and close to the float model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmzip.engine.gpt import ExactGPTEngine
from llmzip.engine.integer import (
    ROW_TOTAL_BITS,
    exact_matmul,
    exp_table,
    integer_sqrt,
    quantise_weight_per_channel,
    requantise,
    softmax_weights,
)
from llmzip.models.gpt import GPT, GPTConfig

VOCAB = 300
CONTEXT = 64


def make_model(seed: int, n_embd: int = 64, sharpen: bool = False) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, n_layer=2, n_head=4, n_embd=n_embd)).eval()
    if sharpen:
        # Random init gives near-uniform predictions; larger weights and uneven gains give the
        # peaked attention and confident outputs of a trained model.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "wte" in name:
                    parameter.mul_(15)
                elif "qkv" in name:
                    parameter.mul_(8)
                elif "proj" in name or "fc" in name:
                    parameter.mul_(10)
                elif "norm" in name:
                    parameter.mul_(torch.rand_like(parameter) * 3 + 0.2)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine() -> ExactGPTEngine:
    return ExactGPTEngine(make_model(0))


@pytest.fixture(scope="module")
def sharp_engine() -> ExactGPTEngine:
    return ExactGPTEngine(make_model(1, sharpen=True))


@pytest.fixture(scope="module")
def wide_engine() -> ExactGPTEngine:
    # MLP hidden width 1280: a reduction longer than 1024.
    return ExactGPTEngine(make_model(2, n_embd=320))


def random_tokens(seed: int, length: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=length)


def incremental_rows(engine: ExactGPTEngine, tokens: np.ndarray) -> np.ndarray:
    session = engine.start(1)
    inputs = np.concatenate([[engine.start_token], tokens[:-1]])
    return np.concatenate([session.advance(np.array([token])) for token in inputs])


@pytest.mark.parametrize("which", ["engine", "sharp_engine", "wide_engine"])
def test_full_pass_equals_incremental(which, request):
    engine = request.getfixturevalue(which)
    tokens = random_tokens(3, CONTEXT)  # the whole context
    full = engine.sequence_weights([tokens])[0]
    assert np.array_equal(full, incremental_rows(engine, tokens))


def test_batched_incremental_equals_single(sharp_engine):
    batch = np.stack([random_tokens(10 + row, 12) for row in range(5)])
    session = sharp_engine.start(5)
    rows = [session.advance(np.full(5, sharp_engine.start_token))]
    rows += [session.advance(batch[:, t]) for t in range(11)]
    batched = np.stack(rows, axis=1)  # (5, 12, V)
    for row in range(5):
        assert np.array_equal(batched[row], sharp_engine.sequence_weights([batch[row]])[0])


def test_batch_size_and_neighbours_do_not_matter(sharp_engine):
    target = random_tokens(20, 40)
    alone = sharp_engine.sequence_weights([target])[0]
    rng = np.random.default_rng(21)
    neighbours = [rng.integers(0, VOCAB, size=int(rng.integers(1, CONTEXT + 1))) for _ in range(15)]
    together = sharp_engine.sequence_weights(neighbours[:7] + [target] + neighbours[7:])
    assert np.array_equal(together[7], alone)
    for tokens, rows in zip(neighbours, together[:7] + together[8:]):
        assert rows.shape == (len(tokens), VOCAB)


def test_thread_count_does_not_matter(wide_engine):
    tokens = [random_tokens(30, CONTEXT), random_tokens(31, 25)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = wide_engine.sequence_weights(tokens)
        torch.set_num_threads(2)
        two = wide_engine.sequence_weights(tokens)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


def test_rows_are_valid_weights(sharp_engine):
    rows = sharp_engine.sequence_weights([random_tokens(40, 33), np.array([], dtype=np.int64)])
    assert rows[0].shape == (33, VOCAB) and rows[0].dtype == np.int64
    assert rows[1].shape == (0, VOCAB)
    assert (rows[0] >= 0).all()
    assert (rows[0].sum(axis=1) == 2**ROW_TOTAL_BITS).all()
    settings = sharp_engine.settings
    assert settings["kind"] == "exact" and settings["version"] == 1 and sharp_engine.batch_invariant


def coder_probabilities(rows: np.ndarray) -> np.ndarray:
    """Roughly what the coder does: every token keeps at least one count in 2**24."""
    counts = np.floor(rows / rows.sum(axis=1, keepdims=True) * (2**24 - rows.shape[1])) + 1
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("sharpen, kl_limit", [(False, 1e-4), (True, 2e-2)])
def test_close_to_float_model(sharpen, kl_limit):
    # Measured: KL 5.9e-7 nats (random init) and 4.4e-3 (sharpened). Almost all of it comes from
    # the int8 weights: the float model with fake-quantised weights is 4e-8 and 4e-6 from the engine.
    model = make_model(0 if not sharpen else 1, sharpen=sharpen)
    engine = ExactGPTEngine(model)
    tokens = random_tokens(50, CONTEXT)
    rows = engine.sequence_weights([tokens])[0]
    with torch.no_grad():
        inputs = torch.from_numpy(np.concatenate([[engine.start_token], tokens[:-1]]))[None]
        log_p = torch.log_softmax(model(inputs)[0].double(), -1).numpy()
    log_q = np.log(coder_probabilities(rows))
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())
    assert kl < kl_limit
    if not sharpen:
        positions = np.arange(len(tokens))
        cross_entropy_gap = float((log_p - log_q)[positions, tokens].mean())
        assert abs(cross_entropy_gap) < 1e-3


def test_session_rejects_positions_beyond_context(engine):
    session = engine.start(2)
    for _ in range(CONTEXT):
        session.advance(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError):
        session.advance(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError):
        engine.sequence_weights([np.zeros(CONTEXT + 1, dtype=np.int64)])


@pytest.mark.parametrize("compute_dtype, a_bound, b_bound", [
    (torch.float32, 127, 127),  # parts of 1040 <= 2**24 / 127**2
    (torch.float64, 2**30, 127),  # parts of 66052
    (torch.float64, 2**40, 2**7),  # parts of 64
])
def test_exact_matmul_splits_long_reductions(compute_dtype, a_bound, b_bound):
    generator = torch.Generator().manual_seed(5)
    length = 3000
    a = torch.randint(-a_bound, a_bound + 1, (7, length), generator=generator, dtype=torch.int64)
    b = torch.randint(-b_bound, b_bound + 1, (length, 9), generator=generator, dtype=torch.int64)
    a[0] = a_bound  # the worst case: every product at its largest
    b[:, 0] = b_bound
    expected = (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)  # int64, no floats
    assert torch.equal(exact_matmul(a, b, a_bound, b_bound, compute_dtype), expected)


def test_integer_sqrt_is_exact():
    values = [0, 1, 2, 3, 4, 15, 16, 17, 2**52 + 1, 2**61 - 1, (2**31 - 1) ** 2, (2**31 - 1) ** 2 - 1]
    values += np.random.default_rng(6).integers(0, 2**62, size=1000).tolist()
    roots = integer_sqrt(torch.tensor(values, dtype=torch.int64)).tolist()
    assert roots == [math.isqrt(value) for value in values]


def test_exp_table():
    table = exp_table(10, 24)
    assert table[0] == 2**24 and table[-1] == 0 and table[-2] > 0
    assert all(a >= b for a, b in zip(table, table[1:]))
    for index in (1, 1000, 10000):
        assert abs(table[index] - 2**24 * math.exp(-index / 1024)) <= 0.5 + 1e-6


def test_quantise_weight_per_channel():
    weight = torch.randn(5, 33) * 0.02
    weight[3] = 0
    values, scales = quantise_weight_per_channel(weight)
    assert values.dtype == torch.int8 and scales.dtype == torch.float32
    assert (values.abs().amax(dim=1)[[0, 1, 2, 4]] == 127).all() and (values[3] == 0).all()
    assert torch.allclose(values.float() * scales[:, None], weight, atol=float(scales.max()) / 2 + 1e-9)


def test_all_zero_weights_are_handled():
    model = make_model(7)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()
        model.blocks[1].mlp.fc.weight.zero_()
    engine = ExactGPTEngine(model)
    tokens = random_tokens(8, 10)
    assert np.array_equal(engine.sequence_weights([tokens])[0], incremental_rows(engine, tokens))


def test_in_place_requantise_and_output_rows_match_the_plain_definitions(sharp_engine):
    """The in-place shortcuts of the row computation give the integers of the plain formulas."""
    generator = torch.Generator().manual_seed(3)
    acc = torch.randint(-(2**29), 2**29, (5, sharp_engine.vocab_size), generator=generator)
    scale = sharp_engine.logit_scale
    assert torch.equal(requantise(acc.clone(), scale, -7, 7, in_place=True), requantise(acc, scale, -7, 7))
    x = torch.randint(-(2**22), 2**22, (5, sharp_engine.config.n_embd), generator=generator)
    logits = requantise(sharp_engine.head(sharp_engine.norm_f(x), 32767), scale)
    raw = softmax_weights(logits, sharp_engine.output_table)
    expected = (raw * (2**62 // raw.sum(-1, keepdim=True))) >> 32
    first_best = torch.where(raw == 2**24, torch.arange(raw.shape[1]), raw.shape[1]).amin(-1)
    expected[torch.arange(5), first_best] += 2**30 - expected.sum(-1)
    assert torch.equal(sharp_engine._rows(x), expected)


def test_long_causal_attention_in_query_blocks_gives_the_same_integers(monkeypatch):
    from llmzip.engine import integer
    from llmzip.engine.integer import ATTENTION_EXP_BITS, LOGIT_FRACTION_BITS, fixed_point, integer_attention

    generator = torch.Generator().manual_seed(11)
    B, H, T, D, bound = 2, 3, 600, 16, 2000
    q, k, v = (torch.randint(-bound, bound + 1, (B, H, T, D), generator=generator) for _ in range(3))
    # Scores a few nats apart: most keys keep some weight, so a key left out would show.
    scale = fixed_point(np.array([1e-4, 4e-4, 1e-3]), D * bound * bound).view(1, H, 1, 1)
    table = torch.tensor(exp_table(LOGIT_FRACTION_BITS, ATTENTION_EXP_BITS))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    blocked = integer_attention(q, k, v, scale, table, causal, bound, bound)
    assert T > integer.ATTENTION_QUERY_BLOCK  # the blocked path ran
    monkeypatch.setattr(integer, "ATTENTION_QUERY_BLOCK", T)
    assert torch.equal(blocked, integer_attention(q, k, v, scale, table, causal, bound, bound))
