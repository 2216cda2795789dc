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
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
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
    # Byte-level vocabularies may omit the few bytes that never occur in valid UTF-8.
    byte_level = "ByteLevel" in repr(tokenizer.pre_tokenizer) or all(character in vocab for character in alphabet)
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    for token_text, token_id in vocab.items():
        if token_text in special:
            continue  # special tokens never stand for text
        if byte_level:
            if all(character in alphabet for character in token_text):
                table[token_id] = bytes(alphabet[character] for character in token_text)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token_text):
            table[token_id] = bytes([int(token_text[3:5], 16)])
        else:  # SentencePiece style: '▁' is a space
            table[token_id] = token_text.replace("\u2581", " ").encode("utf-8")
    single_byte: list[int | None] = [None] * 256
    for token_id, token_bytes in enumerate(table):
        if token_bytes is not None and len(token_bytes) == 1 and single_byte[token_bytes[0]] is None:
            single_byte[token_bytes[0]] = token_id
    if not byte_level:
        # Prefer explicit byte-fallback tokens <0xNN> for single bytes.
        for byte in range(256):
            token_id = vocab.get(f"<0x{byte:02X}>")
            if token_id is not None:
                single_byte[byte] = token_id
    return table, single_byte


ENCODE_PIECE_CHARACTERS = 1 << 16


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
        segments = self.segments(data)
        if any(tokens is None for _, tokens in segments):
            raise TokenizationError("the tokenizer has no token for some byte values")
        return np.concatenate([tokens for _, tokens in segments]) if segments else np.zeros(0, dtype=np.int64)

    def segments(self, data: bytes) -> list[tuple[bytes, np.ndarray | None]]:
        """`data` cut into consecutive runs, each with its exact tokens, or None for bytes no token stands for."""
        text = data.decode("utf-8", errors="surrogateescape")
        runs: list[tuple[bytes, list[int] | None]] = []
        position = 0
        for match in _INVALID_UTF8_RUN.finditer(text):
            runs.append(self._tokenize_text(text[position : match.start()]))
            invalid = match.group().encode("utf-8", errors="surrogateescape")
            runs.extend(self._bytes_as_tokens(bytes([byte])) for byte in invalid)
            position = match.end()
        runs.append(self._tokenize_text(text[position:]))
        merged: list[tuple[bytes, np.ndarray | None]] = []
        for raw, ids in runs:
            if not raw:
                continue
            if merged and (ids is None) == (merged[-1][1] is None):
                previous_raw, previous_ids = merged[-1]
                merged[-1] = (previous_raw + raw, None if ids is None else np.concatenate([previous_ids, ids]))
            else:
                merged.append((raw, None if ids is None else np.array(ids, dtype=np.int64)))
        for raw, ids in merged:
            if ids is not None and self.detokenize(ids) != raw:
                raise TokenizationError("tokenisation is not byte-exact")  # a bug, never expected
        return merged

    def detokenize(self, tokens) -> bytes:
        try:
            return b"".join(self.token_bytes[token] for token in tokens)
        except (TypeError, IndexError):
            raise TokenizationError("a token id stands for no bytes") from None

    def _tokenize_text(self, text: str) -> tuple[bytes, list[int] | None]:
        expected = text.encode("utf-8")
        if not text:
            return expected, []
        ids = self._encode(text)
        if all(0 <= token < self.vocab_size and self.token_bytes[token] is not None for token in ids):
            if b"".join(self.token_bytes[token] for token in ids) == expected:
                return expected, ids
        return self._bytes_as_tokens(expected)

    def _encode(self, text: str) -> list[int]:
        # The tokenizer's encoding object costs about 240 bytes per character, so a 1 MiB block is
        # encoded in parts cut after a newline, where a byte-level pre-tokenizer splits anyway.
        ids: list[int] = []
        start = 0
        while start < len(text):
            end = min(len(text), start + ENCODE_PIECE_CHARACTERS)
            if end < len(text) and (newline := text.rfind("\n", start, end)) > start:
                end = newline + 1
            ids.extend(self.tokenizer.encode(text[start:end], add_special_tokens=False).ids)
            start = end
        return ids

    def _bytes_as_tokens(self, data: bytes) -> tuple[bytes, list[int] | None]:
        ids = [self.byte_tokens[byte] for byte in data]
        return data, None if any(token is None for token in ids) else ids
