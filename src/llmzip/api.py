"""The Python API, shaped like the standard library's gzip and lzma modules."""

from __future__ import annotations

import builtins
import io
import json
import os
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable

from . import coder, container, models
from . import online as online_model
from .container import CHUNK_NAMES, EndRecord
from .errors import CorruptError, EngineMismatchError, FormatError, LLMZipError, ModelError
from .record import ModelRecord
from .stream import LOCKSTEP_CHUNKS, StreamDecoder, StreamEncoder, Summary, lockstep_limit, online_unit_chunks

DEFAULT_BATCH_SIZE = 16  # chunks per group
DEFAULT_CHUNK_TOKENS = 1023  # for a model named by path: longer chunks slow every decoding step
MAX_CHUNK_TOKENS = 8191  # the longest a level uses (SmolLM2's context less one)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str) -> str:
    """`device` if this machine has it; a clear error instead of torch's assertion otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise LLMZipError(f"unknown device {device!r}; use cpu or cuda") from None
    if parsed.type not in ("cpu", "cuda"):
        raise LLMZipError(f"device {device!r} is not supported; use cpu or cuda")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise LLMZipError(f"device {device!r} is not available (this torch has no CUDA support, or no GPU is visible); "
                          "use cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise LLMZipError(f"device {device!r} is not available: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def _check_options(level: int, engine: str, batch_size: int | None) -> None:
    if not 1 <= level <= 9:
        raise ValueError("level must be between 1 and 9")
    if engine not in ("auto", "exact", "float"):
        raise ValueError("engine must be 'auto', 'exact' or 'float'")
    if batch_size is not None and not 1 <= batch_size <= container.MAX_GROUP_CHUNKS:
        raise ValueError(f"batch_size must be between 1 and {container.MAX_GROUP_CHUNKS}")


@dataclass(frozen=True)
class CompressOptions:
    """How to compress: the one set of settings the API, the command line, bench and explain share."""

    model: str | None = None  # a built-in name or a path; None: the level's model
    level: int = models.DEFAULT_LEVEL  # 1-9: the model and chunk length (models.LEVELS)
    engine: str = "auto"  # auto (exact where the model has one), exact or float
    device: str | None = None  # cpu, cuda[:N]; None: cuda when available
    chunk_tokens: int | None = None  # None: the level's (or the usual) chunk length
    # Chunks per group; None: DEFAULT_BATCH_SIZE, or at level 1 as many as the decoder holds in
    # lockstep (models.LOCKSTEP_GROUP_LEVELS).
    batch_size: int | None = None
    threads: int | None = None  # CPU threads; results do not depend on it with the exact engine
    xz_fallback: bool = True  # False: model-code all text (--model-only), the model's own code alone
    # Learn from the file while coding it (online.py). None: on with an exact engine unless
    # xz_fallback is False; the float engine has no online model.
    online: bool | None = None


class Compressor:
    """Holds a loaded model and its settings; reuse it, since loading is the expensive part.

    Not safe to share across threads: give each thread its own Compressor (models are cached
    and shared read-only between them).
    """

    def __init__(self, options: CompressOptions | None = None, **settings):
        """Settings as a CompressOptions, or as its fields by keyword (they override `options`)."""
        self.options = options = replace(options or CompressOptions(), **settings)
        model, level, engine, device = options.model, options.level, options.engine, options.device
        chunk_tokens, batch_size, threads = options.chunk_tokens, options.batch_size, options.threads
        xz_fallback, online = options.xz_fallback, options.online
        _check_options(level, engine, batch_size)
        device = _default_device() if device is None else _check_device(device)
        self.model = models.load_model(model or models.model_for_level(level))
        limit = min(self.model.context_length - 1, MAX_CHUNK_TOKENS)
        if chunk_tokens is None:  # the level's choice for its own model, else the usual length
            level_chunk = models.chunk_tokens_for_level(level) if model is None else None
            chunk_tokens = min(limit, level_chunk or DEFAULT_CHUNK_TOKENS)
        if chunk_tokens is not None and not 1 <= chunk_tokens <= limit:
            raise LLMZipError(f"chunk tokens must be between 1 and {limit} for model '{self.model.name}' (its context "
                              f"less one, and at most {MAX_CHUNK_TOKENS}), not {chunk_tokens}")
        self.chunk_tokens = limit if chunk_tokens is None else chunk_tokens
        exact = None if engine == "auto" else engine == "exact"
        self.engine = self.model.engine(exact=exact, device=device, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                        threads=threads)
        if batch_size is None:
            lockstep_groups = model is None and level in models.LOCKSTEP_GROUP_LEVELS and self.engine.batch_invariant
            batch_size = (lockstep_limit(self.engine, self.chunk_tokens, LOCKSTEP_CHUNKS) if lockstep_groups
                          else DEFAULT_BATCH_SIZE)
        self.batch_size = batch_size
        self.xz_fallback = xz_fallback
        if online and not self.engine.batch_invariant:
            raise LLMZipError("the online model needs the exact engine (its rows are integers)")
        self.online = self.engine.batch_invariant and (xz_fallback if online is None else online)

    def model_record(self) -> ModelRecord:
        """Everything the decoder needs to reproduce the model's predictions."""
        online = None
        if self.online:
            online = online_model.online_settings(online_unit_chunks(self.engine, self.chunk_tokens, self.batch_size),
                                                  online_model.fold_steps_for(self.chunk_tokens),
                                                  online_model.version_for(self.model.parameters))
        return ModelRecord(
            model={
                "name": self.model.name,
                "source": self.model.source,
                "fingerprint": self.model.fingerprint,
                "parameters": self.model.parameters,
                **({"origin": self.model.origin} if self.model.origin else {}),
            },
            engine=self.engine.settings,
            coder=coder.CODER_SETTINGS,
            vocab_size=self.engine.vocab_size,
            start_token=self.engine.start_token,
            chunk_tokens=self.chunk_tokens,
            batch_size=self.batch_size,
            online=online,
        )

    def model_settings(self) -> dict:
        """The model record as the JSON the file holds."""
        return self.model_record().to_json()

    def stream_writer(self, destination: BinaryIO, *, content_size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> StreamEncoder:
        return StreamEncoder(destination, header={"content_size": content_size}, record=self.model_record(),
                             tokenizer=self.model.tokenizer,
                             engine=self.engine, chunk_tokens=self.chunk_tokens, batch_size=self.batch_size,
                             xz_fallback=self.xz_fallback, progress=progress)

    def copy_stream(self, source: BinaryIO, destination: BinaryIO, *, content_size: int | None = None,
                    progress: Callable[[int], None] | None = None) -> Summary:
        writer = self.stream_writer(destination, content_size=content_size, progress=progress)
        while block := source.read(1 << 20):
            writer.write(block)
        summary = writer.close()
        summary.compressed_size = destination.tell() if destination.seekable() else 0
        return summary

    def compress(self, data: bytes) -> bytes:
        output = io.BytesIO()
        self.copy_stream(io.BytesIO(data), output, content_size=len(data))
        return output.getvalue()


class Decompressor:
    """Decodes llmzip data; keeps the models it loaded for the next file."""

    def __init__(self, *, model: str | None = None, device: str | None = None):
        self.model_override = model
        self.device = None if device is None else _check_device(device)
        self._engines: dict[str, tuple] = {}  # model record -> (engine, tokenizer), reused across files

    def _engine_for(self, record: ModelRecord):
        key = json.dumps(record.to_json(), sort_keys=True)
        if key not in self._engines:
            self._engines[key] = self._build_engine(record)
        return self._engines[key]

    def _build_engine(self, record: ModelRecord):
        if record.coder != coder.CODER_SETTINGS:
            raise FormatError(f"the file uses a coder this llmzip does not have ({record.coder}); upgrade llmzip")
        try:
            # The user's --model names a path; a file's record only names a model.
            model = (models.load_model(self.model_override) if self.model_override
                     else models.load_named_model(record.model_name))
        except ModelError as error:
            raise ModelError(f"{models.describe_missing(record.model)} ({error})") from None
        if model.fingerprint != record.fingerprint:
            raise ModelError(
                f"model '{model.name}' (sha256 {model.fingerprint[:12]}…) is not the one this file was made with; "
                + models.describe_missing(record.model)
            )
        if record.chunk_tokens > model.context_length - 1:
            raise CorruptError("the model record is damaged (chunks longer than the model's context)")
        settings = record.engine
        if settings.get("kind") == "exact":
            version = settings.get("version") if type(settings.get("version")) is int else None
            engine = model.engine(exact=True, device=self.device or _default_device(), version=version)
            if engine.settings != settings:
                raise EngineMismatchError(
                    f"the file was made with exact engine settings {settings}, this llmzip has {engine.settings}; "
                    "use the llmzip version that made it"
                )
        elif settings.get("kind") == "float":
            device, threads = settings.get("device", "cpu"), settings.get("threads")
            # Checked before the engine exists: building it moves the shared, cached model to `device`.
            if device not in ("cpu", "cuda") or device != "cpu" and _default_device() != device:
                raise EngineMismatchError(f"this file was made with the float engine on device {device!r}, which this "
                                          "machine does not have; decode it where it was made")
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
                raise CorruptError("the model record is damaged (engine threads)")
            if threads > max(64, 4 * (os.cpu_count() or 1)):  # thousands of threads would crawl, not decode
                raise EngineMismatchError(f"this file was made with the float engine on {threads} threads, far more "
                                          f"than this machine's {os.cpu_count()} cores; decode it on a machine like "
                                          "the one that made it")
            engine = model.engine(exact=False, device=device, batch_size=record.batch_size, threads=threads)
            engine.check_machine(settings)
        else:
            raise FormatError(f"the file uses an engine this llmzip does not have ({settings.get('kind')}); "
                              "upgrade llmzip")
        if engine.vocab_size != record.vocab_size or engine.start_token != record.start_token:
            raise ModelError("the model's vocabulary does not match the file; " + models.describe_missing(record.model))
        return engine, model.tokenizer

    def stream_reader(self, source: BinaryIO) -> StreamDecoder:
        return StreamDecoder(source, container.read_header(source), self._engine_for)

    def copy_stream(self, source: BinaryIO, destination: BinaryIO, *,
                    progress: Callable[[int], None] | None = None) -> int:
        size = 0
        for block in self.stream_reader(source):
            destination.write(block)
            size += len(block)
            if progress is not None:
                progress(len(block))
        return size

    def decompress(self, data: bytes) -> bytes:
        output = io.BytesIO()
        self.copy_stream(io.BytesIO(data), output)
        return output.getvalue()


def write_empty_stream(destination: BinaryIO, *, content_size: int | None = 0) -> Summary:
    """The stream a Compressor writes for empty input, written without loading any model:
    it holds no chunk, so no model record either."""
    summary = StreamEncoder(destination, header={"content_size": content_size}, record=None, tokenizer=None,
                            engine=None, chunk_tokens=1, batch_size=1).close()
    summary.compressed_size = destination.tell() if destination.seekable() else 0
    return summary


def compress(data: bytes, *, model: str | None = None, level: int = models.DEFAULT_LEVEL, engine: str = "auto",
             device: str | None = None, chunk_tokens: int | None = None, batch_size: int | None = None,
             xz_fallback: bool = True, online: bool | None = None) -> bytes:
    """Compress `data` in one call; see Compressor for the options. Empty data loads no model."""
    if not data:
        _check_options(level, engine, batch_size)
        output = io.BytesIO()
        write_empty_stream(output)
        return output.getvalue()
    options = CompressOptions(model=model, level=level, engine=engine, device=device, chunk_tokens=chunk_tokens,
                              batch_size=batch_size, xz_fallback=xz_fallback, online=online)
    return Compressor(options).compress(bytes(data))


def decompress(data: bytes, *, model: str | None = None, device: str | None = None) -> bytes:
    """Decompress llmzip data: concatenated streams give the concatenation of their contents,
    like gzip.decompress. Raises EOFError (TruncatedError) when the data was cut short."""
    return Decompressor(model=model, device=device).decompress(bytes(data))


@dataclass
class Info:
    header: dict
    model_settings: dict | None  # None when no chunk needed a model
    content_size: int
    compressed_size: int
    chunks: dict
    model_tokens: int
    streams: int = 1  # llmzip streams written one after another, described together

    @property
    def bits_per_byte(self) -> float:
        return 8 * self.compressed_size / self.content_size if self.content_size else 0.0

    @property
    def ratio(self) -> float:
        return self.compressed_size / self.content_size if self.content_size else 0.0


def info(data: bytes | BinaryIO) -> Info:
    """What a file holds, read from its header and records without decoding (no model needed).

    Concatenated streams are described as one: sizes and chunks are summed over them, and
    `model_settings` is the first model record found.
    """
    source = _CountingReader(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
    header = next_header = container.read_header(source)
    model_settings = None
    chunks = {name: 0 for name in CHUNK_NAMES.values()}
    model_tokens = content_size = streams = 0
    while next_header is not None:
        streams += 1
        version = next_header["format_version"]
        while not isinstance(record := container.read_record(source, container.MAX_GROUP_CHUNKS, version), EndRecord):
            if isinstance(record, dict):
                model_settings = model_settings or record
                continue
            for chunk in record:
                chunks[CHUNK_NAMES[chunk.kind]] += 1
                model_tokens += chunk.token_count
        content_size += record.content_size
        next_header = container.read_next_header(source)
    return Info(header, model_settings, content_size, source.bytes_read, chunks, model_tokens, streams)


class _CountingReader:
    """A source that counts the bytes read from it: a pipe cannot tell() how much it gave."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.bytes_read += len(data)
        return data


class LLMZipFile(io.BufferedIOBase):
    """A file object that compresses on write or decompresses on read, like gzip.GzipFile."""

    def __init__(self, filename, mode: str = "rb", *, model: str | None = None, level: int = models.DEFAULT_LEVEL,
                 device: str | None = None, **options):
        super().__init__()
        if mode not in ("r", "rb", "w", "wb", "x", "xb", "a", "ab"):
            raise ValueError(f"invalid mode {mode!r}")
        if mode.startswith("a"):
            raise ValueError("appending to an llmzip file is not supported")
        binary_mode = mode[0] + "b"
        self._owns_file = isinstance(filename, (str, bytes, os.PathLike))
        self._file = builtins.open(filename, binary_mode) if self._owns_file else filename
        self._reading = mode.startswith("r")
        if self._reading:
            self._blocks = iter(Decompressor(model=model, device=device).stream_reader(self._file))
            self._buffer = b""
        else:
            self._writer = Compressor(model=model, level=level, device=device, **options).stream_writer(self._file)

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return not self._reading

    def read(self, size: int | None = -1) -> bytes:
        if not self._reading:
            raise io.UnsupportedOperation("not opened for reading")
        while size is None or size < 0 or len(self._buffer) < size:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buffer += block
        if size is None or size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def write(self, data) -> int:
        if self._reading:
            raise io.UnsupportedOperation("not opened for writing")
        data = bytes(data)
        self._writer.write(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._reading:
                self._writer.close()
        finally:
            if self._owns_file:
                self._file.close()
            super().close()


def open(filename, mode: str = "rb", *, model: str | None = None, level: int = models.DEFAULT_LEVEL,
         device: str | None = None, encoding: str | None = None, errors: str | None = None, newline: str | None = None,
         **options):
    """Open an llmzip file in binary ('rb', 'wb', 'xb') or text ('rt', 'wt', 'xt') mode."""
    if "t" in mode:
        binary = LLMZipFile(filename, mode.replace("t", ""), model=model, level=level, device=device, **options)
        return io.TextIOWrapper(binary, encoding, errors, newline)
    if encoding is not None or errors is not None or newline is not None:
        raise ValueError("encoding, errors and newline are for text mode only")
    return LLMZipFile(filename, mode, model=model, level=level, device=device, **options)


__all__ = ["Compressor", "Decompressor", "Info", "LLMZipError", "LLMZipFile", "compress", "decompress", "info", "open"]
