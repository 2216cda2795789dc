"""Golden files: a change of format, coder or exact engine shows up here first.

`NAME.llmz` were written by format version 1 and must decode forever; `NAME.v2.llmz` are what
llmzip writes today, byte for byte.
"""

from pathlib import Path

import pytest

import llmzip

GOLDEN = Path(__file__).resolve().parent / "golden"
MODEL = str(GOLDEN / "model")


@pytest.mark.parametrize("version", ["", ".v2"])
@pytest.mark.parametrize("name", ["text", "binary"])
def test_golden_file_decodes(name, version):
    packed = (GOLDEN / f"{name}{version}.llmz").read_bytes()
    assert llmzip.decompress(packed, model=MODEL) == (GOLDEN / f"{name}.bin").read_bytes()


@pytest.mark.parametrize("name", ["text", "binary"])
def test_compression_reproduces_golden_file(name):
    data = (GOLDEN / f"{name}.bin").read_bytes()
    packed = llmzip.compress(data, model=MODEL, engine="exact", device="cpu", batch_size=4, xz_fallback=False)
    assert packed == (GOLDEN / f"{name}.v2.llmz").read_bytes(), ("the bitstream changed: "
                                                                  "a format change needs a new version")


@pytest.mark.parametrize("version", ["", ".v2"])
def test_golden_text_is_model_coded(version):
    details = llmzip.info((GOLDEN / f"text{version}.llmz").read_bytes())
    assert details.chunks["model"] > 0
    assert details.model_settings["engine"]["kind"] == "exact"


def test_version_2_codes_the_same_chunks_in_fewer_bytes():
    old, new = (llmzip.info((GOLDEN / f"text{version}.llmz").read_bytes()) for version in ("", ".v2"))
    assert old.model_settings == new.model_settings and old.chunks == new.chunks
    assert new.compressed_size < old.compressed_size - 300
