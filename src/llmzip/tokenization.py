"""Byte-exact tokenisation: for every byte string, detokenise(tokenise(x)) == x.

A tokenizer is wrapped with a table that maps every token id to the exact bytes it stands
for. Valid UTF-8 runs go through the model's own tokenizer; bytes that are not valid UTF-8
become single-byte tokens. The result is checked against the input before any coding, and a
run the tokenizer mangles (a normaliser, an added special token) falls back to byte tokens.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from .errors import TokenizationError

# Code points U+DC80..U+DCFF are what 'surrogateescape' turns undecodable bytes into.
_INVALID_UTF8_RUN = re.compile("[\udc80-\udcff]+")


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character map, as character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def _token_table(tokenizer) -> tuple[list[bytes | None], list[int | None]]:
    """Bytes of every token id, and the id of each single-byte token (None where absent)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    table: list[bytes | None] = [None] * size
    alphabet = byte_level_alphabet()
    byte_level = all(character in vocab for character in alphabet)
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    for piece, token_id in vocab.items():
        if piece in special:
            continue  # special tokens never stand for text
        if byte_level:
            if all(character in alphabet for character in piece):
                table[token_id] = bytes(alphabet[character] for character in piece)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
            table[token_id] = bytes([int(piece[3:5], 16)])
        else:  # SentencePiece style: '▁' is a space
            table[token_id] = piece.replace("\u2581", " ").encode("utf-8")
    single_byte: list[int | None] = [None] * 256
    for token_id, piece_bytes in enumerate(table):
        if piece_bytes is not None and len(piece_bytes) == 1 and single_byte[piece_bytes[0]] is None:
            single_byte[piece_bytes[0]] = token_id
    if not byte_level:
        # Prefer explicit byte-fallback tokens <0xNN> for single bytes.
        for byte in range(256):
            token_id = vocab.get(f"<0x{byte:02X}>")
            if token_id is not None:
                single_byte[byte] = token_id
    return table, single_byte


class ByteTokenizer:
    """A `tokenizers.Tokenizer` made byte-exact."""

    def __init__(self, tokenizer, start_token: int):
        self.tokenizer = tokenizer
        # Text that happens to spell a special token is ordinary text here.
        tokenizer.encode_special_tokens = True
        self.start_token = start_token
        table, single_byte = _token_table(tokenizer)
        self.token_bytes = table
        self.byte_tokens = single_byte
        self.vocab_size = len(table)
        self.covers_all_bytes = all(token is not None for token in single_byte)
        self._lengths = np.array([len(b) if b is not None else -1 for b in table], dtype=np.int64)

    def tokenize(self, data: bytes) -> np.ndarray:
        """Token ids whose bytes concatenate to exactly `data`; raises TokenizationError if impossible."""
        text = data.decode("utf-8", errors="surrogateescape")
        ids: list[int] = []
        position = 0
        for match in _INVALID_UTF8_RUN.finditer(text):
            ids.extend(self._tokenize_text(text[position : match.start()]))
            ids.extend(self._bytes_as_tokens(match.group().encode("utf-8", errors="surrogateescape")))
            position = match.end()
        ids.extend(self._tokenize_text(text[position:]))
        tokens = np.array(ids, dtype=np.int64)
        if self.detokenize(tokens) != data:
            raise TokenizationError("the tokenizer cannot represent these bytes exactly")
        return tokens

    def detokenize(self, tokens) -> bytes:
        try:
            return b"".join(self.token_bytes[token] for token in tokens)
        except (TypeError, IndexError):
            raise TokenizationError("a token id stands for no bytes") from None

    def _tokenize_text(self, text: str) -> list[int]:
        if not text:
            return []
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        expected = text.encode("utf-8")
        if all(0 <= token < self.vocab_size and self.token_bytes[token] is not None for token in ids):
            if b"".join(self.token_bytes[token] for token in ids) == expected:
                return ids
        return self._bytes_as_tokens(expected)

    def _bytes_as_tokens(self, data: bytes) -> list[int]:
        ids = [self.byte_tokens[byte] for byte in data]
        if any(token is None for token in ids):
            raise TokenizationError("the tokenizer has no token for some byte values")
        return ids
