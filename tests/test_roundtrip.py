"""Round trips through the Python API with tiny models."""

import io
import lzma
import random

import pytest

import llmzip
from conftest import SAMPLE_TEXT


def exact_engine_available() -> bool:
    try:
        from llmzip.engine.gpt import ExactGPTEngine  # noqa: F401
    except ImportError:
        return False
    return True


ENGINES = ["float", pytest.param("exact", marks=pytest.mark.skipif(not exact_engine_available(),
                                                                   reason="exact engine not built"))]

CASES = {
    "empty": b"",
    "one byte": b"x",
    "all byte values": bytes(range(256)),
    "random bytes": random.Random(7).randbytes(1500),
    "invalid utf-8": b"caf\xe9 \xff\xfe text with \xc3 broken \xe4\xbd sequences " * 3,
    "chinese": "满纸荒唐言，一把辛酸泪。都云作者痴，谁解其中味？".encode(),
    "longer than the context": (SAMPLE_TEXT * 3).encode(),
}


@pytest.fixture(scope="module")
def compressors(tiny_model):
    return {engine: llmzip.Compressor(model=tiny_model, engine=engine, device="cpu", batch_size=4, xz_fallback=False)
            for engine in ("float", "exact") if engine == "float" or exact_engine_available()}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(CASES))
def test_round_trip(compressors, tiny_model, engine, name):
    data = CASES[name]
    packed = compressors[engine].compress(data)
    assert llmzip.decompress(packed, model=tiny_model) == data
    assert llmzip.info(packed).content_size == len(data)


@pytest.mark.parametrize("engine", ENGINES)
def test_many_chunks_and_groups(tiny_model, engine):
    data = " ".join(f"word{index} {SAMPLE_TEXT[index % 40:]}" for index in range(12)).encode()
    compressor = llmzip.Compressor(model=tiny_model, engine=engine, device="cpu", chunk_tokens=16, batch_size=3,
                                   xz_fallback=False)
    packed = compressor.compress(data)
    details = llmzip.info(packed)
    assert details.chunks["model"] > 3 * 2  # several full groups of model-coded chunks
    assert details.model_settings["engine"]["kind"] == engine

    from llmzip import stream

    batches = []
    decode_chunks = stream.decode_chunks

    def recording(engine_object, records):
        batches.append(len(records))
        return decode_chunks(engine_object, records)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream, "decode_chunks", recording)
        assert llmzip.decompress(packed, model=tiny_model) == data
    if engine == "exact":  # rows do not depend on the batch: consecutive groups are decoded together
        assert max(batches) > 3
    else:  # the float engine's rows do: each group is decoded exactly as it was encoded
        assert max(batches) <= 3


def test_binary_data_grows_by_framing_only(tiny_model, random_bytes):
    packed = llmzip.compress(random_bytes, model=tiny_model, engine="float")
    assert len(packed) <= len(random_bytes) + 128
    assert llmzip.info(packed).model_settings is None  # no model needed to decode it


def test_file_made_with_another_model_is_refused(tiny_model, other_model):
    packed = llmzip.compress(SAMPLE_TEXT.encode(), model=tiny_model, engine="float", xz_fallback=False)
    with pytest.raises(llmzip.ModelError, match="sha256"):
        llmzip.decompress(packed, model=other_model)


def test_open_writes_and_reads_like_gzip(tiny_model, tmp_path):
    path = tmp_path / "notes.txt.llmz"
    with llmzip.open(path, "wt", model=tiny_model, engine="float", encoding="utf-8") as stream:
        stream.write(SAMPLE_TEXT)
    with llmzip.open(path, "rt", model=tiny_model, encoding="utf-8") as stream:
        assert stream.read() == SAMPLE_TEXT
    with llmzip.open(path, "rb", model=tiny_model) as stream:
        assert stream.read(5) == SAMPLE_TEXT.encode()[:5]


def test_truncated_data_raises_eof_error(tiny_model):
    packed = llmzip.compress(SAMPLE_TEXT.encode(), model=tiny_model, engine="float")
    with pytest.raises(EOFError):
        llmzip.decompress(packed[:-3], model=tiny_model)


def test_trailing_garbage_is_refused(tiny_model):
    packed = llmzip.compress(b"abc", model=tiny_model, engine="float")
    with pytest.raises(llmzip.CorruptError):
        llmzip.decompress(packed + b"junk", model=tiny_model)


def test_float_file_refused_on_another_machine(tiny_model):
    packed = llmzip.compress(SAMPLE_TEXT.encode(), model=tiny_model, engine="float", xz_fallback=False)

    def as_if_made_elsewhere(settings):
        settings["engine"]["torch"] = "1.0.0"
        settings["engine"]["cpu_capability"] = "NEON"

    with pytest.raises(llmzip.EngineMismatchError, match="torch"):
        llmzip.decompress(rewrite_model_record(packed, as_if_made_elsewhere), model=tiny_model)


def rewrite_model_record(data: bytes, change) -> bytes:
    """The same file with its model record edited and every record sealed again."""
    from llmzip import container

    source, output = io.BytesIO(data), io.BytesIO()
    container.write_header(output, container.read_header(source))
    while True:
        record = container.read_record(source, container.MAX_GROUP_CHUNKS)
        if isinstance(record, dict):
            change(record)
            container.write_model_record(output, record)
        elif isinstance(record, list):
            container.write_group(output, record)
        else:
            container.write_end(output, record)
            return output.getvalue()


def test_a_file_that_falls_back_to_xz_whole_is_no_larger_than_xz_9e(tiny_model):
    # Raw LZMA2 searched as hard as xz -9e, without xz's stream framing, pays for llmzip's own.
    # Lines that repeat with a tenth of their words changed: xz's extreme search takes 100 bytes
    # more off them than its normal one, more than llmzip's framing.
    rng = random.Random(0)
    words = SAMPLE_TEXT.split()
    data = "\n".join(" ".join(rng.choice(words) if rng.random() < 0.1 else word for word in words[:60])
                     for _ in range(100)).encode()
    packed = llmzip.Compressor(model=tiny_model, engine="exact", device="cpu").compress(data)
    assert llmzip.info(packed).chunks == {"model": 0, "stored": 0, "xz": 1}
    assert len(packed) <= len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    assert llmzip.decompress(packed, model=tiny_model) == data


def test_text_that_repeats_beyond_a_group_becomes_one_xz_chunk(tiny_model):
    # Every group is new text to the model and to xz over the group alone, but xz over the
    # whole span sees the repetition: the encoder must write the smaller of the two.
    words = random.Random(3).choices(SAMPLE_TEXT.split(), k=600)
    data = (" ".join(words) + "\n").encode() * 4
    options = dict(model=tiny_model, engine="exact", device="cpu", chunk_tokens=32, batch_size=2)
    modelled = llmzip.Compressor(**options, xz_fallback=False).compress(data)
    packed = llmzip.Compressor(**options).compress(data)
    assert llmzip.info(modelled).chunks["model"] > 10
    assert llmzip.info(packed).chunks == {"model": 0, "stored": 0, "xz": 1}
    assert len(packed) < len(modelled) and len(packed) < len(data) // 3
    assert llmzip.decompress(packed, model=tiny_model) == data


def test_a_group_of_model_chunks_pays_for_its_chunk_table():
    """The choice between a group's model chunks and one xz chunk counts the bytes each writes,
    chunk table included: ten 4-byte payloads (40 bytes, each with a table entry) lose to one
    60-byte xz chunk."""
    from types import SimpleNamespace

    from llmzip import container, stream

    raw = b"x" * 40
    chunks = [container.ChunkRecord(container.CHUNK_MODEL, len(raw), 12, 0, b"\0" * 4) for _ in range(10)]
    xz = container.ChunkRecord(container.CHUNK_XZ, 10 * len(raw), 0, 0, b"\0" * 60)
    coding = SimpleNamespace(_model_record_due=lambda: False)
    assert sum(len(chunk.payload) for chunk in chunks) < len(xz.payload)
    assert container.group_size(chunks) > container.group_size([xz])
    assert not stream._Coding._model_wins(coding, chunks, xz)
    assert stream._Coding._model_wins(coding, chunks[:1], xz)
