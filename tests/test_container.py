"""The container alone: no model, no torch."""

import io

import pytest

from llmzip import container
from llmzip.container import CHUNK_MODEL, CHUNK_STORED, ChunkRecord, EndRecord
from llmzip.errors import CorruptError, FormatError, TruncatedError


def sample_stream() -> bytes:
    stream = io.BytesIO()
    container.write_header(stream, {"content_size": 5})
    container.write_model_record(stream, {"chunk_tokens": 8, "batch_size": 2})
    container.write_group(stream, [ChunkRecord(CHUNK_STORED, 2, 0, 123, b"ab"), ChunkRecord(CHUNK_MODEL, 3, 2, 456, b"\0\0\0\1")])
    container.write_end(stream, EndRecord(5, b"\x11" * 32))
    return stream.getvalue()


def read_all(data: bytes) -> list:
    stream = io.BytesIO(data)
    records = [container.read_header(stream)]
    while not isinstance(record := container.read_record(stream, 2), EndRecord):
        records.append(record)
    return records + [record]


def test_records_round_trip():
    header, settings, group, end = read_all(sample_stream())
    assert header == {"content_size": 5}
    assert settings == {"chunk_tokens": 8, "batch_size": 2}
    assert [chunk.payload for chunk in group] == [b"ab", b"\0\0\0\1"]
    assert [chunk.token_count for chunk in group] == [0, 2]
    assert end == EndRecord(5, b"\x11" * 32)


def test_not_an_llmzip_file():
    with pytest.raises(FormatError, match="not an llmzip file"):
        read_all(b"PK\x03\x04 some zip file")
    with pytest.raises(FormatError):
        read_all(b"")


def test_newer_format_version_is_refused():
    data = bytearray(sample_stream())
    data[4] = container.FORMAT_VERSION + 1
    with pytest.raises(FormatError, match="newer"):
        read_all(bytes(data))


@pytest.mark.parametrize("cut", [5, 9, 20, 40, -1, -10, -40])
def test_truncation_is_an_eof_error(cut):
    with pytest.raises(EOFError):
        read_all(sample_stream()[:cut])


def test_every_bit_flip_is_detected():
    data = sample_stream()
    for position in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[position] ^= 1 << bit
            try:
                records = read_all(bytes(damaged))
            except (CorruptError, FormatError, TruncatedError):
                continue
            pytest.fail(f"flip of bit {bit} at byte {position} went unnoticed: {records}")


def test_group_larger_than_batch_is_refused():
    stream = io.BytesIO()
    container.write_group(stream, [ChunkRecord(CHUNK_STORED, 1, 0, 0, b"a")] * 3)
    with pytest.raises(CorruptError, match="chunk count"):
        container.read_record(io.BytesIO(stream.getvalue()), 2)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 1 << 21, container.MAX_CHUNK_BYTES])
def test_varint_round_trip(value):
    encoded = container._varint(value)
    assert container._read_varint(encoded, 0, "test") == (value, len(encoded))


def test_overlong_varint_is_refused():
    with pytest.raises(CorruptError, match="too long"):
        container._read_varint(b"\x80" * 6 + b"\x01", 0, "test")


def test_large_chunk_lengths_round_trip():
    stream = io.BytesIO()
    payload = bytes(70_000)
    container.write_group(stream, [ChunkRecord(CHUNK_STORED, len(payload), 0, 0xFFFFFFFF, payload)])
    (chunk,) = container.read_record(io.BytesIO(stream.getvalue()), 1)
    assert (chunk.raw_length, chunk.raw_crc32, chunk.payload) == (70_000, 0xFFFFFFFF, payload)


def test_model_record_that_does_not_inflate_is_refused():
    import struct
    import zlib

    record = container.MODEL_TAG + struct.pack("<I", 5) + b"hello"
    with pytest.raises(CorruptError, match="model record"):
        container.read_record(io.BytesIO(record + struct.pack("<I", zlib.crc32(record))), 2)
