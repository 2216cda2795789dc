"""Nothing is replaced unasked: an output that appears during a run is kept, devices, FIFOs and
symbolic links are written through rather than replaced, and new files get the modes other
tools give them."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import llmzip
from llmzip import cli

REPOSITORY = Path(__file__).resolve().parent.parent
MODEL = "llmzip-tiny"
TEXT = b"Words that a small model predicts well enough, written twice. " * 2
BINARY = bytes(range(256)) * 4  # kept as xz: no model runs


def _command(*arguments) -> list[str]:
    return [sys.executable, "-m", "llmzip.cli", *map(str, arguments)]


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY / "src")}


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "a.txt"
    path.write_bytes(TEXT)
    return path


def _appear_during_run(monkeypatch, method: str, target: Path, content: bytes) -> None:
    """Another program creates `target` while llmzip is busy compressing or decompressing."""
    owner = llmzip.Compressor if method == "compress" else llmzip.Decompressor
    real = owner.copy_stream

    def copy_stream(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        target.write_bytes(content)
        return result

    monkeypatch.setattr(owner, "copy_stream", copy_stream)


@pytest.mark.parametrize("method", ["compress", "decompress"])
def test_output_that_appears_during_the_run_is_not_replaced(text_file, tmp_path, monkeypatch, capsys, method):
    if method == "compress":
        argv, target = ["-m", MODEL, str(text_file)], tmp_path / "a.txt.llmz"
    else:
        packed = tmp_path / "b.txt.llmz"
        packed.write_bytes(llmzip.compress(TEXT, model=MODEL))
        argv, target = ["-d", str(packed)], tmp_path / "b.txt"
    _appear_during_run(monkeypatch, method, target, b"DATA\n")
    assert cli.main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert target.read_bytes() == b"DATA\n"
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]
    assert text_file.read_bytes() == TEXT


def test_force_replaces_an_output_that_appeared(text_file, tmp_path, monkeypatch):
    target = tmp_path / "a.txt.llmz"
    _appear_during_run(monkeypatch, "compress", target, b"DATA\n")
    assert cli.main(["-q", "-f", "-m", MODEL, str(text_file)]) == 0
    assert llmzip.decompress(target.read_bytes()) == TEXT


@pytest.mark.parametrize("appears", [False, True], ids=["publishes", "refuses"])
def test_file_systems_without_hard_links_publish_exclusively(text_file, tmp_path, monkeypatch, capsys, appears):
    def no_link(source, destination, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(cli.os, "link", no_link)
    target = tmp_path / "a.txt.llmz"
    if appears:
        _appear_during_run(monkeypatch, "compress", target, b"DATA\n")
    assert cli.main(["-q", "-m", MODEL, str(text_file)]) == (1 if appears else 0)
    if appears:
        assert "already exists" in capsys.readouterr().err and target.read_bytes() == b"DATA\n"
    else:
        assert llmzip.decompress(target.read_bytes()) == TEXT
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "a.txt.llmz"]


def test_two_runs_onto_one_output_one_wins_the_other_refuses(tmp_path):
    inputs = {"first.bin": BINARY, "second.bin": BINARY[::-1]}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    processes = [subprocess.Popen(_command("-q", "-m", MODEL, "-o", "same.llmz", name), cwd=tmp_path,
                                  env=_environment(), stderr=subprocess.PIPE) for name in inputs]
    results = [(process.wait(timeout=120), process.stderr.read().decode()) for process in processes]
    assert sorted(status for status, _ in results) == [0, 1], results
    assert "already exists" in next(message for status, message in results if status == 1)
    winner = list(inputs)[[status for status, _ in results].index(0)]
    assert llmzip.decompress((tmp_path / "same.llmz").read_bytes()) == inputs[winner]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.bin", "same.llmz", "second.bin"]


def test_output_onto_dev_null_is_written_through(text_file, capsys):
    before = os.stat(os.devnull)
    assert cli.main(["-m", MODEL, "-o", os.devnull, str(text_file)]) == 0
    after = os.stat(os.devnull)
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert "=> 0 B" not in capsys.readouterr().err  # the summary counts what was written


def test_output_onto_a_fifo_is_written_through(text_file, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    # A daemon: should llmzip replace the FIFO instead of writing into it, the reader waits forever.
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        status = cli.main(["-q", "-m", MODEL, "-o", str(fifo), "--rm", str(text_file)])
    finally:
        reader.join(timeout=30)
    assert status == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert llmzip.decompress(received[0]) == TEXT
    assert text_file.exists()  # --rm keeps an input whose output is not a file


def test_output_onto_a_symbolic_link_writes_its_target(text_file, tmp_path, capsys):
    real = tmp_path / "real.llmz"
    real.write_bytes(b"old")
    link = tmp_path / "link.llmz"
    link.symlink_to(real.name)
    assert cli.main(["-q", "-m", MODEL, "-o", str(link), str(text_file)]) == 1  # exists: needs -f
    assert "already exists" in capsys.readouterr().err and real.read_bytes() == b"old"
    assert cli.main(["-q", "-f", "-m", MODEL, "-o", str(link), str(text_file)]) == 0
    assert link.is_symlink() and os.readlink(link) == real.name
    assert llmzip.decompress(real.read_bytes()) == TEXT
    dangling = tmp_path / "dangling.llmz"
    dangling.symlink_to("elsewhere.llmz")
    assert cli.main(["-q", "-m", MODEL, "-o", str(dangling), str(text_file)]) == 1
    assert cli.main(["-q", "-f", "-m", MODEL, "-o", str(dangling), str(text_file)]) == 0
    assert dangling.is_symlink() and llmzip.decompress((tmp_path / "elsewhere.llmz").read_bytes()) == TEXT


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_from_stdin_honours_the_umask(tmp_path, umask):
    packed = llmzip.compress(BINARY, model=MODEL)
    for argv, data, name in ((["-o", "packed.llmz"], BINARY, "packed.llmz"),
                             (["-d", "-o", "plain.bin"], packed, "plain.bin")):
        result = subprocess.run(_command("-q", "-m", MODEL, *argv), cwd=tmp_path, env=_environment(), input=data,
                                capture_output=True, timeout=120, preexec_fn=lambda: os.umask(umask))
        assert result.returncode == 0, result.stderr.decode()
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask


def test_a_compressed_file_takes_the_input_mode(tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(BINARY)
    source.chmod(0o640)
    assert cli.main(["-q", "-m", MODEL, str(source)]) == 0
    assert stat.S_IMODE(os.stat(tmp_path / "input.bin.llmz").st_mode) == 0o640


def test_an_output_that_cannot_be_created_is_named(tmp_path, capsys):
    packed = tmp_path / "x.llmz"
    packed.write_bytes(llmzip.compress(BINARY, model=MODEL))
    target = tmp_path / "missing" / "x"
    assert cli.main(["-d", str(packed), "-o", str(target)]) == 1
    assert capsys.readouterr().err.strip() == f"llmzip: {target}: No such file or directory"
