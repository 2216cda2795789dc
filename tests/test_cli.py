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
    return subprocess.run([sys.executable, "-m", "llmzip.cli", *map(str, argv)], input=stdin, capture_output=True,
                          timeout=300)


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
    assert main(["-1", str(path)]) == 1  # level 1: llmzip-tiny, a built-in model
    assert not (tmp_path / "x.txt.llmz").exists()


def test_bench_reports_progress_without_a_terminal(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)
    result = subprocess.run([sys.executable, "-m", "llmzip.cli", "bench", "a.txt", "--models", "", "--baselines",
                             "gzip,xz", "--no-plots", "--out", "results"], cwd=tmp_path, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in result.stderr.decode().splitlines() if line.startswith("llmzip bench: [")]
    assert (lines[0].startswith("llmzip bench: [1/2] a.txt gzip -9: ")
            and lines[1].startswith("llmzip bench: [2/2] a.txt xz -9e: "))


# Concatenated streams, as gzip, xz and zstd read them.

def test_concatenated_streams_decompress_test_and_list_as_one(tmp_path):
    (tmp_path / "a").write_bytes(TEXT)
    (tmp_path / "b").write_bytes(bytes(range(256)))
    joined = subprocess.run([sys.executable, "-m", "llmzip.cli", "-m", "llmzip-tiny", "-c", "a", "b"], cwd=tmp_path,
                            capture_output=True, timeout=300)
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


# Clear messages instead of tracebacks or parser riddles.

def test_help_shows_the_levels():
    shown = run("--help").stdout.decode()
    assert "-1 .. -9" in shown and "llmzip-tiny" in shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-10"], "there is no level -10; levels are -1 to -9"),
        (["-0"], "there is no level -0"),
        (["--chunk-tokens", "-5"], "--chunk-tokens must be at least 1, not -5"),
        (["--chunk-tokens=-5"], "--chunk-tokens: must be at least 1, not -5"),
        (["--chunk-tokens", "0"], "--chunk-tokens: must be at least 1, not 0"),
        (["-T", "-3"], "-T must be at least 1, not -3"),
        (["--batch-size", "many"], "--batch-size: takes a whole number, not 'many'"),
    ],
)
def test_impossible_numbers_are_clear_usage_errors(text_file, argv, message):
    result = run(*argv, text_file)
    assert result.returncode == 2 and message in result.stderr.decode()
    assert b"Traceback" not in result.stderr and not text_file.with_name("a.txt.llmz").exists()


def test_chunks_longer_than_the_context_are_refused(text_file):
    result = run("-m", "llmzip-tiny", "--chunk-tokens", "100000", text_file)
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert "chunk tokens must be between 1 and 255 for model 'llmzip-tiny'" in result.stderr.decode()
    import llmzip

    with pytest.raises(llmzip.LLMZipError, match="between 1 and 255"):
        llmzip.Compressor(model="llmzip-tiny", chunk_tokens=256)


def test_a_device_this_machine_lacks_is_one_line(text_file):
    import torch

    missing = "cuda:99" if torch.cuda.is_available() else "cuda"
    for device, message in ((missing, "is not available"), ("bogus", "unknown device 'bogus'"),
                            ("meta", "not supported")):
        for argv in ([text_file], ["-d", "-c", text_file]):
            result = run("--device", device, *argv)
            lines = result.stderr.decode().splitlines()
            assert (result.returncode == 1 and len(lines) == 1 and lines[0].startswith("llmzip: ")
                    and message in lines[0])


def test_standard_output_failures_are_one_line_or_quiet(tiny_model, tmp_path):
    packed = tmp_path / "x.llmz"
    packed.write_bytes(_compress_bytes(tiny_model))
    if os.path.exists("/dev/full"):
        with open("/dev/full", "wb") as full:
            result = subprocess.run([sys.executable, "-m", "llmzip.cli", "-l", str(packed)], stdout=full,
                                    stderr=subprocess.PIPE, timeout=300)
        assert result.returncode == 1 and result.stderr.decode() == "llmzip: (stdout): No space left on device\n"
    # A reader that stops after one line: no traceback, no message (the listing outgrows the pipe's buffer).
    process = subprocess.Popen([sys.executable, "-m", "llmzip.cli", "-l", *[str(packed)] * 3000],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().split()[0] == b"Compressed"
    process.stdout.close()
    assert process.wait(timeout=300) == 1
    assert process.stderr.read() == b""


def test_compressed_data_is_not_read_from_a_console(tmp_path):
    import pty

    primary, console = pty.openpty()
    try:
        for mode in ("-d", "-t", "-l"):
            result = subprocess.run([sys.executable, "-m", "llmzip.cli", mode], stdin=console, capture_output=True,
                                    timeout=30)
            assert result.returncode == 1 and b"stdin is a console, aborting" in result.stderr
    finally:
        os.close(primary)
        os.close(console)


# Empty input.

def test_empty_input_loads_no_model(tmp_path, monkeypatch, capsys):
    import llmzip
    import llmzip.models as models

    def no_model(name):
        raise AssertionError(f"model {name} was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert main(["-m", "llmzip-tiny", str(empty)]) == 0
    packed = tmp_path / "empty.llmz"
    assert f"(0 B => {packed.stat().st_size} B, " in capsys.readouterr().err
    empty.unlink()
    assert main(["-d", str(packed)]) == 0 and empty.read_bytes() == b""
    assert main(["-t", str(packed)]) == 0
    assert llmzip.decompress(llmzip.compress(b"", model="llmzip-tiny")) == b""
    monkeypatch.undo()
    assert llmzip.compress(b"") == packed.read_bytes() == llmzip.Compressor(model="llmzip-tiny").compress(b"")


# Optional packages missing: each tool still runs, or says in one line what to install.

OPTIONAL_PACKAGES = ("matplotlib", "zstandard", "brotli", "transformers", "gguf", "accelerate", "ray")
WITHOUT_OPTIONAL_PACKAGES = f"""
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OPTIONAL_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from llmzip.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_every_tool_runs_without_optional_packages(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)

    def run_without(*argv):
        result = subprocess.run([sys.executable, "-c", WITHOUT_OPTIONAL_PACKAGES, *map(str, argv)], cwd=tmp_path,
                                capture_output=True, timeout=300)
        assert b"Traceback" not in result.stderr, result.stderr.decode()
        return result

    assert run_without("-q", "-m", "llmzip-tiny", "a.txt").returncode == 0
    assert run_without("-t", "a.txt.llmz").returncode == 0
    assert run_without("-l", "a.txt.llmz").returncode == 0
    assert run_without("-d", "-c", "a.txt.llmz").stdout == TEXT
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    needs_transformers = run_without("-m", "model.gguf", "-o", "b.llmz", "a.txt")
    assert needs_transformers.returncode == 1 and b"pip install 'llmzip[hf]'" in needs_transformers.stderr
    assert run_without("explain", "-m", "llmzip-tiny", "a.txt").returncode == 0 and (tmp_path / "a.txt.html").exists()
    bench = run_without("bench", "a.txt", "--models", "", "--out", "results")
    assert bench.returncode == 0
    assert "pip install 'llmzip[bench]'" in bench.stderr.decode() and (tmp_path / "results" / "results.md").exists()
    assert "skipping zstd" in bench.stderr.decode() and "skipping brotli" in bench.stderr.decode()
    assert run_without("bench", "a.txt", "--models", "", "--baselines", "zstd", "--out", "results").returncode == 1
    assert run_without("train", "--help").returncode == 0
