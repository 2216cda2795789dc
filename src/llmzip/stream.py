"""The stream pipeline: bytes -> chunks -> coded groups, and back.

The encoder (StreamEncoder) is a short pipeline:
- split: the input is read in blocks; a block that looks like text is cut into segments, text
  and raw runs (bytes the tokenizer has no token for, or a whole block that is not text); text is
  tokenised and cut into chunks of at most `chunk_tokens` tokens (`split_chunks`), each coded from
  a fresh context (the start token), so chunks are independent; chunks go in groups of up to
  `batch_size` (`split_groups`);
- code: a group's chunks share one batched model pass (`encode_chunks`), with the online model;
- choose: each group is written as its model chunks, or as one xz or stored chunk, whichever is
  smallest; each span (about a block of coded groups) as its groups or one xz chunk, so no input
  grows by more than the framing; and once per stream, the online model or the model alone,
  whichever writes less (StreamEncoder says when);
- write: groups in input order.

The decoder (StreamDecoder) reads the groups back and decodes their model chunks in lockstep
(`lockstep`). The encoder uses a full pass only when the engine proves the two identical
(batch_invariant), and otherwise walks the very same lockstep path with the same batch shapes;
with the online model, both mix its candidates into the rows through `OnlineModel.mix`.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np

from . import coder, container
from .container import CHUNK_MODEL, CHUNK_NAMES, CHUNK_STORED, CHUNK_XZ, ChunkRecord, EndRecord
from .errors import CorruptError
from .online import ROW_TOTAL_BITS, START_KEY, OnlineModel
from .record import ModelRecord

BLOCK_BYTES = 1 << 20  # input read per tokenisation; also the largest raw or xz chunk
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]  # what the decoder reads: an 8 MiB dictionary
# The encoder also tries xz's extreme search with the same dictionary and literal settings (the
# decoder reads both with _XZ_FILTERS) and keeps the smaller: raw LZMA2 as small as xz -9e's
# payload, without xz's 60 bytes of stream framing, keeps a file that falls back to xz whole no
# larger than xz -9e.
_XZ_ENCODER_FILTERS = ([{"id": lzma.FILTER_LZMA2, "preset": 6}],
                       [{"id": lzma.FILTER_LZMA2, "preset": 6 | lzma.PRESET_EXTREME}])
MIN_MODEL_PAYLOAD = 4  # the range coder ends every chunk of one token or more with at least one 32-bit word
# The exact engine decodes up to this many chunks of consecutive groups in lockstep, within a
# budget for their key/value caches (SmolLM2-135M in the GGUF engine needs ~25 MB per 1023-token chunk).
EXACT_ROW_TOTAL = 1 << ROW_TOTAL_BITS  # what every row of an exact engine sums to
LOCKSTEP_CHUNKS = 64
LOCKSTEP_CACHE_BYTES = 3 * 2**27  # 384 MiB


@dataclass
class Summary:
    content_size: int = 0
    compressed_size: int = 0
    model_bits: float = 0.0  # Σ −log2 p over model-coded tokens: the cross-entropy bound
    model_alone_bits: float = 0.0  # the same under the model's rows alone, without the online model
    model_payload_bytes: int = 0
    model_raw_bytes: int = 0
    tokens: int = 0
    chunks: dict = field(default_factory=lambda: {"model": 0, "stored": 0, "xz": 0})
    online_choice: OnlineChoice | None = None  # how the encoder chose whether to keep the online model

    def add(self, other: Summary) -> None:
        """Count what `other`'s model-coded chunks add (its chunk counts are counted where written)."""
        self.model_bits += other.model_bits
        self.model_alone_bits += other.model_alone_bits
        self.model_payload_bytes += other.model_payload_bytes
        self.model_raw_bytes += other.model_raw_bytes
        self.tokens += other.tokens


def looks_like_text(block: bytes) -> bool:
    """Text for a language model: valid UTF-8 almost everywhere and almost no NUL bytes."""
    if not block:
        return False
    if block.count(0) * 100 > len(block):
        return False
    text = block.decode("utf-8", errors="replace")
    return text.count("\ufffd") * 50 <= len(block)


def _raw_chunk(data: bytes) -> ChunkRecord:
    compressed = min((lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters) for filters in _XZ_ENCODER_FILTERS),
                     key=len)
    if len(compressed) < len(data):
        return ChunkRecord(CHUNK_XZ, len(data), 0, zlib.crc32(data), compressed)
    return ChunkRecord(CHUNK_STORED, len(data), 0, zlib.crc32(data), data)


# -- cutting ----------------------------------------------------------------------------------------

def split_chunks(items, chunk_size: int) -> list:
    """Tokens (or a raw run's bytes) cut into chunks of `chunk_size`, the last one shorter if need be.
    The one cut of the encoder and `explain`; the decoder reads chunk boundaries from the file."""
    return [items[start : start + chunk_size] for start in range(0, len(items), chunk_size)]


def split_groups(chunks: list, group_size: int) -> list[list]:
    """Chunks in order, cut into groups of `group_size`, the last one shorter if need be: the
    encoder's groups of `batch_size`, a group's model chunks in units of `unit_chunks`, the
    decoder's lockstep batches."""
    return split_chunks(chunks, group_size)


# -- lockstep ---------------------------------------------------------------------------------------

def lockstep(engine, lengths: list[int], token_at: Callable[[int, int], int], online: OnlineModel | None = None):
    """Walk chunks of these lengths one position at a time, one batched engine step per position:
    yields (step, weights (B, V), active chunks, predictions).

    Every chunk is fed at every step (the start token once it has finished), so the batch shape
    never depends on which chunks are done: encoder and decoder see the same computation. After
    each yield, `token_at(chunk, step)` gives the token the caller coded at that position. With an
    online model (the unit begun by the caller), every active chunk predicts before the step is
    yielded, `predictions` holding the active chunks' (candidates, match lengths), and observes its token after:
    the order of the file's rule. `engine` None walks the online model alone (weights None): the
    encoder's walk, whose rows come from a full pass.
    """
    session = None if engine is None else engine.start(len(lengths))
    feed = None if engine is None else np.full(len(lengths), engine.start_token, dtype=np.int64)
    for step in range(max(lengths, default=0)):
        weights = session.advance(feed) if session is not None else None
        active = [chunk for chunk, length in enumerate(lengths) if step < length]
        predictions = online.predict_step(active, step) if online is not None else None
        yield step, weights, active, predictions
        tokens = [int(token_at(chunk, step)) for chunk in active]
        if online is not None:
            online.observe_step(active, step, tokens)
        if session is not None:
            feed = np.full(len(lengths), engine.start_token, dtype=np.int64)
            feed[active] = tokens


def _previous_tokens(tokens: np.ndarray, start: int, count: int) -> np.ndarray:
    """The token before each of positions start.. of a chunk (START_KEY before its first)."""
    if start > 0:
        return np.asarray(tokens[start - 1 : start + count - 1], dtype=np.int64)
    return np.concatenate([[START_KEY], tokens[: count - 1]]).astype(np.int64)


def _mix_encoder_rows(online: OnlineModel, chunk: int, start: int, rows: np.ndarray, candidates: np.ndarray,
                      match_lengths: np.ndarray, tokens: np.ndarray) -> None:
    """The online model's one probability path, encoder side: rows of positions start.. of one
    chunk (its tokens `tokens`), in order, mixed in place; each symbol is learnt from before the
    next row is mixed."""
    count = len(rows)
    online.mix(rows, np.full(count, chunk), candidates, match_lengths, tokens[start : start + count],
               steps=np.arange(start, start + count), previous=_previous_tokens(tokens, start, count))


def _mix_decoder_rows(online: OnlineModel, chunks: list[int], step: int, previous: np.ndarray, rows: np.ndarray,
                      candidates: np.ndarray, match_lengths: np.ndarray,
                      decode: Callable[[int, np.ndarray], int]) -> None:
    """The same path, decoder side: one row of each chunk in `chunks` at position `step`, after
    the tokens `previous`, mixed in place, its token decoded by `decode(i, row)`, then learnt
    from. A chunk's next row is mixed only at the next step, so learning after the step's rows
    are decoded is learning in the encoder's order."""
    mixed = online.mix(rows, np.asarray(chunks), candidates, match_lengths, steps=np.full(len(chunks), step),
                       previous=previous)
    symbols = np.array([decode(i, rows[i : i + 1]) for i in range(len(rows))], dtype=np.int64)
    online.learn_rows(np.asarray(chunks), *mixed, candidates, symbols, previous=previous, rows=rows)


def lockstep_limit(engine, chunk_tokens: int, most: int) -> int:
    """How many chunks of `chunk_tokens` tokens (at most `most`) the decoder holds in lockstep within
    its cache budget."""
    return max(1, min(most, LOCKSTEP_CACHE_BYTES // max(1, engine.cache_bytes(chunk_tokens))))


def online_unit_chunks(engine, chunk_tokens: int, batch_size: int) -> int:
    """The most chunks of an online unit: what the decoder can hold in lockstep within its cache
    budget, the group's chunks split evenly into as few units as that allows. Recorded in the
    file, so the units never depend on the decoding machine."""
    units = -(-batch_size // lockstep_limit(engine, chunk_tokens, batch_size))
    return -(-batch_size // units)


# -- coding chunks ------------------------------------------------------------------------------

class _ChunkEncoder:
    """One chunk's range encoder and code lengths (with and without the online model), fed its rows in
    order; with `code_alone`, a second range encoder codes the chunk under the model's rows alone."""

    def __init__(self, index: int, token_bits: list | None, code_alone: bool = False):
        self.index, self.token_bits = index, token_bits
        self.encoder = coder.Encoder()
        self.alone_encoder = coder.Encoder() if code_alone else None
        self.bits = self.alone_bits = 0.0

    def encode(self, start: int, symbols: np.ndarray, rows: np.ndarray, alone: np.ndarray | None = None,
               total: int | None = None) -> None:
        """Code the tokens at positions start.. under their rows (float64 rows are coded as they are);
        `alone`: their bits under the model's rows alone; `total`: every row's sum, when known."""
        bits = coder.code_length_bits(symbols, rows, total)
        alone = bits if alone is None else alone
        self.bits += float(bits.sum())
        self.alone_bits += float(alone.sum())
        if self.token_bits is not None:
            self.token_bits.append((self.index, start, bits, alone))
        self.encoder.encode(symbols, rows)

    def finish(self) -> tuple[bytes, float, float]:
        return self.encoder.finish(), self.bits, self.alone_bits


def encode_chunks(engine, token_lists: list[np.ndarray], online: OnlineModel | None = None,
                  token_bits: list | None = None,
                  alone_payloads: list | None = None) -> list[tuple[bytes, float, float]]:
    """Each chunk's payload, its code length in bits and the model's own code length in bits
    (the same without the online model), coded together in one batch.

    With an online model the chunks are one or more units (see online.py), coded in order.
    `token_bits`, if given, receives (chunk, start, bits, bits alone) for the tokens of each
    chunk from `start` (for explain); `alone_payloads`, if given with an online model, each
    chunk's payload under the model's rows alone: the payload encode_chunks gives it without one.
    """
    if online is not None:
        results: list[tuple[bytes, float, float]] = []
        for unit in split_groups(token_lists, online.unit_chunks):
            results += _encode_unit(engine, unit, online, token_bits, len(results), alone_payloads)
        return results
    encoders = [_ChunkEncoder(index, token_bits) for index in range(len(token_lists))]
    if engine.batch_invariant:  # one full pass, coded piece by piece as its rows arrive
        floats = coder.FloatRows()
        for index, start, weights in engine.sequence_pieces(token_lists):
            encoders[index].encode(start, token_lists[index][start : start + len(weights)], floats.convert(weights),
                                   total=EXACT_ROW_TOTAL)
    else:
        lengths = [len(tokens) for tokens in token_lists]
        for step, weights, active, _ in lockstep(engine, lengths, lambda chunk, step: token_lists[chunk][step]):
            for chunk in active:
                encoders[chunk].encode(step, token_lists[chunk][step : step + 1], weights[chunk : chunk + 1])
    return [encoder.finish() for encoder in encoders]


def _encode_unit(engine, token_lists: list[np.ndarray], online: OnlineModel, token_bits: list | None,
                 first: int, alone_payloads: list | None = None) -> list[tuple[bytes, float, float]]:
    """One unit with the online model. Its candidates depend on tokens only, so the unit is
    walked in lockstep first, exactly as the decoder will walk it; the full pass's rows then
    arrive in pieces of the fold's steps, every chunk's piece at one start before the next start,
    and the secondary estimates, which see their own chunk's positions as they come and the other
    chunks' at each fold, follow them in order (version 1: whole chunks, no fold)."""
    if not engine.batch_invariant:
        raise ValueError("the online model needs an exact engine")
    lengths = [len(tokens) for tokens in token_lists]
    online.begin_unit(lengths)
    candidates = [np.full(length, -1, dtype=np.int64) for length in lengths]
    match_lengths = [np.zeros(length, dtype=np.int64) for length in lengths]
    walk = lockstep(None, lengths, lambda chunk, step: token_lists[chunk][step], online)
    for step, _, active, (step_candidates, step_lengths) in walk:
        for chunk, candidate, length in zip(active, step_candidates.tolist(), step_lengths.tolist()):
            candidates[chunk][step], match_lengths[chunk][step] = candidate, length
    code_alone = alone_payloads is not None
    encoders = [_ChunkEncoder(first + index, token_bits, code_alone) for index in range(len(token_lists))]
    floats = coder.FloatRows()
    if online.fold_steps:
        pieces = engine.sequence_pieces(token_lists, online.fold_steps, step_major=True)
    else:
        pieces = engine.sequence_pieces(token_lists)
    for index, start, weights in pieces:
        online.begin_step(start)
        positions = slice(start, start + len(weights))
        symbols = token_lists[index][positions]
        rows = floats.convert(weights)  # mixed in place: the engine's rows are not needed again
        alone = coder.code_length_bits(symbols, rows, EXACT_ROW_TOTAL)
        if code_alone:  # before the rows are mixed
            encoders[index].alone_encoder.encode(symbols, rows)
        _mix_encoder_rows(online, index, start, rows, candidates[index][positions], match_lengths[index][positions],
                          token_lists[index])
        encoders[index].encode(start, symbols, rows, alone, EXACT_ROW_TOTAL)
    online.end_unit()
    if alone_payloads is not None:
        alone_payloads += [encoder.alone_encoder.finish() for encoder in encoders]
    return [encoder.finish() for encoder in encoders]


def decode_chunks(engine, records: list[ChunkRecord]) -> list[np.ndarray]:
    """The tokens of model chunks coded without an online model, decoded together in lockstep."""
    decoders = [coder.Decoder(record.payload) for record in records]
    decoded = [np.empty(record.token_count, dtype=np.int64) for record in records]
    lengths = [record.token_count for record in records]
    for step, weights, active, _ in lockstep(engine, lengths, lambda chunk, step: decoded[chunk][step]):
        for chunk in active:
            decoded[chunk][step] = _decode_one(decoders[chunk], weights[chunk : chunk + 1])
    return decoded


def decode_units(engine, records: list[ChunkRecord], online: OnlineModel) -> list[np.ndarray]:
    """The tokens of a group's model chunks coded with an online model: its units, in order.
    Unlike decode_chunks, the result depends on the online model's state as well."""
    decoded: list[np.ndarray] = []
    for unit in split_groups(records, online.unit_chunks):
        decoded += _decode_unit(engine, unit, online)
    return decoded


def _decode_unit(engine, records: list[ChunkRecord], online: OnlineModel) -> list[np.ndarray]:
    """One unit in lockstep: at each step every chunk predicts, then every chunk's token is
    decoded under its mixed row and learnt from, then every chunk observes: _encode_unit's order."""
    decoders = [coder.Decoder(record.payload) for record in records]
    lengths = [record.token_count for record in records]
    decoded = [np.empty(length, dtype=np.int64) for length in lengths]
    online.begin_unit(lengths)
    floats = coder.FloatRows()  # one buffer for every step's rows: a fresh one each step costs page faults
    for step, weights, active, predictions in lockstep(engine, lengths, lambda chunk, step: decoded[chunk][step],
                                                       online):

        def decode(offset: int, row: np.ndarray) -> int:
            chunk = active[offset]
            decoded[chunk][step] = token = _decode_one(decoders[chunk], row)
            return token

        candidates, match_lengths = predictions
        online.begin_step(step)
        rows = weights if len(active) == len(weights) else weights[active]  # mixed in place: not needed again
        previous = np.array([decoded[chunk][step - 1] if step else START_KEY for chunk in active], dtype=np.int64)
        _mix_decoder_rows(online, active, step, previous, floats.convert(rows), candidates, match_lengths, decode)
    online.end_unit()
    return decoded


def _decode_one(decoder: coder.Decoder, row: np.ndarray) -> int:
    try:
        return int(decoder.decode(row)[0])
    except AssertionError:  # how constriction refuses data that no encoder could have written
        raise CorruptError("a model-coded chunk is damaged (invalid range-coder data)") from None


# -- the encoder ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OnlineChoice:
    """How the encoder chose between the online model and the model alone for a stream: both
    coded the stream's first `input_bytes` bytes of input, and wrote these many bytes each
    (groups and model record, the header and end record aside)."""

    input_bytes: int
    with_online: int
    alone: int

    @property
    def kept(self) -> bool:
        """Whether the online model was kept: only when it made the stream smaller."""
        return self.with_online < self.alone


class StreamEncoder:
    """Push bytes in with write(); coded groups go to `destination`; close() writes the end.

    The stages: split (`_take_block`, `_split_block`) and keep input order (`_take`) here; code
    a group, choose and write in a `_Coding` (`_code_group`, `_model_code`, `_model_wins`,
    `_end_span`, `_write_group`).

    With an online model and the xz fallback, the encoder also chooses, once per stream, whether
    the online model pays: two codings run side by side, one with it and one with the model
    alone, each writing to memory (the model alone reuses the rows the other computed: see
    `_Coding.alone_codes`). While their outputs are the same (xz and stored chunks only), they
    are written out and the choice waits. It is made at the end of the stream, or at the first
    point where their outputs differ once at least a block (BLOCK_BYTES) of input has come in
    since the last output written, so at most about a block of input waits for it: the smaller
    output is written (the model alone on a tie) and its coding goes on alone. A stream coded
    with the model alone has a model record without the online key and is the very stream
    `online=False` writes. Without the xz fallback (`--model-only`) nothing is chosen: an online
    model asked for is used.
    """

    def __init__(self, destination: BinaryIO, *, header: dict, record: ModelRecord | None, tokenizer, engine,
                 chunk_tokens: int, batch_size: int, xz_fallback: bool = True,
                 progress: Callable[[int], None] | None = None):
        """`record`: the model record (None for a stream that needs no model); with its `online`
        settings an online model learns from the coded tokens."""
        self.destination = destination
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.summary = Summary()
        self._hash = hashlib.sha256()
        self._buffer = bytearray()  # input not yet split
        # Waiting, in input order: text chunks or a raw run (never both); then, in each coding, its span.
        self._text: list[tuple[bytes, np.ndarray]] = []  # text chunks waiting for a full group
        self._raw_run = bytearray()  # bytes waiting to be kept raw or as xz
        container.write_header(destination, header)
        settings = None if record is None else record.to_json()  # written before the first model-coded group only
        online = OnlineModel(record.online) if record is not None and record.online is not None else None
        coding = dict(engine=engine, xz_fallback=xz_fallback)
        self._choice: OnlineChoice | None = None
        self._alone_codes: dict | None = None
        if online is None or not xz_fallback:
            self._codings = [_Coding(destination, settings, online, progress=progress, **coding)]
            return
        # The choice to make: with the online model, and the model alone, until one of them is chosen.
        self._alone_codes = {}
        self._codings = [
            _Coding(io.BytesIO(), settings, online, progress=progress, alone_codes=self._alone_codes, **coding),
            _Coding(io.BytesIO(), {key: value for key, value in settings.items() if key != "online"}, None,
                    alone_codes=self._alone_codes, **coding),
        ]
        self._taken = 0  # input bytes taken in so far
        self._taken_at_flush = 0  # ... when the codings' outputs were last written out (the same)
        self._flushed = 0  # bytes written out for both

    @property
    def online(self) -> OnlineModel | None:
        """The online model of the stream's coding (None once the model alone is chosen)."""
        return self._codings[0].online

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.summary.content_size += len(data)
        self._buffer += data
        while len(self._buffer) >= BLOCK_BYTES:
            self._take_block(final=False)

    def close(self) -> Summary:
        while self._buffer:
            self._take_block(final=True)
        self._end_text()
        self._end_raw_run()
        for coding in self._codings:
            coding.end_span()
        self._settle(final=True)
        container.write_end(self.destination, EndRecord(self.summary.content_size, self._hash.digest()))
        written = self._codings[0].summary
        self.summary.add(written)
        self.summary.chunks = dict(written.chunks)
        self.summary.online_choice = self._choice
        return self.summary

    # -- split: bytes -> blocks -> text chunks and raw runs

    def _take_block(self, final: bool) -> None:
        block = bytes(self._buffer[:BLOCK_BYTES])
        consumed = 0
        for raw, tokens in self._split_block(block, last=final and len(block) == len(self._buffer)):
            consumed += len(raw)
            self._take(raw, tokens)
        del self._buffer[:consumed]

    def _split_block(self, block: bytes, last: bool) -> Iterator[tuple[bytes, np.ndarray | None]]:
        """The block in input order as (bytes, their chunk's tokens), tokens None for bytes kept raw.
        Unless the block is the `last` of the input, its last text segment keeps back its last chunk
        (when it has several): those bytes are tokenised again with what follows, so chunks stay full."""
        if not looks_like_text(block):
            yield block, None
            return
        segments = self.tokenizer.segments(block)
        for index, (raw, tokens) in enumerate(segments):
            if tokens is None:  # bytes the tokenizer has no token for
                yield raw, None
                continue
            chunks = split_chunks(tokens, self.chunk_tokens)
            if index == len(segments) - 1 and not last and len(chunks) > 1:
                chunks.pop()
            for chunk in chunks:
                yield self.tokenizer.detokenize(chunk), chunk

    # -- keep input order: the one place where text chunks and raw bytes wait

    def _take(self, raw: bytes, tokens: np.ndarray | None) -> None:
        """The input's next text chunk, or bytes kept raw (tokens None). Text chunks wait for a
        full group, raw bytes for a block; either ends the other's wait, so groups are written in
        input order."""
        if tokens is None:
            self._end_text()
            self._raw_run += raw
            if len(self._raw_run) >= BLOCK_BYTES:
                self._end_raw_run()
            return
        self._end_raw_run()
        self._text.append((raw, tokens))
        if len(self._text) >= self.batch_size:
            self._end_text()

    def _end_text(self) -> None:
        """The waiting text chunks, one group, coded into each coding's span."""
        if not self._text:
            return
        group, self._text = self._text, []
        for coding in self._codings:  # the online model's first: the model alone reuses its rows
            coding.add_group(group)
        self._settle(taken=sum(len(raw) for raw, _ in group))

    def _end_raw_run(self) -> None:
        """The raw run, after the span before it, as stored or xz chunks of at most a block."""
        if not self._raw_run:
            return
        run, self._raw_run = bytes(self._raw_run), bytearray()
        for coding in self._codings:
            coding.add_raw_run(run)
        self._settle(taken=len(run))

    # -- choose: the online model or the model alone, once per stream

    def _settle(self, taken: int = 0, final: bool = False) -> None:
        """While the choice is open: write out what both codings wrote when it is the same, else
        choose when the stream ends or a block of input has come in since that was last done."""
        if len(self._codings) == 1:
            return
        self._alone_codes.clear()  # each group's rows are reused right away, or not at all
        self._taken += taken
        with_online, alone = (coding.destination for coding in self._codings)
        if with_online.tell() == alone.tell() and with_online.getvalue() == alone.getvalue():
            self.destination.write(with_online.getvalue())
            self._flushed += with_online.tell()
            self._taken_at_flush = self._taken
            for output in (with_online, alone):
                output.seek(0)
                output.truncate()
            if not final:
                return
        elif not final and self._taken - self._taken_at_flush < BLOCK_BYTES:
            return
        self._choice = OnlineChoice(self._taken, self._flushed + with_online.tell(), self._flushed + alone.tell())
        chosen = self._codings[0 if self._choice.kept else 1]
        self.destination.write(chosen.destination.getvalue())
        chosen.destination, chosen.progress, chosen.alone_codes = self.destination, self.progress, None
        self._codings, self._alone_codes = [chosen], None


class _Coding:
    """The encoder's stages after the split, for one way of coding the stream (the model with an
    online model, or alone): code a group, choose model chunks, xz or stored, write."""

    def __init__(self, destination: BinaryIO, model_settings: dict | None, online: OnlineModel | None, *, engine,
                 xz_fallback: bool, progress: Callable[[int], None] | None = None, alone_codes: dict | None = None):
        self.destination = destination
        self.model_settings = model_settings  # the record's JSON until it is written
        self.online = online
        self.engine = engine
        self.xz_fallback = xz_fallback  # off: every text chunk the model does not expand is model-coded
        self.progress = progress
        # While the encoder chooses: chunk tokens -> (payload, bits) under the model's rows alone. The
        # coding with the online model fills it from the rows it computes anyway; the one without
        # takes its payloads from it (an exact engine's rows do not depend on the batch), so the
        # model runs once.
        self.alone_codes = alone_codes
        self.summary = Summary()  # what this coding wrote
        self._span: list[tuple[list[ChunkRecord], Summary]] = []  # coded groups not yet written
        self._span_raw = bytearray()  # the input bytes those groups cover
        self._span_mark = None  # the online state before the span, if it becomes one xz chunk

    def add_group(self, group: list[tuple[bytes, np.ndarray]]) -> None:
        """A group of text chunks, coded into the span."""
        if self.online is not None and self._span_mark is None:
            self._span_mark = self.online.checkpoint()
        records, stats = self._code_group(group)
        self._add_to_span(records, stats, b"".join(raw for raw, _ in group))

    def add_raw_run(self, run: bytes) -> None:
        """A raw run, after the span before it, as stored or xz chunks of at most a block."""
        self.end_span()
        for data in split_chunks(run, BLOCK_BYTES):
            self._write_group([_raw_chunk(data)])

    # -- code a group: the model and the online model

    def _code_group(self, group: list[tuple[bytes, np.ndarray]]) -> tuple[list[ChunkRecord], Summary]:
        """The group's records, and what its model-coded chunks add to the summary."""
        group_bytes = b"".join(raw for raw, _ in group)
        xz = _raw_chunk(group_bytes) if self.xz_fallback else None
        if xz is not None and len(xz.payload) <= self._least_model_size(group):
            # xz already beats anything the model could write (a run of one byte, say): the choice
            # below would be this xz chunk whatever the model predicted, so it need not run.
            return [xz], Summary()
        mark = self.online.checkpoint() if self.online is not None else None
        coded, keep = self._model_code(group, mark)
        stats = Summary()
        records = []
        for (raw, tokens), (payload, bits, alone_bits), model_coded in zip(group, coded, keep):
            if model_coded:
                records.append(ChunkRecord(CHUNK_MODEL, len(raw), len(tokens), zlib.crc32(raw), payload))
                stats.model_bits += bits
                stats.model_alone_bits += alone_bits
                stats.model_payload_bytes += len(payload)
                stats.model_raw_bytes += len(raw)
                stats.tokens += len(tokens)
            else:
                records.append(_raw_chunk(raw))
        if not self._model_wins(records, xz):
            if mark is not None:
                self.online.rollback(mark)
            return [xz or _raw_chunk(group_bytes)], Summary()
        return records, stats

    def _model_code(self, group: list[tuple[bytes, np.ndarray]], mark) -> tuple[list, list[bool]]:
        """Each chunk's (payload, bits, bits alone) and whether it stays model-coded (the model does
        not expand it). The decoder batches only the model-coded chunks, and with an online model
        they form its units: they are coded again in that shape (with an online model, until none
        of them expands), the online state first rolled back to `mark`."""
        coded = self._encode([tokens for _, tokens in group])
        keep = [len(payload) < len(raw) for (raw, _), (payload, _, _) in zip(group, coded)]
        coded_together = [True] * len(group)
        while any(keep) and keep != coded_together and (self.online is not None or not self.engine.batch_invariant):
            if mark is not None:
                self.online.rollback(mark)
            kept = [tokens for (_, tokens), k in zip(group, keep) if k]
            recoded = iter(self._encode(kept))
            coded = [next(recoded) if k else result for result, k in zip(coded, keep)]
            coded_together = keep
            if self.online is None:
                break
            keep = [k and len(payload) < len(raw) for (raw, _), (payload, _, _), k in zip(group, coded, keep)]
        return coded, keep

    def _encode(self, token_lists: list[np.ndarray]) -> list[tuple[bytes, float, float]]:
        """encode_chunks, sharing the model's rows through `alone_codes` while the encoder chooses."""
        if self.alone_codes is None:
            return encode_chunks(self.engine, token_lists, self.online)
        if self.online is not None:
            alone_payloads: list[bytes] = []
            coded = encode_chunks(self.engine, token_lists, self.online, None, alone_payloads)
            for tokens, payload, (_, _, alone_bits) in zip(token_lists, alone_payloads, coded):
                self.alone_codes[tokens.tobytes()] = (payload, alone_bits)
            return coded
        known = [self.alone_codes.get(tokens.tobytes()) for tokens in token_lists]
        missing = [tokens for tokens, code in zip(token_lists, known) if code is None]
        fresh = iter(encode_chunks(self.engine, missing) if missing else [])
        return [next(fresh) if code is None else (code[0], code[1], code[1]) for code in known]

    # -- choose: model chunks, xz or stored

    def _model_wins(self, records: list[ChunkRecord], xz: ChunkRecord | None) -> bool:
        """Whether the group is written as coded (model chunks, the rest raw) rather than as one xz
        chunk: the bytes each writes, the chunk table included."""
        if not any(record.kind == CHUNK_MODEL for record in records):
            return False
        if xz is None:
            return True
        model_size = container.group_size(records)
        if self._model_record_due():  # the first model-coded group also pays for the model record
            model_size += container.model_record_size(self.model_settings)
        # xz wins on repetitive text that the chunk-by-chunk model cannot see as such
        return container.group_size([xz]) > model_size

    def _least_model_size(self, group: list[tuple[bytes, np.ndarray]]) -> int:
        """A lower bound of the payload bytes _model_wins charges the model for this group (its chunk
        table aside): each chunk costs at least one 32-bit word of range-coder payload, or its raw
        bytes if fewer."""
        least = sum(min(MIN_MODEL_PAYLOAD, len(raw)) for raw, _ in group)
        if self._model_record_due():
            least += container.model_record_size(self.model_settings)
        return least

    def _model_record_due(self) -> bool:
        return self.model_settings is not None and not any(
            record.kind == CHUNK_MODEL for records, _ in self._span for record in records
        )

    def _add_to_span(self, records: list[ChunkRecord], stats: Summary, raw: bytes) -> None:
        """Keep coded groups until about a block of input is covered, then write them or one xz chunk.

        xz over a whole span sees repetitions across chunks that neither the model, whose context
        ends at the chunk, nor xz over one group can use; the smaller of the two is written.
        """
        if not self.xz_fallback:
            self._span_mark = None
            if self.online is not None:
                self.online.commit()
            self._write_group(records, stats)
            return
        self._span.append((records, stats))
        self._span_raw += raw
        if self.progress is not None:
            self.progress(len(raw))
        if len(self._span_raw) >= BLOCK_BYTES:
            self.end_span()

    def end_span(self) -> None:
        """Write the span's groups, or one xz chunk in their place when that is smaller."""
        if not self._span:
            return
        span, raw = self._span, bytes(self._span_raw)
        coded_size = sum(container.group_size(records) for records, _ in span)
        if self.model_settings is not None and any(r.kind == CHUNK_MODEL for records, _ in span for r in records):
            coded_size += container.model_record_size(self.model_settings)
        xz = _raw_chunk(raw) if len(span) > 1 else None
        self._span, self._span_raw = [], bytearray()
        mark, self._span_mark = self._span_mark, None
        if xz is not None and container.group_size([xz]) < coded_size:
            if mark is not None:
                self.online.rollback(mark)  # the decoder will not see these units
            if self.online is not None:
                self.online.commit()
            self._write_group([xz], Summary(), report=False)
        else:
            if self.online is not None:
                self.online.commit()
            for records, stats in span:
                self._write_group(records, stats, report=False)

    # -- write

    def _write_group(self, records: list[ChunkRecord], stats: Summary | None = None, report: bool = True) -> None:
        if self.model_settings is not None and any(record.kind == CHUNK_MODEL for record in records):
            container.write_model_record(self.destination, self.model_settings)
            self.model_settings = None
        container.write_group(self.destination, records)
        for record in records:
            self.summary.chunks[CHUNK_NAMES[record.kind]] += 1
        if stats is not None:
            self.summary.add(stats)
        if report and self.progress is not None:
            self.progress(sum(record.raw_length for record in records))


# -- the decoder ------------------------------------------------------------------------------------

class StreamDecoder:
    """Reads llmzip streams and yields the original bytes, verifying every checksum.

    Streams written one after another (`llmzip -c a b > ab.llmz`) decode as the concatenation
    of their contents, like gzip members; anything else after an end record is an error.
    """

    def __init__(self, source: BinaryIO, header: dict, engine_for: Callable[[ModelRecord], tuple]):
        self.source = source
        self._engine_for = engine_for  # called once per stream, at its first model-coded chunk
        self._start_stream(header)

    def _start_stream(self, header: dict) -> None:
        self.header = header
        self._engine = None
        self._tokenizer = None
        self.record: ModelRecord | None = None  # the stream's model record, once read
        self._online: OnlineModel | None = None
        self.chunk_tokens = 0
        self.batch_size = container.MAX_GROUP_CHUNKS  # until the model record sets the stream's own limit

    def __iter__(self) -> Iterator[bytes]:
        while True:
            yield from self._decode_stream()
            header = container.read_next_header(self.source)
            if header is None:
                return
            self._start_stream(header)

    def _decode_stream(self) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        for records in self._groups():
            for data in self._decode_group(records):
                digest.update(data)
                size += len(data)
                yield data
        end = self._end
        if not end.matches(size, digest.digest()):
            raise CorruptError("the decoded data does not match the original's checksum; the file is damaged")

    def _groups(self) -> Iterator[list[ChunkRecord]]:
        """The chunk groups as written; with the exact engine and no online model, consecutive
        groups are joined or cut to the lockstep limit (with one, a group's units are its own).

        Exact rows do not depend on the batch, so decoding more (or fewer) chunks in lockstep than
        the encoder grouped changes no bit: more shares each step's fixed cost, and the limit keeps
        the key/value caches within their memory budget.
        """
        pending: list[ChunkRecord] = []
        while True:
            record = container.read_record(self.source, self.batch_size, self.header["format_version"])
            if isinstance(record, (EndRecord, dict)) and pending:
                yield pending
                pending = []
            if isinstance(record, EndRecord):
                self._end = record
                return
            if isinstance(record, dict):
                self._take_model_record(record)
                continue
            pending += record
            limit = 0 if self._online is not None else self._lockstep_limit()
            if not limit:  # not batch-invariant, or the online model's units: each group exactly as it was coded
                yield pending
                pending = []
            elif len(pending) >= limit:  # full batches now (a group larger than the budget is cut too)
                batches = split_groups(pending, limit)
                pending = batches.pop() if len(batches[-1]) < limit else []
                yield from batches

    def _lockstep_limit(self) -> int:
        """How many chunks to decode together: 0 (each group alone) unless the engine is exact."""
        if self.record is None or self.record.engine.get("kind") != "exact":
            return 0
        if self._engine is None:
            self._engine, self._tokenizer = self._engine_for(self.record)
        if not self._engine.batch_invariant:
            return 0
        return lockstep_limit(self._engine, self.chunk_tokens, LOCKSTEP_CHUNKS)

    def _take_model_record(self, settings: dict) -> None:
        if self.record is not None:
            raise CorruptError("the chunk stream is damaged (a second model record)")
        self.record = record = ModelRecord.from_json(settings)  # checks every field
        self.chunk_tokens = record.chunk_tokens
        self.batch_size = record.batch_size
        if record.online is not None:
            if record.engine.get("kind") != "exact":
                raise CorruptError("the model record is damaged (an online model needs the exact engine)")
            self._online = OnlineModel(record.online)  # refuses settings this llmzip does not have

    def _decode_group(self, records: list[ChunkRecord]) -> list[bytes]:
        model_records = [record for record in records if record.kind == CHUNK_MODEL]
        if model_records and self.record is None:
            raise CorruptError("the chunk stream is damaged (model-coded data before the model record)")
        for record in model_records:
            if not 0 < record.token_count <= self.chunk_tokens:
                raise CorruptError("the chunk stream is damaged (impossible token count)")
        decoded_tokens = iter(self._decode_model_chunks(model_records) if model_records else [])
        output = []
        for record in records:
            if record.kind == CHUNK_MODEL:
                data = self._tokenizer.detokenize(next(decoded_tokens).tolist())
            elif record.kind == CHUNK_STORED:
                data = record.payload
            else:
                data = _unxz(record)
            if len(data) != record.raw_length or zlib.crc32(data) != record.raw_crc32:
                raise CorruptError("a chunk decoded to the wrong bytes (checksum mismatch); the file is damaged")
            output.append(data)
        return output

    def _decode_model_chunks(self, records: list[ChunkRecord]) -> list[np.ndarray]:
        if self._engine is None:
            self._engine, self._tokenizer = self._engine_for(self.record)
        if self._online is not None:
            return decode_units(self._engine, records, self._online)
        return decode_chunks(self._engine, records)


def _unxz(record: ChunkRecord) -> bytes:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_XZ_FILTERS)
    try:
        data = decompressor.decompress(record.payload, max_length=record.raw_length + 1)
    except lzma.LZMAError:
        raise CorruptError("an xz chunk is damaged") from None
    return data
