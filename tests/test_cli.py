"""The command line, called through main(argv) and, where a terminal or pipe matters, as a process."""

import os
import subprocess
import sys

import pytest

from conftest import SAMPLE_TEXT
from llmzip.cli import main

TEXT = (SAMPLE_TEXT * 2).encode()


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(TEXT)
    return path


def run(*argv, stdin: bytes = b""):
    return subprocess.run([sys.executable, "-m", "llmzip.cli", *map(str, argv)], input=stdin, capture_output=True, timeout=300)


def test_compress_then_decompress_keeps_input(tiny_model, text_file, capsys):
    assert main([str(text_file), "-m", tiny_model]) == 0
    packed = text_file.with_name("a.txt.llmz")
    assert packed.exists() and text_file.exists()
    summary = capsys.readouterr().err
    assert "a.txt :" in summary and "=>" in summary and "a.txt.llmz" in summary
    text_file.unlink()
    assert main(["-d", str(packed), "-m", tiny_model]) == 0
    assert text_file.read_bytes() == TEXT


def test_refuses_to_overwrite_without_force(tiny_model, text_file, capsys):
    existing = text_file.with_name("a.txt.llmz")
    existing.write_bytes(b"precious")
    assert main([str(text_file), "-m", tiny_model]) == 1
    assert "already exists" in capsys.readouterr().err
    assert existing.read_bytes() == b"precious"
    assert main([str(text_file), "-m", tiny_model, "-f"]) == 0
    assert existing.read_bytes() != b"precious"


def test_rm_output_and_test_and_list(tiny_model, text_file, tmp_path, capsys):
    target = tmp_path / "out.llmz"
    assert main([str(text_file), "-o", str(target), "--rm", "-m", tiny_model, "-q", "--model-only"]) == 0
    assert not text_file.exists()
    assert capsys.readouterr().err == ""
    assert main(["-t", str(target), "-m", tiny_model]) == 0
    assert "OK" in capsys.readouterr().err
    assert main(["-l", str(target)]) == 0
    listing = capsys.readouterr().out
    assert "Bits/B" in listing and "exact" in listing


def test_stdin_to_stdout_round_trip(tiny_model):
    packed = run("-m", tiny_model, stdin=TEXT)
    assert packed.returncode == 0, packed.stderr
    assert packed.stdout.startswith(b"LLMZ")
    unpacked = run("-d", "-m", tiny_model, "-", stdin=packed.stdout)
    assert unpacked.returncode == 0 and unpacked.stdout == TEXT


def test_no_partial_output_when_decoding_fails(tiny_model, text_file, capsys):
    assert main([str(text_file), "-m", tiny_model, "-q"]) == 0
    packed = text_file.with_name("a.txt.llmz")
    damaged = bytearray(packed.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    packed.write_bytes(bytes(damaged))
    text_file.unlink()
    assert main(["-d", str(packed), "-m", tiny_model]) == 1
    assert "damaged" in capsys.readouterr().err
    assert sorted(os.listdir(packed.parent)) == ["a.txt.llmz"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.txt"], "No such file"),
        (["-d", "{text}"], "unknown suffix"),
        (["-d", "{text}", "-o", "{dir}/x"], "not an llmzip file"),
        (["{dir}"], "directory"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(tmp_path, text_file, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [part.format(text=text_file, dir=tmp_path) for part in argv]
    result = run(*argv)
    assert result.returncode == 1
    assert message in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_usage_error_exits_2():
    result = run("--no-such-option")
    assert result.returncode == 2 and b"Traceback" not in result.stderr


def test_wrong_model_names_the_needed_one(tiny_model, other_model, text_file, capsys):
    packed = text_file.with_name("b.llmz")
    packed.write_bytes(_compress_bytes(tiny_model))
    assert main(["-d", str(packed), "-o", str(text_file.with_name("b.out")), "-m", other_model]) == 1
    error = capsys.readouterr().err
    assert "needs model" in error and "sha256" in error
    assert not text_file.with_name("b.out").exists()


def _compress_bytes(model: str) -> bytes:
    import llmzip

    return llmzip.compress(TEXT, model=model, xz_fallback=False)


def test_missing_builtin_model_is_explained(tmp_path, monkeypatch):
    import llmzip.models as models

    monkeypatch.setattr(models, "BUILTIN_DIRECTORY", tmp_path / "none")
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello")
    assert main([str(path)]) == 1
    assert not (tmp_path / "x.txt.llmz").exists()


def test_bench_reports_progress_without_a_terminal(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)
    result = subprocess.run([sys.executable, "-m", "llmzip.cli", "bench", "a.txt", "--models", "", "--baselines",
                             "gzip,xz", "--no-plots", "--out", "results"], cwd=tmp_path, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stderr.decode().splitlines() if line.startswith("llmzip bench: [")]
    assert lines[0].startswith("llmzip bench: [1/2] a.txt gzip -9: ") and lines[1].startswith("llmzip bench: [2/2] a.txt xz -9e: ")


# Concatenated streams, as gzip, xz and zstd read them.

def test_concatenated_streams_decompress_test_and_list_as_one(tmp_path):
    (tmp_path / "a").write_bytes(TEXT)
    (tmp_path / "b").write_bytes(bytes(range(256)))
    joined = subprocess.run([sys.executable, "-m", "llmzip.cli", "-c", "a", "b"], cwd=tmp_path, capture_output=True,
                            timeout=300)
    assert joined.returncode == 0, joined.stderr
    (tmp_path / "ab.llmz").write_bytes(joined.stdout)
    unpacked = run("-d", "-c", tmp_path / "ab.llmz")
    assert unpacked.returncode == 0 and unpacked.stdout == TEXT + bytes(range(256))
    tested = run("-t", tmp_path / "ab.llmz")
    assert tested.returncode == 0 and b"OK" in tested.stderr
    listing = run("-l", tmp_path / "ab.llmz")
    assert listing.returncode == 0
    row = listing.stdout.decode().splitlines()[1]
    assert f"{len(TEXT) + 256} B" in row and f"{len(joined.stdout)} B" in row and "(2 streams)" in row
    (tmp_path / "bad.llmz").write_bytes(joined.stdout + b"garbage")
    for mode in ("-d", "-t", "-l"):
        damaged = run(mode, "-c", tmp_path / "bad.llmz") if mode == "-d" else run(mode, tmp_path / "bad.llmz")
        assert damaged.returncode == 1 and b"not another llmzip stream" in damaged.stderr


def test_list_from_a_pipe_shows_the_compressed_size(tiny_model, text_file):
    packed = _compress_bytes(tiny_model)
    listing = run("-l", stdin=packed)
    assert listing.returncode == 0, listing.stderr
    row = listing.stdout.decode().splitlines()[1]
    assert row.split()[:2] == [str(len(packed)), "B"] and "0.00%" not in row and "(stdin)" in row
