import numpy as np
import pytest

from llmzip import coder


def random_rows(rng, positions, vocabulary):
    logits = rng.normal(scale=3.0, size=(positions, vocabulary))
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def test_round_trip_row_by_row():
    rng = np.random.default_rng(0)
    weights = random_rows(rng, 500, 300)
    symbols = np.array([rng.choice(300, p=row) for row in weights])
    payload = coder.encode(symbols, weights)
    decoder = coder.Decoder(payload)
    decoded = np.concatenate([decoder.decode(weights[t : t + 1]) for t in range(len(symbols))])
    assert np.array_equal(decoded, symbols)


def test_zero_probability_symbols_can_still_be_coded():
    weights = np.zeros((3, 10))
    weights[:, 0] = 1.0
    symbols = np.array([9, 0, 5])
    assert np.array_equal(coder.Decoder(coder.encode(symbols, weights)).decode(weights), symbols)


def test_payload_stays_close_to_cross_entropy():
    rng = np.random.default_rng(1)
    weights = random_rows(rng, 20000, 1000)
    symbols = np.array([rng.choice(1000, p=row) for row in weights])
    ideal_bits = coder.code_length_bits(symbols, weights).sum()
    actual_bits = 8 * len(coder.encode(symbols, weights))
    assert actual_bits <= ideal_bits * 1.001 + 64


def test_damaged_payload_length_is_refused():
    with pytest.raises(coder.CorruptError):
        coder.Decoder(b"\0\0\0")
