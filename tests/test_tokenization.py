import random

import pytest
from tokenizers import Tokenizer

from conftest import train_tokenizer
from llmzip.tokenization import ByteTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ByteTokenizer(Tokenizer.from_str(train_tokenizer()), start_token=0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"a",
        bytes(range(256)),
        "红楼梦 第一回 甄士隐梦幻识通灵".encode(),
        b"valid \xff\xfe invalid \xc3 cut \xe4\xbd",
        "emoji 🙂 and \u2581 and <|endoftext|> literally".encode(),
        random.Random(5).randbytes(2000),
        b"\r\n\t\x00 control",
    ],
)
def test_detokenize_inverts_tokenize(tokenizer, data):
    tokens = tokenizer.tokenize(data)
    assert tokenizer.detokenize(tokens) == data
    assert all(0 < token < tokenizer.vocab_size for token in tokens)  # the start token never stands for text


def test_every_byte_has_a_token(tokenizer):
    assert tokenizer.covers_all_bytes


@pytest.mark.parametrize("text", ["line one\nline two 红楼梦\n" * 40, "no newline at all, 红楼梦 " * 40])
def test_long_text_is_encoded_in_exact_pieces(tokenizer, monkeypatch, text):
    whole = tokenizer.tokenize(text.encode())
    monkeypatch.setattr("llmzip.tokenization.ENCODE_PIECE_CHARACTERS", 37)
    pieces = tokenizer.tokenize(text.encode())
    assert tokenizer.detokenize(pieces) == text.encode()
    # Cuts after a newline match where a byte-level pre-tokenizer splits anyway.
    if "\n" in text:
        assert list(pieces) == list(whole)
