"""llmzip bench: real round trips, reports in three formats, published figures, a cache that makes re-runs cheap."""

from __future__ import annotations

import csv
import json
import lzma
import random

import pytest

from conftest import SAMPLE_TEXT
from llmzip import bench
from llmzip.cli import main

EXPECTED_COLUMNS = ["bits/byte", "cross-entropy bits/byte", "ratio (raw/compressed)",
                    "size-adjusted (compressed+model)/raw", "compress", "decompress", "parameters", "decode verified"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench") / "tiny-corpus"
    directory.mkdir()
    words = SAMPLE_TEXT.split(" ")
    rng = random.Random(5)
    (directory / "words.txt").write_text(" ".join(rng.choice(words) for _ in range(12)), encoding="utf-8")
    (directory / "chinese.txt").write_text("红楼梦是中国古典小说。", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def first_run(corpus, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    argv = ["bench", str(corpus), "--models", tiny_model, "--baselines", "gzip,xz,zstd,cmix", "--model-only",
            "--out", str(out), "-q"]
    assert main(argv) == 0
    return out, argv


def test_reports_in_markdown_csv_and_json(first_run, tiny_model):
    out, _ = first_run
    markdown = (out / "results.md").read_text(encoding="utf-8")
    for column in EXPECTED_COLUMNS:
        assert column in markdown
    assert "| tiny | gzip -9 | xz -9e | zstd -22 --ultra |" in markdown  # the bits-per-byte table's header
    assert "**tiny-corpus** (2 files)" in markdown

    with open(out / "results.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == bench.ROW_FIELDS
    files = [row for row in rows if row["scope"] == "file"]
    assert {(row["file"], row["compressor"]) for row in files} == {
        (name, label) for name in ("words.txt", "chinese.txt")
        for label in ("tiny", "gzip -9", "xz -9e", "zstd -22 --ultra")}
    assert all(row["verified"] == "True" for row in rows)
    assert {row["scope"] for row in rows} == {"file", "corpus"}

    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    model_rows = [row for row in document["rows"] if row["kind"] == "model"]
    assert model_rows and all(row["parameters"] > 0 and row["model_bytes"] > 0 for row in model_rows)
    for row in model_rows:
        # Every text chunk was model-coded, so the ideal coder beats the real one by a few bytes only.
        assert row["model_coded_bytes"] == row["raw_bytes"]
        assert 0 < row["bits_per_byte"] - row["cross_entropy_bits_per_byte"] < 8 * 16 * 8 / row["raw_bytes"]
        assert row["size_adjusted_ratio"] > row["model_bytes"] / row["raw_bytes"]
        assert row["device"]
    for row in document["rows"]:
        assert row["compression_ratio"] == pytest.approx(row["raw_bytes"] / row["compressed_bytes"])
        assert row["bits_per_byte"] == pytest.approx(8 * row["compressed_bytes"] / row["raw_bytes"])
    total = next(row for row in document["rows"] if row["scope"] == "corpus" and row["compressor"] == "gzip -9")
    gzip_files = [row for row in document["rows"] if row["scope"] == "file" and row["compressor"] == "gzip -9"]
    assert total["compressed_bytes"] == sum(row["compressed_bytes"] for row in gzip_files)

    for plot in ("bits_per_byte.png", "scaling.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG") and (out / plot).stat().st_size > 5000


def test_a_second_run_comes_from_the_cache(first_run, monkeypatch):
    out, argv = first_run

    def measure_again(codec, data, repeat=1):
        raise AssertionError(f"{codec.label} measured again despite the cache")

    monkeypatch.setattr(bench, "measure", measure_again)
    assert main(argv) == 0
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert all(row["cached"] for row in document["rows"])
    assert "(cached)" in (out / "results.md").read_text(encoding="utf-8")


def test_repeat_keeps_the_fastest_of_verified_round_trips(monkeypatch):
    times = iter([0.0, 5.0, 9.0, 10.0, 12.0, 13.0])  # compress 5 then 2 seconds, decompress 4 then 1
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(times))
    codec = bench.BASELINES["gzip"]()
    row = bench.measure(codec, b"some text " * 20, repeat=2)
    assert row["verified"] and row["compress_seconds"] == 2.0 and row["decompress_seconds"] == 1.0
    assert bench.Cache.key("0" * 64, codec, 2) != bench.Cache.key("0" * 64, codec)


def test_published_figures_sit_beside_their_file(tmp_path):
    corpus = tmp_path / "canterbury"
    corpus.mkdir()
    text = (SAMPLE_TEXT.encode() * 2000)[:152089]
    (corpus / "alice29.txt").write_bytes(text)
    (corpus / "other.txt").write_bytes(text[:1000])
    out = tmp_path / "out"
    assert main(["bench", str(corpus), "--models", "", "--baselines", "gzip", "--max-bytes", "2000",
                 "--out", str(out), "-q", "--no-plots"]) == 0
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert "ts_zip (published)" in markdown and "1.142*" in markdown and "not measured" in markdown
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    published = [row for row in rows if row["kind"] == "published"]
    assert [(row["file"], row["bits_per_byte"]) for row in published] == [("alice29.txt", 1.142)]
    assert "first 2000 bytes" in published[0]["note"]


@pytest.mark.parametrize("name", ["gzip", "bzip2", "xz", "zstd", "brotli"])
def test_every_baseline_round_trips(name):
    codec = bench.baseline(name)
    data = SAMPLE_TEXT.encode() * 5
    row = bench.measure(codec, data)
    assert row["verified"] and 0 < row["compressed_bytes"] < len(data)


def test_cmix_is_skipped_silently_when_absent(monkeypatch):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    assert bench.baseline("cmix") is None


def test_xz_inputs_are_read_decompressed(tmp_path):
    (tmp_path / "big.txt.xz").write_bytes(lzma.compress(b"hello world " * 100))
    (tmp_path / ".hidden").write_bytes(b"x")
    inputs = bench.collect_inputs([str(tmp_path), str(tmp_path / "big.txt.xz")])
    assert [item.name for item in inputs] == ["big.txt"]
    assert bench.read_input(inputs[0].path) == b"hello world " * 100
    assert bench.read_input(inputs[0].path, max_bytes=5) == b"hello"


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "missing"), "--models", "", "--out", str(tmp_path)]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("a")
    assert main(["bench", str(tmp_path / "a.txt"), "--models", "", "--baselines", "lz4", "--out", str(tmp_path)]) == 1
    assert "unknown baseline 'lz4'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "a.txt"), "--models", "", "--repeat", "0", "--out", str(tmp_path)]) == 1
    assert "--repeat must be at least 1" in capsys.readouterr().err
