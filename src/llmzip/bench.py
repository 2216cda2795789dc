"""`llmzip bench`: bits per byte of language models against classical compressors.

Every number comes from a real round trip: the file is compressed, the result is decompressed
and compared with the original, and only then is the size counted. What is reported, per file
and per corpus (a directory, or the folder of files named one by one):

- bits per byte: 8 × compressed bytes / raw bytes;
- cross-entropy bits per byte (models only): (Σ −log2 p over the tokens the model coded
  + 8 × every other byte of the compressed file: header, framing, chunks kept raw or as xz)
  / raw bytes. It is the size with an ideal entropy coder, so the gap to the first column is
  the range coder's own cost;
- compression ratio: raw bytes / compressed bytes;
- size-adjusted rate: (compressed bytes + model bytes) / raw bytes, which charges a model for
  its own size as a decompressor would have to ship it;
- compress and decompress throughput in raw bytes per second, on the device named.

Compressors are looked up by name in one registry (`BASELINES`, plus `ModelCodec` for models)
that the plots and `llmzip explain` reuse. Results are cached in OUT/cache.json keyed by the
data's sha256, the compressor's settings (a model's fingerprint and engine settings) and the
device, so running the same benchmark again only measures what changed.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import LLMZipError


class BenchError(LLMZipError):
    """A benchmark cannot run as asked (a compressor or an input is missing)."""


# -- compressors --------------------------------------------------------------------------------


@dataclass
class Codec:
    """One compressor: how it compresses and decompresses, and what identifies its output."""

    name: str  # short registry name ("xz") or the model's name
    label: str  # as shown in tables ("xz -9e")
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]
    identity: dict  # every setting that changes the output; part of the cache key
    kind: str = "baseline"  # "baseline" or "model"
    parameters: int = 0
    model_bytes: int = 0
    device: str = ""
    spec: dict | None = None  # the arguments that build this compressor again elsewhere (a Ray worker)

    def summary(self):
        """The llmzip Summary of the last compression (models only)."""
        return None


def _gzip() -> Codec:
    import zlib

    return Codec("gzip", "gzip -9", lambda data: gzip.compress(data, compresslevel=9, mtime=0), gzip.decompress,
                 {"zlib": zlib.ZLIB_RUNTIME_VERSION, "level": 9})


def _bzip2() -> Codec:
    return Codec("bzip2", "bzip2 -9", lambda data: bz2.compress(data, 9), bz2.decompress,
                 {"python": platform.python_version(), "level": 9})


def _xz() -> Codec:
    preset = 9 | lzma.PRESET_EXTREME
    return Codec("xz", "xz -9e", lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=preset),
                 lzma.decompress, {"python": platform.python_version(), "preset": "9e"})


def _zstd() -> Codec:
    try:
        import zstandard
    except ImportError:
        raise BenchError("the zstd baseline needs the zstandard package (pip install 'llmzip[bench]')") from None
    # python-zstandard allows the --ultra levels (20-22) without a separate switch.
    compressor = zstandard.ZstdCompressor(level=22, write_content_size=True)
    decompressor = zstandard.ZstdDecompressor()
    return Codec("zstd", "zstd -22 --ultra", compressor.compress, decompressor.decompress,
                 {"zstandard": zstandard.__version__, "zstd": zstandard.ZSTD_VERSION, "level": 22})


def _brotli() -> Codec:
    try:
        import brotli
    except ImportError:
        raise BenchError("the brotli baseline needs the brotli package (pip install 'llmzip[bench]')") from None
    # lgwin 24 is the brotli command line's default window; the library's default is 22.
    return Codec("brotli", "brotli -q 11", lambda data: brotli.compress(data, quality=11, lgwin=24), brotli.decompress,
                 {"brotli": getattr(brotli, "__version__", "?"), "quality": 11, "lgwin": 24})


def _cmix() -> Codec | None:
    binary = shutil.which("cmix")
    if binary is None:
        return None

    def run(mode: str, data: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="llmzip-cmix-") as directory:
            source, target = Path(directory, "in"), Path(directory, "out")
            source.write_bytes(data)
            subprocess.run([binary, mode, str(source), str(target)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            return target.read_bytes()

    status = os.stat(binary)
    return Codec("cmix", "cmix", lambda data: run("-c", data), lambda data: run("-d", data),
                 {"binary": binary, "size": status.st_size, "mtime": int(status.st_mtime)})


#: name -> factory of the classical compressors; a factory returns None when the tool is absent
#: and should be skipped silently (cmix), and raises BenchError when it was asked for but missing.
BASELINES: dict[str, Callable[[], Codec | None]] = {
    "gzip": _gzip,
    "bzip2": _bzip2,
    "xz": _xz,
    "zstd": _zstd,
    "brotli": _brotli,
    "cmix": _cmix,
}
DEFAULT_BASELINES = "gzip,bzip2,xz,zstd,brotli,cmix"

#: Figures published by others for whole files, shown beside a file of that name and size;
#: never measured here.
PUBLISHED = [
    {"file": "alice29.txt", "raw_bytes": 152089, "compressor": "ts_zip", "bits_per_byte": 1.142,
     "source": "https://bellard.org/ts_zip/"},
    {"file": "book1", "raw_bytes": 768771, "compressor": "ts_zip", "bits_per_byte": 1.431,
     "source": "https://bellard.org/ts_zip/"},
]
PUBLISHED_LABEL = "ts_zip (published)"


def baseline(name: str) -> Codec | None:
    """The classical compressor called `name`; None when it is optional and not installed."""
    try:
        factory = BASELINES[name]
    except KeyError:
        raise BenchError(f"unknown baseline '{name}'; choose from {', '.join(BASELINES)}") from None
    codec = factory()
    if codec is not None:
        codec.device = cpu_description(1)
        codec.spec = {"baseline": name}
    return codec


class ModelCodec(Codec):
    """llmzip with one model; the model is loaded once and reused for every file."""

    def __init__(self, model: str, *, device: str | None = None, engine: str = "auto", batch_size: int | None = None,
                 chunk_tokens: int | None = None, threads: int | None = None, xz_fallback: bool = True,
                 online: bool | None = None):
        from .api import CompressOptions, Compressor, Decompressor, _default_device

        spec = {"model": model, "device": device, "engine": engine, "batch_size": batch_size,
                "chunk_tokens": chunk_tokens, "threads": threads, "xz_fallback": xz_fallback, "online": online}
        device = device or _default_device()
        self.compressor = Compressor(CompressOptions(**spec), device=device)
        # Decode with the very model that was loaded, whatever name it goes by.
        self.decompressor = Decompressor(model=model, device=device)
        loaded = self.compressor.model
        settings = self.compressor.model_settings()
        super().__init__(
            name=loaded.name,
            label=model_label(loaded.name),
            compress=self._compress,
            decompress=self.decompressor.decompress,
            identity={"fingerprint": loaded.fingerprint, "engine": settings["engine"], "coder": settings["coder"],
                      "chunk_tokens": settings["chunk_tokens"], "batch_size": settings["batch_size"],
                      "xz_fallback": xz_fallback, **({"online": settings["online"]} if "online" in settings else {})},
            kind="model",
            parameters=loaded.parameters,
            model_bytes=loaded.size_bytes,
            device=device_description(device, threads),
            spec=spec,
        )
        self._summary = None

    def _compress(self, data: bytes) -> bytes:
        output = io.BytesIO()
        self._summary = self.compressor.copy_stream(io.BytesIO(data), output, content_size=len(data))
        return output.getvalue()

    def summary(self):
        return self._summary


def codec_from_spec(spec: dict) -> Codec:
    """The compressor a Codec's `spec` describes, built on this machine (a Ray worker)."""
    if "baseline" in spec:
        codec = baseline(spec["baseline"])
        if codec is None:
            raise BenchError(f"the {spec['baseline']} baseline is not installed on this machine")
        return codec
    return ModelCodec(spec["model"], **{name: value for name, value in spec.items() if name != "model"})


def model_label(name: str) -> str:
    """A built-in model's name, or the last part of a model's path."""
    return Path(name).name or name


# -- devices ------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description(threads: int) -> str:
    return f"{cpu_name()}, {threads} thread{'s' if threads != 1 else ''}"


def device_description(device: str, threads: int | None = None) -> str:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description(threads or torch.get_num_threads())


# -- inputs -------------------------------------------------------------------------------------


@dataclass
class Input:
    path: Path
    name: str  # file name without a storage .xz suffix
    corpus: str  # the directory it was found in


def collect_inputs(paths: list[str]) -> list[Input]:
    """Files named directly, and every file under each directory named (hidden ones skipped)."""
    inputs = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
            inputs += [Input(p, _stored_name(p), path.resolve().name) for p in found]
        elif path.is_file():
            inputs.append(Input(path, _stored_name(path), path.resolve().parent.name))
        else:
            raise BenchError(f"{given}: no such file or directory")
    unique = {}
    for item in inputs:  # a file named twice (alone and in its directory) is measured once
        unique.setdefault(item.path.resolve(), item)
    return list(unique.values())


def _stored_name(path: Path) -> str:
    return path.name[:-3] if path.name.endswith(".xz") else path.name


def read_input(path: Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes, the first `max_bytes` of them if given; `.xz` files are decompressed in memory."""
    limit = -1 if max_bytes is None else max_bytes
    if path.name.endswith(".xz"):
        decompressor = lzma.LZMADecompressor()
        data = decompressor.decompress(path.read_bytes(), max_length=limit)
        return data if max_bytes is None else data[:max_bytes]
    with open(path, "rb") as stream:
        return stream.read(limit)


def _file_size(path: Path) -> int | None:
    """The uncompressed size of a file (read from the xz index for .xz files)."""
    if not path.name.endswith(".xz"):
        return path.stat().st_size
    try:
        with lzma.open(path) as stream:
            return stream.seek(0, io.SEEK_END)
    except lzma.LZMAError:
        return None


# -- measuring ----------------------------------------------------------------------------------


def measure(codec: Codec, data: bytes, repeat: int = 1) -> dict:
    """Compress, decompress and compare; sizes, cross-entropy and throughput of the round trip.

    With `repeat` > 1 the round trip runs that many times, each one verified, and the fastest
    compression and decompression are kept: on a shared machine the fastest run is the one least
    disturbed by other work.
    """
    compress_seconds, decompress_seconds, verified = [], [], True
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        compressed = codec.compress(data)
        middle = time.perf_counter()
        restored = codec.decompress(compressed)
        end = time.perf_counter()
        compress_seconds.append(middle - start)
        decompress_seconds.append(end - middle)
        verified = verified and restored == data
    row = {
        "raw_bytes": len(data),
        "compressed_bytes": len(compressed),
        "verified": verified,
        "compress_seconds": min(compress_seconds),
        "decompress_seconds": min(decompress_seconds),
        "cross_entropy_bits": None,
        "model_coded_bytes": None,
        "tokens": None,
        "online_saved_bits": None,
    }
    summary = codec.summary()
    if summary is not None:
        # The model-coded payloads at their ideal length, everything else at its real length.
        row["cross_entropy_bits"] = summary.model_bits + 8 * (len(compressed) - summary.model_payload_bytes)
        row["model_coded_bytes"] = summary.model_raw_bytes
        row["tokens"] = summary.tokens
        row["online_saved_bits"] = summary.model_alone_bits - summary.model_bits  # what learning from the file saved
    return row


def derive(row: dict, codec_parameters: int = 0, model_bytes: int = 0) -> dict:
    """Rates from the sizes and times of a row (also used for corpus totals)."""
    raw, compressed = row["raw_bytes"], row["compressed_bytes"]
    row["bits_per_byte"] = 8 * compressed / raw if raw else None
    row["cross_entropy_bits_per_byte"] = (row["cross_entropy_bits"] / raw
                                          if raw and row.get("cross_entropy_bits") is not None else None)
    row["online_saved_bits_per_byte"] = (row["online_saved_bits"] / raw
                                         if raw and row.get("online_saved_bits") is not None else None)
    row["compression_ratio"] = raw / compressed if compressed else None
    row["size_adjusted_ratio"] = (compressed + model_bytes) / raw if raw else None
    row["compress_bytes_per_second"] = raw / row["compress_seconds"] if row["compress_seconds"] > 0 else None
    row["decompress_bytes_per_second"] = raw / row["decompress_seconds"] if row["decompress_seconds"] > 0 else None
    row["parameters"] = codec_parameters
    row["model_bytes"] = model_bytes
    return row


class Cache:
    """Measurements on disk, keyed by data, compressor settings and device."""

    def __init__(self, path: Path | None, *, read: bool = True):
        self.path = path
        self.entries: dict = {}
        if path is not None and read and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:
                self.entries = {}  # a damaged cache only costs a re-run

    @staticmethod
    def key(data_sha256: str, codec: Codec, repeat: int = 1, *, device: str | None = None) -> str:
        """`device`: where the measurement ran, when that was not where `codec` was made (a Ray worker)."""
        fields = {"data": data_sha256, "codec": codec.name, "identity": codec.identity,
                  "device": codec.device if device is None else device}
        if repeat > 1:  # single runs keep the keys they always had
            fields["repeat"] = repeat
        material = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, row: dict) -> None:
        self.entries[key] = row
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".partial")
        temporary.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        os.replace(temporary, self.path)


ROW_FIELDS = [
    "scope", "corpus", "file", "compressor", "kind", "raw_bytes", "compressed_bytes", "bits_per_byte",
    "cross_entropy_bits_per_byte", "compression_ratio", "size_adjusted_ratio", "compress_bytes_per_second",
    "decompress_bytes_per_second", "compress_seconds", "decompress_seconds", "parameters", "model_bytes",
    "model_coded_bytes", "tokens", "verified", "device", "cached", "sha256", "note", "online_saved_bits_per_byte",
]


@dataclass
class Results:
    rows: list[dict] = field(default_factory=list)  # scope "file", "corpus", "all" or "published"
    codecs: list[Codec] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def file_rows(self) -> list[dict]:
        return [row for row in self.rows if row["scope"] == "file"]

    @property
    def all_verified(self) -> bool:
        return all(row["verified"] for row in self.rows if row["scope"] == "file")


def split_shards(data: bytes, shard_bytes: int | None) -> list[bytes]:
    """`data` cut into shards of at most `shard_bytes`, each measured as its own llmzip stream.

    Shards are about equal; a cut falls just after the line end nearest to an even share (never
    further back than half a share), else on the start of a UTF-8 character, so no cut splits a
    character and text is cut where a chunk would rather end than mid-word. The cut depends on
    the bytes alone, so every compressor, and a local and a Ray run, measure the same shards.
    The shards' streams written one after another are a valid .llmz file of the whole input, and
    a file's row is the exact sum of its shards' rows.
    """
    if not shard_bytes or len(data) <= shard_bytes:
        return [data]
    shards, start = [], 0
    count = -(-len(data) // max(1, shard_bytes - shard_bytes // 16))  # room to move a cut to a line end
    while len(data) - start > shard_bytes:
        # Near an even share of what is left, so that the last shard is rarely a scrap.
        share = start + min(shard_bytes, -(-(len(data) - start) // max(1, count - len(shards))))
        limit = start + shard_bytes
        before = data.rfind(b"\n", (start + share) // 2, share) + 1
        after = data.find(b"\n", share, limit) + 1
        cut = min((c for c in (before, after) if c), key=lambda c: abs(c - share), default=0)
        if cut == 0:
            cut = share
            while cut > start + 1 and data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte
                cut -= 1
        shards.append(data[start:cut])
        start = cut
    shards.append(data[start:])
    return shards


@dataclass
class Job:
    """One measurement: a shard of one input with one compressor."""

    input_index: int
    codec: Codec
    shard_index: int
    shard_count: int
    data: bytes | None  # dropped once handed to an executor
    sha256: str
    key: str  # the cache key as planned, with the driver's description of the device
    repeat: int = 1
    measured: dict | None = None
    device: str = ""  # where it ran
    cached: bool = False


class LocalExecutor:
    """Measures jobs one after another in this process, in the order they are planned."""

    def run(self, jobs):
        for job in jobs:
            job.measured = measure(job.codec, job.data, job.repeat)
            job.device, job.data = job.codec.device, None
            yield job


def run_benchmark(inputs: list[Input], codecs: list[Codec], *, max_bytes: int | None = None, cache: Cache | None = None,
                  progress: bool | None = None, repeat: int = 1, shard_bytes: int | None = None,
                  executor=None) -> Results:
    """Measure every codec on every input (the fastest of `repeat` round trips); cached rows are reused.

    With `shard_bytes`, each input is cut by `split_shards` and every shard is measured on its
    own; a file's row sums its shards. `executor` runs the measurements that the cache does not
    hold: by default here, one after another; `cluster.RayExecutor` runs them as Ray tasks and
    hands them back as they finish, in any order. Rows come out in the same order either way.
    """
    from tqdm import tqdm

    cache = cache or Cache(None)
    executor = executor or LocalExecutor()
    results = Results(codecs=list(codecs), settings={"max_bytes": max_bytes, "repeat": repeat})
    if shard_bytes:
        results.settings["shard_bytes"] = shard_bytes
    bar = tqdm(total=len(inputs) * len(codecs), unit="run", leave=False, file=sys.stderr,
               disable=progress is False or (progress is None and not sys.stderr.isatty()))
    # Without a terminal for the bar (a log, CI), one line per finished measurement instead.
    lines = progress is not False and bar.disable
    files: list[tuple[str, int]] = []  # per input: sha256 and length of the measured bytes
    shards: dict[tuple[int, int], list[Job]] = {}  # (input, codec) -> its jobs, in shard order
    finished = 0

    def report(job: Job) -> None:
        nonlocal finished
        finished += 1
        bar.update(1)
        if lines:
            item = inputs[job.input_index]
            part = f" shard {job.shard_index + 1}/{job.shard_count}" if job.shard_count > 1 else ""
            verified = job.measured["verified"]
            bits = f"{_number(8 * job.measured['compressed_bytes'] / job.measured['raw_bytes'])} bits/byte" \
                if verified and job.measured["raw_bytes"] else ("FAILED" if not verified else "empty")
            print(f"llmzip bench: [{finished}/{bar.total}] {item.name}{part} {job.codec.label}: {bits}"
                  + (" (cached)" if job.cached else ""), file=sys.stderr, flush=True)

    def planned():
        """The jobs the cache cannot answer, one input read at a time (a local run holds one in memory)."""
        for input_index, item in enumerate(inputs):
            data = read_input(item.path, max_bytes)
            files.append((hashlib.sha256(data).hexdigest(), len(data)))
            input_shards = split_shards(data, shard_bytes)
            bar.total += (len(input_shards) - 1) * len(codecs)
            digests = [files[-1][0]] if len(input_shards) == 1 else [hashlib.sha256(shard).hexdigest()
                                                                      for shard in input_shards]
            for codec_index, codec in enumerate(codecs):
                bar.set_description(f"{item.name} {codec.label}"[:40])
                jobs = shards[input_index, codec_index] = []
                for shard_index, (shard, digest) in enumerate(zip(input_shards, digests)):
                    job = Job(input_index, codec, shard_index, len(input_shards), shard, digest,
                              cache.key(digest, codec, repeat), repeat)
                    jobs.append(job)
                    cached = cache.get(job.key)
                    if cached is None:
                        yield job
                    else:
                        job.measured, job.device, job.cached, job.data = cached, codec.device, True, None
                        report(job)

    measured = executor.run(planned())
    try:
        for job in measured:
            key = job.key if job.device == job.codec.device else cache.key(job.sha256, job.codec, repeat,
                                                                            device=job.device)
            cache.put(key, job.measured)
            report(job)
    finally:
        measured.close()  # now, not when the traceback lets go of it: an executor cancels what is still running
        bar.close()
    for codec_index, codec in enumerate(codecs):  # where the workers ran, when that is not here
        devices = {job.device for (_, index), jobs in shards.items() if index == codec_index for job in jobs}
        if len(devices) == 1:
            codec.device = devices.pop()
    for input_index, item in enumerate(inputs):
        digest, length = files[input_index]
        for codec_index, codec in enumerate(codecs):
            jobs = shards[input_index, codec_index]
            row = derive(_sum_shards([job.measured for job in jobs]), codec.parameters, codec.model_bytes)
            note = f"sum of {len(jobs)} shards of at most {shard_bytes:,} bytes" if len(jobs) > 1 else ""
            row.update(scope="file", corpus=item.corpus, file=item.name, compressor=codec.label, kind=codec.kind,
                       device=" / ".join(sorted({job.device for job in jobs})), cached=all(job.cached for job in jobs),
                       sha256=digest, note=note)
            results.rows.append(row)
        results.rows += _published_rows(item, length)
    results.rows += _total_rows(results)
    return results


def _sum_shards(rows: list[dict]) -> dict:
    """One row for a whole file from its shards' rows: bytes, bits and seconds add up."""
    if len(rows) == 1:
        return dict(rows[0])
    total = {name: sum(row[name] for row in rows)
             for name in ("raw_bytes", "compressed_bytes", "compress_seconds", "decompress_seconds")}
    total["verified"] = all(row["verified"] for row in rows)
    for name in ("cross_entropy_bits", "model_coded_bytes", "tokens", "online_saved_bits"):
        values = [row.get(name) for row in rows]
        total[name] = sum(values) if all(value is not None for value in values) else None
    return total


def _published_rows(item: Input, measured_bytes: int) -> list[dict]:
    rows = []
    for figure in PUBLISHED:
        if item.name != figure["file"] or _file_size(item.path) != figure["raw_bytes"]:
            continue
        note = (f"published figure for the whole file ({figure['raw_bytes']} bytes), not measured here: "
                f"{figure['source']}")
        if measured_bytes != figure["raw_bytes"]:
            note += f"; the measured rows use only the first {measured_bytes} bytes"
        row = {name: None for name in ROW_FIELDS}
        row.update(scope="published", corpus=item.corpus, file=item.name, compressor=PUBLISHED_LABEL, kind="published",
                   raw_bytes=figure["raw_bytes"], bits_per_byte=figure["bits_per_byte"], verified=None, cached=False,
                   note=note)
        rows.append(row)
    return rows


def _total_rows(results: Results) -> list[dict]:
    """Sums per corpus (with more than one file) and over everything (with more than one corpus)."""
    files = results.file_rows()
    corpora = list(dict.fromkeys(row["corpus"] for row in files))
    scopes = [("corpus", corpus, [row for row in files if row["corpus"] == corpus]) for corpus in corpora]
    scopes = [scope for scope in scopes if len({row["file"] for row in scope[2]}) > 1]
    if len(corpora) > 1:
        scopes.append(("all", "all", files))
    totals = []
    for scope, corpus, members in scopes:
        for codec in results.codecs:
            rows = [row for row in members if row["compressor"] == codec.label]
            if not rows:
                continue
            total = {name: sum(row[name] for row in rows) for name in
                     ("raw_bytes", "compressed_bytes", "compress_seconds", "decompress_seconds")}
            known = [row["cross_entropy_bits"] for row in rows]
            total["cross_entropy_bits"] = sum(known) if all(value is not None for value in known) else None
            saved = [row.get("online_saved_bits") for row in rows]
            total["online_saved_bits"] = sum(saved) if all(value is not None for value in saved) else None
            total = derive(total, codec.parameters, codec.model_bytes)
            for name in ("model_coded_bytes", "tokens"):
                values = [row[name] for row in rows]
                total[name] = sum(values) if all(value is not None for value in values) else None
            total.update(scope=scope, corpus=corpus, file=f"{len(rows)} files", compressor=codec.label, kind=codec.kind,
                         verified=all(row["verified"] for row in rows), device=codec.device,
                         cached=all(row["cached"] for row in rows), sha256="", note="")
            totals.append(total)
    return totals


# -- reports ------------------------------------------------------------------------------------


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _rate(value) -> str:
    if value is None:
        return "–"
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if value < 1000 or unit == "GB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


def _parameters(value) -> str:
    if not value:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _label(row: dict) -> str:
    if row["scope"] == "corpus":
        return f"**{row['corpus']}** ({row['file']})"
    if row["scope"] == "all":
        return f"**all** ({row['file']})"
    return row["file"]


def _bits_value(row: dict | None) -> str:
    if row is None:
        return "–"
    if row["scope"] != "published" and not row["verified"]:
        return "FAILED"
    return _number(row["bits_per_byte"])


def markdown_report(results: Results) -> str:
    codecs = results.codecs
    labels = [codec.label for codec in codecs]
    published = [row for row in results.rows if row["scope"] == "published"]
    columns = labels + ([PUBLISHED_LABEL] if published else [])
    devices = list(dict.fromkeys(codec.device for codec in codecs if codec.kind == "model"))
    lines = ["# llmzip benchmark", ""]
    lines.append(f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d')} with llmzip {_version()}. "
                 f"Models ran on {', '.join(devices) or '–'}; classical compressors on {cpu_description(1)}.")
    if results.settings.get("max_bytes"):
        lines.append(f"Each file was cut to its first {results.settings['max_bytes']:,} bytes (--max-bytes).")
    if (results.settings.get("repeat") or 1) > 1:
        lines.append(f"Throughput is the fastest of {results.settings['repeat']} round trips (--repeat), "
                     "each verified.")
    if results.settings.get("shard_bytes"):
        lines.append(f"Files longer than {results.settings['shard_bytes']:,} bytes were measured in shards of at "
                     "most that size (--shard-bytes), each its own stream; a file's row is the sum of its shards' "
                     "rows.")
    if results.settings.get("xz_fallback") is False:
        lines.append("Models coded every text chunk themselves (--model-only): no chunk fell back to xz.")
    lines += ["", "## Bits per byte (lower is better)", ""]
    lines.append("| file | bytes | " + " | ".join(columns) + " |")
    lines.append("|---|---:|" + "---:|" * len(columns))
    for scope_row in _ordered_scopes(results):
        cells = []
        for label in labels:
            match = next((row for row in results.rows if _same_scope(row, scope_row) and row["compressor"] == label),
                         None)
            cells.append(_bits_value(match))
        if published:
            match = next((row for row in published if scope_row["scope"] == "file" and row["file"] == scope_row["file"]
                          and row["corpus"] == scope_row["corpus"]), None)
            cells.append(_bits_value(match) + ("*" if match else ""))
        lines.append(f"| {_label(scope_row)} | {_number(scope_row['raw_bytes'])} | " + " | ".join(cells) + " |")
    if published:
        lines += ["", "\\* published by its author for the whole file (https://bellard.org/ts_zip/), "
                  "not measured here; every other number was measured in this run."]
    lines += ["", "## Details", ""]
    header = ["file", "compressor", "raw bytes", "compressed bytes", "bits/byte", "cross-entropy bits/byte",
              "ratio (raw/compressed)", "size-adjusted (compressed+model)/raw", "compress", "decompress",
              "parameters", "decode verified", "online model saved (bits/byte)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|---|" + "---:|" * (len(header) - 3) + "---|")
    for row in _ordered_detail_rows(results):
        if row["scope"] == "published":
            lines.append(f"| {row['file']} | {row['compressor']} | {_number(row['raw_bytes'])} | – | "
                         f"{_number(row['bits_per_byte'])} | – | – | – | – | – | – | not measured | – |")
            continue
        lines.append("| " + " | ".join([
            _label(row), row["compressor"], _number(row["raw_bytes"]), _number(row["compressed_bytes"]),
            _number(row["bits_per_byte"]), _number(row["cross_entropy_bits_per_byte"]),
            _number(row["compression_ratio"], 2), _number(row["size_adjusted_ratio"], 3),
            _rate(row["compress_bytes_per_second"]), _rate(row["decompress_bytes_per_second"]),
            _parameters(row["parameters"]), _number(row["verified"]) + (" (cached)" if row["cached"] else ""),
            _number(row.get("online_saved_bits_per_byte")),
        ]) + " |")
    lines += ["", "## What the columns mean", "",
              "- **bits/byte**: 8 × compressed bytes / raw bytes, from a real compression whose output was "
              "decompressed and compared with the original (decode verified).",
              "- **cross-entropy bits/byte** (models): (Σ −log2 p over the tokens the model coded + 8 × every other "
              "byte of the compressed file — header, framing, chunks kept raw or as xz) / raw bytes: the size with an "
              "ideal entropy coder.",
              "- **online model saved** (models): (Σ −log2 p under the model's rows alone − Σ −log2 p under the rows "
              "mixed with the online model) / raw bytes, over the model-coded tokens: what learning from the file "
              "itself saved; 0 where the encoder left the online model out (the file was no smaller with it).",
              "- **ratio**: raw bytes / compressed bytes.",
              "- **size-adjusted**: (compressed bytes + model bytes) / raw bytes; model bytes are the model's files "
              "on disk. Classical compressors count no model.",
              "- **compress / decompress**: raw bytes per second of one run (the fastest with --repeat); loading the "
              "model is excluded, setting up the decoder's engine is included (as in `llmzip -d`); classical "
              "compressors on one thread.",
              "- Totals (**bold**) add bytes and seconds over the files of a corpus.", ""]
    return "\n".join(lines)


def _version() -> str:
    from . import __version__

    return __version__


def _same_scope(row: dict, scope_row: dict) -> bool:
    return (row["scope"] == scope_row["scope"] and row["corpus"] == scope_row["corpus"]
            and row["file"] == scope_row["file"])


def _ordered_scopes(results: Results) -> list[dict]:
    """One representative row per table line: files by corpus, each corpus's total, then the grand total."""
    seen, ordered = set(), []
    measured = [row for row in results.rows if row["scope"] in ("file", "corpus", "all")]
    corpora = list(dict.fromkeys(row["corpus"] for row in results.file_rows()))
    for corpus in corpora + ["all"]:
        for scope in ("file", "corpus", "all"):
            for row in measured:
                key = (row["scope"], row["corpus"], row["file"])
                if row["scope"] == scope and row["corpus"] == corpus and key not in seen:
                    seen.add(key)
                    ordered.append(row)
    return ordered


def _ordered_detail_rows(results: Results) -> list[dict]:
    ordered = []
    for scope_row in _ordered_scopes(results):
        ordered += [row for row in results.rows if _same_scope(row, scope_row)]
        ordered += [row for row in results.rows if row["scope"] == "published" and scope_row["scope"] == "file"
                    and row["file"] == scope_row["file"] and row["corpus"] == scope_row["corpus"]]
    return ordered


def write_csv(results: Results, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in _ordered_detail_rows(results):
            writer.writerow({name: "" if row.get(name) is None else row.get(name) for name in ROW_FIELDS})


def write_json(results: Results, path: Path) -> None:
    document = {
        "llmzip": _version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": results.settings,
        "compressors": [{"label": codec.label, "name": codec.name, "kind": codec.kind, "parameters": codec.parameters,
                         "model_bytes": codec.model_bytes, "device": codec.device, "identity": codec.identity}
                        for codec in results.codecs],
        "definitions": {
            "bits_per_byte": "8 * compressed_bytes / raw_bytes, decode verified",
            "cross_entropy_bits_per_byte": "(sum of -log2 p over model-coded tokens + 8 * all other bytes of the "
                                           "compressed file) / raw_bytes",
            "compression_ratio": "raw_bytes / compressed_bytes",
            "size_adjusted_ratio": "(compressed_bytes + model_bytes) / raw_bytes",
        },
        "rows": [{name: row.get(name) for name in ROW_FIELDS} for row in _ordered_detail_rows(results)],
    }
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# -- plots --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _colour(pyplot, index: int):
    """The same colour for a compressor in every plot: its place in the list of compressors."""
    return pyplot.get_cmap("tab10")(index % 10)


def plot_bits_per_byte(results: Results, path: Path) -> None:
    """Grouped bars: bits per byte of each file (and corpus total) for each compressor."""
    pyplot = _pyplot()
    scopes = _ordered_scopes(results)
    labels = [codec.label for codec in results.codecs]
    published = [row for row in results.rows if row["scope"] == "published"]
    series = labels + ([PUBLISHED_LABEL] if published else [])
    width = 0.8 / max(len(series), 1)
    width_inches = min(18.0, max(7.0, 2.5 + len(scopes) * (0.2 + 0.1 * len(series))))
    figure, axes = pyplot.subplots(figsize=(width_inches, 5.0))
    for index, label in enumerate(series):
        heights = []
        for scope_row in scopes:
            if label == PUBLISHED_LABEL:
                match = next((row for row in published if scope_row["scope"] == "file"
                              and row["file"] == scope_row["file"] and row["corpus"] == scope_row["corpus"]), None)
            else:
                match = next((row for row in results.rows if _same_scope(row, scope_row) and row["compressor"] == label
                              and row["verified"]), None)
            heights.append(match["bits_per_byte"] if match else float("nan"))
        positions = [position + (index - (len(series) - 1) / 2) * width for position in range(len(scopes))]
        axes.bar(positions, heights, width, label=label, color=_colour(pyplot, index),
                 hatch="//" if label == PUBLISHED_LABEL else None,
                 edgecolor="white" if label == PUBLISHED_LABEL else None)
    axes.set_xticks(range(len(scopes)))
    axes.set_xticklabels([_label(row).replace("**", "") for row in scopes], rotation=30, ha="right")
    axes.set_ylabel("bits per byte (lower is better)")
    axes.set_title("Compressed size per file")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def plot_scaling(results: Results, path: Path) -> None:
    """Bits per byte over all files against parameter count; classical compressors as lines."""
    pyplot = _pyplot()
    overall = _overall_rows(results)
    figure, axes = pyplot.subplots(figsize=(8.0, 4.5))
    models = [(codec, overall.get(codec.label)) for codec in results.codecs if codec.kind == "model"]
    models = [(codec, row) for codec, row in models if row is not None and row["verified"]]
    if models:
        axes.plot([codec.parameters for codec, _ in models], [row["bits_per_byte"] for _, row in models], "o-",
                  color="black", label="llmzip models")
        for codec, row in models:
            axes.annotate(codec.label, (codec.parameters, row["bits_per_byte"]), textcoords="offset points",
                          xytext=(5, 5), fontsize="small")
        low, high = min(codec.parameters for codec, _ in models), max(codec.parameters for codec, _ in models)
        axes.set_xlim(low / 3, high * 3)
    else:
        axes.set_xlim(1e5, 1e9)
    axes.set_xscale("log")
    for index, codec in enumerate(results.codecs):
        row = overall.get(codec.label)
        if codec.kind != "model" and row is not None and row["verified"]:
            axes.axhline(row["bits_per_byte"], linestyle="--", color=_colour(pyplot, index), label=codec.label)
    axes.margins(y=0.15)
    axes.set_xlabel("model parameters")
    axes.set_ylabel("bits per byte over all files (lower is better)")
    axes.set_title("Scaling: bits per byte against model size")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def _overall_rows(results: Results) -> dict[str, dict]:
    """Per compressor, the row covering every file: the grand total, a corpus total or the single file."""
    rows = {}
    for scope in ("file", "corpus", "all"):  # later scopes cover more, so they win
        candidates = [row for row in results.rows if row["scope"] == scope]
        if scope == "file" and len({(row["corpus"], row["file"]) for row in candidates}) != 1:
            continue
        if scope == "corpus" and len({row["corpus"] for row in candidates}) != 1:
            continue
        for row in candidates:
            rows[row["compressor"]] = row
    return rows


# -- command line -------------------------------------------------------------------------------


def add_bench_arguments(parser) -> None:
    parser.description = ("Measure bits per byte of llmzip models and classical compressors on files and corpora "
                          "(directories); every result is decompressed and compared with the original.")
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR", help="files, or directories of files (.xz files are "
                        "decompressed in memory first)")
    parser.add_argument("--models", metavar="M1,M2", default=None,
                        help="models to measure: built-in names or paths, comma-separated "
                             "(default: the levels' models that are installed, llmzip-tiny and smollm2; '' for none)")
    parser.add_argument("--baselines", metavar="NAMES", default=DEFAULT_BASELINES,
                        help=f"classical compressors (default {DEFAULT_BASELINES}; cmix only when on PATH; "
                             "'' for none)")
    parser.add_argument("--max-bytes", type=int, metavar="N", help="measure only the first N bytes of each file")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each round trip N times and report the fastest (default 1)")
    parser.add_argument("--out", metavar="DIR", default="bench-results",
                        help="where results.md, results.csv, results.json, the plots and cache.json go "
                             "(default ./bench-results)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu or cuda for the models (default: cuda when available)")
    parser.add_argument("--engine", choices=("auto", "exact", "float"), default="auto", help="inference engine")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="chunks coded together (default 16)")
    parser.add_argument("--chunk-tokens", type=int, metavar="N", help="tokens per chunk (default: the model's context)")
    parser.add_argument("-T", "--threads", type=int, metavar="N", help="CPU threads for inference")
    parser.add_argument("--model-only", dest="xz_fallback", action="store_false",
                        help="code every text chunk with the model's own rows, even where xz would be smaller")
    parser.add_argument("--no-online", dest="online", action="store_false", default=None,
                        help="models do not learn from each file while coding it (no online model)")
    parser.add_argument("--no-cache", action="store_true", help="measure everything again (the cache is rewritten)")
    parser.add_argument("--shard-bytes", type=int, metavar="N",
                        help="measure each file in shards of at most N bytes (cut at line ends), each its own "
                             "stream; a file's row sums its shards. Shards of one file run in parallel with --ray")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run the measurements as tasks on the Ray cluster at ADDRESS (host:port), or on a local "
                             "cluster started for the run when no ADDRESS is given (needs pip install 'llmzip[ray]')")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("-q", "--quiet", action="store_true", help="no table on standard output, no progress bar")


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def codecs_from_arguments(args) -> list[Codec]:
    from . import models

    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.models is None:
        model_names = models.level_models_installed()
        if not model_names:
            raise BenchError("no built-in model is installed; pass --models PATH[,PATH...] (or --models '' to "
                             "measure the classical compressors only)")
    else:
        model_names = _names(args.models)
    codecs: list[Codec] = []
    for name in model_names:
        codecs.append(ModelCodec(name, device=args.device, engine=args.engine, batch_size=args.batch_size,
                                 chunk_tokens=args.chunk_tokens, threads=args.threads,
                                 xz_fallback=args.xz_fallback, online=args.online))
    for name in _names(args.baselines):
        try:
            codec = baseline(name)
        except BenchError as error:
            if args.baselines != DEFAULT_BASELINES:
                raise  # asked for by name
            print(f"llmzip bench: skipping {name}: {error}", file=sys.stderr)  # a default without its package
            continue
        if codec is not None:
            codecs.append(codec)
    labels = [codec.label for codec in codecs]
    for index, codec in enumerate(codecs):
        if labels.count(codec.label) > 1:
            codec.label = f"{codec.label} #{labels[: index + 1].count(codec.label)}"
    if not codecs:
        raise BenchError("nothing to measure: no models and no baselines")
    return codecs


def run_bench(args) -> int:
    if args.max_bytes is not None and args.max_bytes < 1:
        raise BenchError("--max-bytes must be at least 1")
    if args.repeat < 1:
        raise BenchError("--repeat must be at least 1")
    if args.shard_bytes is not None and args.shard_bytes < 1:
        raise BenchError("--shard-bytes must be at least 1")
    inputs = collect_inputs(args.paths)
    if not inputs:
        raise BenchError("no files found in " + ", ".join(args.paths))
    if args.ray is None:
        return _report(args, _measure(args, inputs, None))
    from . import cluster

    with cluster.session(args.ray or None) as connection:
        # Each task runs on as many CPUs as its threads, and the codecs made here for their cache
        # keys describe the same thread count as the workers will.
        args.threads = args.threads or 1
        return _report(args, _measure(args, inputs, cluster.RayExecutor(connection, threads=args.threads,
                                                                           gpu=_wants_gpu(args.device))))


def _wants_gpu(device: str | None) -> bool:
    return device is not None and device.startswith("cuda")


def _measure(args, inputs: list[Input], executor) -> tuple[Results, Path]:
    codecs = codecs_from_arguments(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(out / "cache.json", read=not args.no_cache)
    results = run_benchmark(inputs, codecs, max_bytes=args.max_bytes, cache=cache,
                            progress=False if args.quiet else None, repeat=args.repeat, shard_bytes=args.shard_bytes,
                            executor=executor)
    return results, out


def _report(args, measured: tuple[Results, Path]) -> int:
    results, out = measured
    results.settings["xz_fallback"] = args.xz_fallback
    report = markdown_report(results)
    (out / "results.md").write_text(report, encoding="utf-8")
    write_csv(results, out / "results.csv")
    write_json(results, out / "results.json")
    if not args.no_plots:
        try:
            plot_bits_per_byte(results, out / "bits_per_byte.png")
            plot_scaling(results, out / "scaling.png")
        except ImportError as error:
            if not (error.name or "").startswith("matplotlib"):
                raise
            print("llmzip bench: no plots: they need matplotlib (pip install 'llmzip[bench]'); "
                  "the tables are written", file=sys.stderr)
    if not args.quiet:
        print(report)
        print(f"llmzip bench: results in {out}/", file=sys.stderr)
    if not results.all_verified:
        failed = sorted({f"{row['file']} ({row['compressor']})" for row in results.file_rows() if not row["verified"]})
        print("llmzip bench: decoded data differed from the original for " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


__all__ = ["BASELINES", "Codec", "ModelCodec", "PUBLISHED", "add_bench_arguments", "baseline", "collect_inputs",
           "markdown_report", "measure", "plot_bits_per_byte", "plot_scaling", "read_input", "run_bench",
           "run_benchmark"]
