"""The container alone: no model, no torch."""

import hashlib
import io
import json
import struct
import zlib

import pytest

from llmzip import container
from llmzip.container import CHUNK_MODEL, CHUNK_STORED, ChunkRecord, EndRecord
from llmzip.errors import CorruptError, FormatError, TruncatedError


def sample_stream() -> bytes:
    stream = io.BytesIO()
    container.write_header(stream, {"content_size": 5})
    container.write_model_record(stream, {"chunk_tokens": 8, "batch_size": 2})
    container.write_group(stream, [ChunkRecord(CHUNK_STORED, 2, 0, 123, b"ab"),
                                   ChunkRecord(CHUNK_MODEL, 3, 2, 456, b"\0\0\0\1")])
    container.write_end(stream, EndRecord(5, b"\x11" * 32))
    return stream.getvalue()


def version_1_stream() -> bytes:
    """The sample stream as format version 1 wrote it: JSON header, u32 lengths, the whole SHA-256."""
    def with_crc(record: bytes) -> bytes:
        return record + struct.pack("<I", zlib.crc32(record))

    header_json = b'{"content_size":5}'
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    settings = deflate.compress(b'{"batch_size":2,"chunk_tokens":8}') + deflate.flush()
    group = io.BytesIO()
    container.write_group(group, [ChunkRecord(CHUNK_STORED, 2, 0, 123, b"ab"),
                                  ChunkRecord(CHUNK_MODEL, 3, 2, 456, b"\0\0\0\1")])
    return (with_crc(b"LLMZ\x01" + struct.pack("<I", len(header_json)) + header_json)
            + with_crc(b"M" + struct.pack("<I", len(settings)) + settings)
            + group.getvalue()
            + with_crc(b"E" + struct.pack("<Q", 5) + b"\x11" * 32))


def read_all(data: bytes) -> list:
    stream = io.BytesIO(data)
    records = [header := container.read_header(stream)]
    while not isinstance(record := container.read_record(stream, 2, header["format_version"]), EndRecord):
        records.append(record)
    return records + [record]


def test_records_round_trip():
    header, settings, group, end = read_all(sample_stream())
    assert header == {"content_size": 5, "format_version": container.FORMAT_VERSION}
    assert settings == {"chunk_tokens": 8, "batch_size": 2}
    assert [chunk.payload for chunk in group] == [b"ab", b"\0\0\0\1"]
    assert [chunk.token_count for chunk in group] == [0, 2]
    assert end == EndRecord(5, b"\x11" * 8)
    assert end.matches(5, b"\x11" * 32) and not end.matches(5, b"\x11" * 7 + b"\x12" + b"\x11" * 24)
    assert not end.matches(6, b"\x11" * 32)


def test_version_1_streams_are_still_read():
    header, settings, group, end = read_all(version_1_stream())
    assert header == {"content_size": 5, "format_version": 1}
    assert settings == {"chunk_tokens": 8, "batch_size": 2}
    assert [chunk.payload for chunk in group] == [b"ab", b"\0\0\0\1"]
    assert end == EndRecord(5, b"\x11" * 32)


@pytest.mark.parametrize("size", [None, 0, 1, 1 << 40, (1 << 64) - 2])
def test_content_sizes_round_trip(size):
    stream = io.BytesIO()
    container.write_header(stream, {"content_size": size})
    container.write_end(stream, EndRecord(size or 0, bytes(32)))
    stream.seek(0)
    assert container.read_header(stream)["content_size"] == size
    assert container.read_record(stream, 1).content_size == (size or 0)


def test_record_dictionary_never_changes():
    # Files of format version 2 need these exact bytes to read their model records.
    from llmzip.record_dictionary import RECORD_DICTIONARY

    assert (hashlib.sha256(RECORD_DICTIONARY).hexdigest()
            == "dc7a1bc75253b58468e0313cb8b3fa7c4c44f41fefe12fe46db1900ad21913a3")


def _dictionary_records() -> list[dict]:
    from llmzip.record_dictionary import RECORD_DICTIONARY

    return json.loads("[" + RECORD_DICTIONARY.decode().replace('}{"batch_size"', '},{"batch_size"') + "]")


@pytest.mark.parametrize("index", [0, 1])
def test_a_built_in_model_record_is_small(index):
    settings = _dictionary_records()[index]
    settings["chunk_tokens"] = 2047  # a level's own setting, not in the dictionary as such
    assert container.model_record_size(settings) <= 32
    stream = io.BytesIO()
    container.write_model_record(stream, settings)
    stream.seek(0)
    assert container.read_record(stream, 16) == settings


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


@pytest.mark.parametrize("make_stream", [sample_stream, version_1_stream], ids=["version 2", "version 1"])
def test_every_bit_flip_is_detected(make_stream):
    data = make_stream()
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


@pytest.mark.parametrize("version", [1, 2])
def test_model_record_that_does_not_inflate_is_refused(version):
    length = struct.pack("<I", 5) if version == 1 else container._varint(5)
    record = container.MODEL_TAG + length + b"hello"
    with pytest.raises(CorruptError, match="model record"):
        container.read_record(io.BytesIO(record + struct.pack("<I", zlib.crc32(record))), 2, version)
