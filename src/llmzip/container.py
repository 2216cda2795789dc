"""The .llmz container: a header, groups of independently coded chunks, an end record.
Streams may follow one another in a file, like gzip members; they decode one after another.

Version 2 is written; version 1 (a JSON header, a model record deflated on its own, the whole
SHA-256 at the end) is still read. Readers pass the stream's version, from its header, on to
`read_record`.

See docs/FORMAT.md for the concepts and the byte layout. This module only reads and writes
records and checks their integrity; it knows nothing about models or coding.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from .errors import CorruptError, FormatError, TruncatedError
from .record_dictionary import RECORD_DICTIONARY

MAGIC = b"LLMZ"
FORMAT_VERSION = 2  # written; every version from 1 up is read

MODEL_TAG = b"M"
GROUP_TAG = b"G"
END_TAG = b"E"

CHUNK_MODEL = 0  # payload is range-coded tokens
CHUNK_STORED = 1  # payload is the raw bytes
CHUNK_XZ = 2  # payload is raw LZMA2 data, for bytes that are not text
CHUNK_NAMES = {CHUNK_MODEL: "model", CHUNK_STORED: "stored", CHUNK_XZ: "xz"}
CHUNK_KINDS = tuple(CHUNK_NAMES)

# Limits a reader enforces before allocating anything, so damaged lengths cannot exhaust memory.
MAX_HEADER_BYTES = 1 << 16
MAX_CHUNK_BYTES = 1 << 24
MAX_GROUP_CHUNKS = 1024
MAX_GROUP_BYTES = 1 << 28  # payloads of one group; a reader allocates them in one piece

_CHUNK_FIELDS = 5  # kind, raw length, token count, payload length (varints), raw crc32 (u32)
_MAX_VARINT_BYTES = 5  # enough for any length a reader accepts
_MAX_SIZE_VARINT_BYTES = 10  # a content size: any 64-bit number
_CRC = struct.Struct("<I")
_LENGTH = struct.Struct("<I")
_DIGEST_BYTES = 8  # version 2 keeps the first 8 bytes of the content's SHA-256, as many as xz's CRC-64
_V1_PREAMBLE = struct.Struct("<I")  # after magic and version: the header JSON's length
_V1_END = struct.Struct("<Q32s")  # content size, sha256 of the content


@dataclass(frozen=True)
class ChunkRecord:
    kind: int
    raw_length: int
    token_count: int
    raw_crc32: int
    payload: bytes


@dataclass(frozen=True)
class EndRecord:
    content_size: int
    sha256: bytes  # the content's SHA-256, or (version 2) its first bytes

    def matches(self, content_size: int, sha256: bytes) -> bool:
        return self.content_size == content_size and self.sha256 == sha256[: len(self.sha256)]


def _read_exactly(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise TruncatedError(f"the file ends inside the {what}; it was cut short")
    return data


def _varint(value: int) -> bytes:
    """Unsigned LEB128: seven bits per byte, low bits first, high bit set on all but the last."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, position: int, what: str, max_bytes: int = _MAX_VARINT_BYTES) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * max_bytes, 7):
        if position >= len(data):
            raise CorruptError(f"the {what} is damaged (a number runs past its end)")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise CorruptError(f"the {what} is damaged (a number is too long)")


def _read_varint_bytes(stream: BinaryIO, what: str, max_bytes: int = _MAX_VARINT_BYTES) -> bytes:
    """The bytes of one varint, for callers that also checksum them."""
    data = b""
    while len(data) < max_bytes:
        data += _read_exactly(stream, 1, what)
        if data[-1] < 0x80:
            break
    return data


def _read_varint_from(stream: BinaryIO, what: str, max_bytes: int = _MAX_VARINT_BYTES) -> int:
    return _read_varint(_read_varint_bytes(stream, what, max_bytes), 0, what, max_bytes)[0]


def _json_bytes(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _parse_json(body: bytes, what: str) -> dict:
    try:
        record = json.loads(body.decode("utf-8"))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise CorruptError(f"the {what} is damaged (not readable)")
    return record


def write_header(stream: BinaryIO, header: dict) -> None:
    """The header holds the content size when known in advance (stored plus one; 0: unknown)."""
    size = header.get("content_size")
    body = MAGIC + bytes([FORMAT_VERSION]) + _varint(0 if size is None else size + 1)
    stream.write(body + _CRC.pack(zlib.crc32(body)))


def _deflate(body: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=RECORD_DICTIONARY)
    return deflate.compress(body) + deflate.flush()


def _model_record(settings: dict) -> bytes:
    # Deflated against a preset dictionary: the JSON is about 760 bytes, a cost short inputs feel.
    body = _deflate(_json_bytes(settings))
    record = MODEL_TAG + _varint(len(body)) + body
    return record + _CRC.pack(zlib.crc32(record))


def model_record_size(settings: dict) -> int:
    return len(_model_record(settings))


def write_model_record(stream: BinaryIO, settings: dict) -> None:
    """Model, engine and coder settings; written once, before the first model-coded group."""
    stream.write(_model_record(settings))


def _inflate(body: bytes, what: str, version: int) -> bytes:
    inflate = zlib.decompressobj(-15, zdict=RECORD_DICTIONARY) if version >= 2 else zlib.decompressobj(-15)
    try:
        data = inflate.decompress(body, MAX_HEADER_BYTES)
    except zlib.error:
        raise CorruptError(f"the {what} is damaged (not readable)") from None
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
        raise CorruptError(f"the {what} is damaged (not readable)")
    return data


def read_header(stream: BinaryIO, already_read: bytes = b"") -> dict:
    """The header as a dict: `content_size` (None when unknown) and `format_version`.
    `already_read` holds the first bytes of the stream if a caller took them."""
    start = already_read + stream.read(len(MAGIC) + 1 - len(already_read))
    if len(start) < len(MAGIC) or start[: len(MAGIC)] != MAGIC:
        raise FormatError("not an llmzip file (bad magic number)")
    if len(start) <= len(MAGIC):
        raise TruncatedError("the file ends inside the header; it was cut short")
    version = start[len(MAGIC)]
    if version > FORMAT_VERSION:
        raise FormatError(
            f"the file uses llmzip format version {version}, newer than the {FORMAT_VERSION} this llmzip reads; "
            "upgrade llmzip to read it"
        )
    if version < 1:
        raise CorruptError("the header is damaged")
    if version == 1:
        return _read_v1_header(stream, start)
    size_bytes = _read_varint_bytes(stream, "header", _MAX_SIZE_VARINT_BYTES)
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "header"))
    if zlib.crc32(start + size_bytes) != crc:
        raise CorruptError("the header is damaged (checksum mismatch)")
    size = _read_varint(size_bytes, 0, "header", _MAX_SIZE_VARINT_BYTES)[0]
    return {"content_size": size - 1 if size else None, "format_version": version}


def _read_v1_header(stream: BinaryIO, start: bytes) -> dict:
    length_bytes = _read_exactly(stream, _V1_PREAMBLE.size, "header")
    (length,) = _V1_PREAMBLE.unpack(length_bytes)
    if length > MAX_HEADER_BYTES:
        raise CorruptError("the header is damaged")
    body = _read_exactly(stream, length, "header")
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "header"))
    if zlib.crc32(start + length_bytes + body) != crc:
        raise CorruptError("the header is damaged (checksum mismatch)")
    header = _parse_json(body, "header")
    size = header.get("content_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise CorruptError("the header is damaged")
    return {"content_size": size, "format_version": 1}


def read_next_header(stream: BinaryIO) -> dict | None:
    """After an end record: the header of the stream that follows (llmzip streams may be
    concatenated, like gzip members), or None at the end of the data."""
    start = stream.read(len(MAGIC))
    if not start:
        return None
    if start != MAGIC[: len(start)]:
        raise CorruptError("there is data after the end of the llmzip stream, and it is not another llmzip stream")
    if len(start) < len(MAGIC):
        raise TruncatedError("the file ends inside the header of a following llmzip stream; it was cut short")
    return read_header(stream, start)


def _group_descriptor(chunks: list[ChunkRecord]) -> bytes:
    table = b"".join(
        _varint(chunk.kind) + _varint(chunk.raw_length) + _varint(chunk.token_count) + _varint(len(chunk.payload))
        + _CRC.pack(chunk.raw_crc32)
        for chunk in chunks
    )
    return GROUP_TAG + _varint(len(chunks)) + _varint(len(table)) + table


def group_size(chunks: list[ChunkRecord]) -> int:
    """Bytes `write_group` writes for these chunks."""
    return len(_group_descriptor(chunks)) + sum(len(chunk.payload) for chunk in chunks) + 2 * _CRC.size


def write_group(stream: BinaryIO, chunks: list[ChunkRecord]) -> None:
    descriptor = _group_descriptor(chunks)
    payloads = b"".join(chunk.payload for chunk in chunks)
    stream.write(descriptor + _CRC.pack(zlib.crc32(descriptor)) + payloads + _CRC.pack(zlib.crc32(payloads)))


def write_end(stream: BinaryIO, end: EndRecord) -> None:
    record = END_TAG + _varint(end.content_size) + end.sha256[:_DIGEST_BYTES]
    stream.write(record + _CRC.pack(zlib.crc32(record)))


def read_record(stream: BinaryIO, max_group_chunks: int, version: int = FORMAT_VERSION
                ) -> list[ChunkRecord] | dict | EndRecord:
    """The next group (a list of chunks), model record (a dict) or end record of a stream of the
    given format version; checksums verified first."""
    tag = _read_exactly(stream, 1, "chunk stream")
    if tag == MODEL_TAG:
        if version == 1:
            length_bytes = _read_exactly(stream, _LENGTH.size, "model record")
            (length,) = _LENGTH.unpack(length_bytes)
        else:
            length_bytes = _read_varint_bytes(stream, "model record")
            length = _read_varint(length_bytes, 0, "model record")[0]
        if length > MAX_HEADER_BYTES:
            raise CorruptError("the model record is damaged")
        body = _read_exactly(stream, length, "model record")
        (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "model record"))
        if zlib.crc32(tag + length_bytes + body) != crc:
            raise CorruptError("the model record is damaged (checksum mismatch)")
        return _parse_json(_inflate(body, "model record", version), "model record")
    if tag == END_TAG:
        if version == 1:
            body = _read_exactly(stream, _V1_END.size, "end record")
            fields = _V1_END.unpack(body)
        else:
            size_bytes = _read_varint_bytes(stream, "end record", _MAX_SIZE_VARINT_BYTES)
            digest = _read_exactly(stream, _DIGEST_BYTES, "end record")
            body = size_bytes + digest
        (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "end record"))
        if zlib.crc32(tag + body) != crc:
            raise CorruptError("the end record is damaged (checksum mismatch)")
        if version == 1:
            return EndRecord(*fields)
        return EndRecord(_read_varint(size_bytes, 0, "end record", _MAX_SIZE_VARINT_BYTES)[0], digest)
    if tag != GROUP_TAG:
        raise CorruptError("the chunk stream is damaged (unknown record)")
    count = _read_varint_from(stream, "group")
    if not 1 <= count <= min(max_group_chunks, MAX_GROUP_CHUNKS):
        raise CorruptError("the chunk stream is damaged (impossible chunk count)")
    table_length = _read_varint_from(stream, "group")
    if table_length > count * (4 * _MAX_VARINT_BYTES + _CRC.size):
        raise CorruptError("the chunk stream is damaged (impossible group descriptor)")
    table = _read_exactly(stream, table_length, "group")
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "group"))
    if zlib.crc32(tag + _varint(count) + _varint(table_length) + table) != crc:
        raise CorruptError("the chunk stream is damaged (checksum mismatch in a group descriptor)")
    entries, position = [], 0
    for _ in range(count):
        fields = []
        for _ in range(_CHUNK_FIELDS - 1):
            value, position = _read_varint(table, position, "group descriptor")
            fields.append(value)
        if position + _CRC.size > len(table):
            raise CorruptError("the chunk stream is damaged (group descriptor too short)")
        fields.append(_CRC.unpack_from(table, position)[0])
        position += _CRC.size
        entries.append(tuple(fields))
    if position != len(table):
        raise CorruptError("the chunk stream is damaged (group descriptor too long)")
    for kind, raw_length, token_count, payload_length, _ in entries:
        if kind not in CHUNK_KINDS or raw_length > MAX_CHUNK_BYTES or payload_length > MAX_CHUNK_BYTES:
            raise CorruptError("the chunk stream is damaged (impossible chunk)")
    if sum(entry[3] for entry in entries) > MAX_GROUP_BYTES:
        raise CorruptError("the chunk stream is damaged (impossible group size)")
    payloads = _read_exactly(stream, sum(entry[3] for entry in entries), "chunk payloads")
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "chunk payloads"))
    if zlib.crc32(payloads) != crc:
        raise CorruptError("the chunk payloads are damaged (checksum mismatch)")
    chunks, offset = [], 0
    for kind, raw_length, token_count, payload_length, raw_crc32 in entries:
        chunks.append(ChunkRecord(kind, raw_length, token_count, raw_crc32, payloads[offset : offset + payload_length]))
        offset += payload_length
    return chunks
