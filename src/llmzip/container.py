"""The .llmz container: a header, groups of independently coded chunks, an end record.
Streams may follow one another in a file, like gzip members; they decode one after another.

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

MAGIC = b"LLMZ"
FORMAT_VERSION = 1

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

_PREAMBLE = struct.Struct("<4sBI")  # magic, format version, header length
_CHUNK_FIELDS = 5  # kind, raw length, token count, payload length (varints), raw crc32 (u32)
_MAX_VARINT_BYTES = 5  # enough for any length a reader accepts
_CRC = struct.Struct("<I")
_LENGTH = struct.Struct("<I")
_END = struct.Struct("<Q32s")  # content size, sha256 of the content


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
    sha256: bytes


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


def _read_varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
        if position >= len(data):
            raise CorruptError(f"the {what} is damaged (a number runs past its end)")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    raise CorruptError(f"the {what} is damaged (a number is too long)")


def _read_varint_from(stream: BinaryIO, what: str) -> int:
    data = b""
    while len(data) < _MAX_VARINT_BYTES:
        data += _read_exactly(stream, 1, what)
        if data[-1] < 0x80:
            break
    return _read_varint(data, 0, what)[0]


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
    body = _json_bytes(header)
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(body))
    stream.write(preamble + body + _CRC.pack(zlib.crc32(preamble + body)))


def _deflate(body: bytes) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    return deflate.compress(body) + deflate.flush()


def _model_record(settings: dict) -> bytes:
    # Deflated: the JSON is about 650 bytes, a cost that short inputs feel.
    body = _deflate(_json_bytes(settings))
    record = MODEL_TAG + _LENGTH.pack(len(body)) + body
    return record + _CRC.pack(zlib.crc32(record))


def model_record_size(settings: dict) -> int:
    return len(_model_record(settings))


def write_model_record(stream: BinaryIO, settings: dict) -> None:
    """Model, engine and coder settings; written once, before the first model-coded group."""
    stream.write(_model_record(settings))


def _inflate(body: bytes, what: str) -> bytes:
    inflate = zlib.decompressobj(-15)
    try:
        data = inflate.decompress(body, MAX_HEADER_BYTES)
    except zlib.error:
        raise CorruptError(f"the {what} is damaged (not readable)") from None
    if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
        raise CorruptError(f"the {what} is damaged (not readable)")
    return data


def read_header(stream: BinaryIO, already_read: bytes = b"") -> dict:
    """The header JSON; `already_read` holds the first bytes of the stream if a caller took them."""
    start = already_read + stream.read(_PREAMBLE.size - len(already_read))
    if len(start) < 4 or start[:4] != MAGIC:
        raise FormatError("not an llmzip file (bad magic number)")
    if len(start) < _PREAMBLE.size:
        raise TruncatedError("the file ends inside the header; it was cut short")
    _, version, length = _PREAMBLE.unpack(start)
    if version > FORMAT_VERSION:
        raise FormatError(
            f"the file uses llmzip format version {version}, newer than the {FORMAT_VERSION} this llmzip reads; "
            "upgrade llmzip to read it"
        )
    if version < 1 or length > MAX_HEADER_BYTES:
        raise CorruptError("the header is damaged")
    body = _read_exactly(stream, length, "header")
    (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "header"))
    if zlib.crc32(start + body) != crc:
        raise CorruptError("the header is damaged (checksum mismatch)")
    return _parse_json(body, "header")


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
    record = END_TAG + _END.pack(end.content_size, end.sha256)
    stream.write(record + _CRC.pack(zlib.crc32(record)))


def read_record(stream: BinaryIO, max_group_chunks: int) -> list[ChunkRecord] | dict | EndRecord:
    """The next group (a list of chunks), model record (a dict) or end record; checksums verified first."""
    tag = _read_exactly(stream, 1, "chunk stream")
    if tag == MODEL_TAG:
        length_bytes = _read_exactly(stream, _LENGTH.size, "model record")
        (length,) = _LENGTH.unpack(length_bytes)
        if length > MAX_HEADER_BYTES:
            raise CorruptError("the model record is damaged")
        body = _read_exactly(stream, length, "model record")
        (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "model record"))
        if zlib.crc32(tag + length_bytes + body) != crc:
            raise CorruptError("the model record is damaged (checksum mismatch)")
        return _parse_json(_inflate(body, "model record"), "model record")
    if tag == END_TAG:
        body = _read_exactly(stream, _END.size, "end record")
        (crc,) = _CRC.unpack(_read_exactly(stream, _CRC.size, "end record"))
        if zlib.crc32(tag + body) != crc:
            raise CorruptError("the end record is damaged (checksum mismatch)")
        return EndRecord(*_END.unpack(body))
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
