"""Golden files: a change of format, coder or exact engine shows up here first."""

from pathlib import Path

import pytest

import llmzip

GOLDEN = Path(__file__).resolve().parent / "golden"
MODEL = str(GOLDEN / "model")


@pytest.mark.parametrize("name", ["text", "binary"])
def test_golden_file_decodes(name):
    assert llmzip.decompress((GOLDEN / f"{name}.llmz").read_bytes(), model=MODEL) == (GOLDEN / f"{name}.bin").read_bytes()


@pytest.mark.parametrize("name", ["text", "binary"])
def test_compression_reproduces_golden_file(name):
    data = (GOLDEN / f"{name}.bin").read_bytes()
    packed = llmzip.compress(data, model=MODEL, engine="exact", device="cpu", batch_size=4, xz_fallback=False)
    assert packed == (GOLDEN / f"{name}.llmz").read_bytes(), "the bitstream changed: a format change needs a new version"


def test_golden_text_is_model_coded():
    details = llmzip.info((GOLDEN / "text.llmz").read_bytes())
    assert details.chunks["model"] > 0
    assert details.model_settings["engine"]["kind"] == "exact"
