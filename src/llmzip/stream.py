"""Streaming compression and decompression: bytes -> chunks -> coded groups, and back.

The input is read in blocks. A block that looks like text is tokenised and cut into chunks
of at most `chunk_tokens` tokens; each chunk is coded from a fresh context (the start token),
so chunks are independent. Chunks are coded in groups of up to `batch_size` that share one
batched model pass. A block that does not look like text (or a chunk the model would expand)
is kept raw or xz-compressed, whichever is smaller, so no input grows by more than the
framing.

The decoder walks each group with the incremental path; the encoder uses a full pass only
when the engine proves the two identical (batch_invariant), and otherwise walks the very same
incremental path with the same batch shapes.
"""

from __future__ import annotations

import hashlib
import lzma
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator

import numpy as np

from . import coder, container
from .container import CHUNK_MODEL, CHUNK_NAMES, CHUNK_STORED, CHUNK_XZ, ChunkRecord, EndRecord
from .errors import CorruptError
from .online import OnlineModel, mix_rows, unit_sizes
from .record import ModelRecord

BLOCK_BYTES = 1 << 20  # input read per tokenisation; also the largest raw or xz chunk
_XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]
MIN_MODEL_PAYLOAD = 4  # the range coder ends every chunk of one token or more with at least one 32-bit word


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


def looks_like_text(block: bytes) -> bool:
    """Text for a language model: valid UTF-8 almost everywhere and almost no NUL bytes."""
    if not block:
        return False
    if block.count(0) * 100 > len(block):
        return False
    text = block.decode("utf-8", errors="replace")
    return text.count("\ufffd") * 50 <= len(block)


def _raw_chunk(data: bytes) -> ChunkRecord:
    compressed = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_XZ_FILTERS)
    if len(compressed) < len(data):
        return ChunkRecord(CHUNK_XZ, len(data), 0, zlib.crc32(data), compressed)
    return ChunkRecord(CHUNK_STORED, len(data), 0, zlib.crc32(data), data)


class StreamEncoder:
    """Push bytes in with write(); coded groups go to `destination`; close() writes the end."""

    def __init__(self, destination: BinaryIO, *, header: dict, record: ModelRecord | None, tokenizer, engine,
                 chunk_tokens: int, batch_size: int, xz_fallback: bool = True,
                 progress: Callable[[int], None] | None = None):
        """`record`: the model record (None for a stream that needs no model); with its `online`
        settings an online model learns from the coded tokens."""
        self.destination = destination
        self.xz_fallback = xz_fallback  # off: every text chunk the model does not expand is model-coded
        # The record's JSON, written before the first model-coded group only.
        self.model_settings = None if record is None else record.to_json()
        self.tokenizer = tokenizer
        self.engine = engine
        self.chunk_tokens = chunk_tokens
        self.batch_size = batch_size
        self.progress = progress
        self.summary = Summary()
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._pending: list[tuple[bytes, np.ndarray]] = []  # text chunks waiting for a full group
        self._raw_run = bytearray()  # non-text bytes waiting to be kept raw or as xz
        self._held: list[tuple[list[ChunkRecord], Summary]] = []  # coded groups not yet written
        self._held_raw = bytearray()  # the input bytes those groups cover
        self.online = OnlineModel(record.online) if record is not None and record.online is not None else None
        self._held_mark = None  # the online state before the held groups, if they become one xz chunk
        container.write_header(destination, header)

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.summary.content_size += len(data)
        self._buffer += data
        while len(self._buffer) >= BLOCK_BYTES:
            self._take_block(final=False)

    def close(self) -> Summary:
        while self._buffer:
            self._take_block(final=True)
        self._flush_text(final=True)
        self._flush_raw()
        self._release_held()
        container.write_end(self.destination, EndRecord(self.summary.content_size, self._hash.digest()))
        return self.summary

    def _take_block(self, final: bool) -> None:
        block = bytes(self._buffer[:BLOCK_BYTES])
        if not looks_like_text(block):
            del self._buffer[: len(block)]
            self._keep_raw(block)
            return
        segments = self.tokenizer.segments(block)
        last_buffer = final and len(block) == len(self._buffer)
        consumed = 0
        for index, (raw, tokens) in enumerate(segments):
            if tokens is None:  # bytes the tokenizer has no token for
                self._keep_raw(raw)
                consumed += len(raw)
                continue
            self._flush_raw()
            pieces = [tokens[start : start + self.chunk_tokens] for start in range(0, len(tokens), self.chunk_tokens)]
            if index == len(segments) - 1 and not last_buffer and len(pieces) > 1:
                pieces.pop()  # its bytes are tokenised again with what follows, so chunks stay full
            for piece in pieces:
                piece_bytes = self.tokenizer.detokenize(piece)
                consumed += len(piece_bytes)
                self._pending.append((piece_bytes, piece))
        del self._buffer[:consumed]
        self._flush_text(final=False)

    def _keep_raw(self, data: bytes) -> None:
        self._flush_text(final=True)  # groups are written in input order
        self._raw_run += data
        if len(self._raw_run) >= BLOCK_BYTES:
            self._flush_raw()

    def _flush_raw(self) -> None:
        if self._raw_run:
            self._release_held()  # groups are written in input order
        while self._raw_run:
            data = bytes(self._raw_run[:BLOCK_BYTES])
            del self._raw_run[: len(data)]
            self._write_group([_raw_chunk(data)])

    def _flush_text(self, final: bool) -> None:
        while len(self._pending) >= self.batch_size or (final and self._pending):
            group, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            if self.online is not None and self._held_mark is None:
                self._held_mark = self.online.checkpoint()
            records, stats = self._code_group(group)
            self._hold(records, stats, b"".join(raw for raw, _ in group))

    def _code_group(self, group: list[tuple[bytes, np.ndarray]]) -> tuple[list[ChunkRecord], Summary]:
        """The group's records, and what its model-coded chunks add to the summary."""
        stats = Summary()
        fallback = _raw_chunk(b"".join(raw for raw, _ in group)) if self.xz_fallback else None
        if fallback is not None and len(fallback.payload) <= self._least_model_size(group):
            # xz already beats anything the model could write (a run of one byte, say): the choice
            # below would be this xz chunk whatever the model predicted, so it need not run.
            return [fallback], stats
        mark = self.online.checkpoint() if self.online is not None else None
        coded = encode_chunks(self.engine, [tokens for _, tokens in group], self.online)
        keep = [len(payload) < len(raw) for (raw, _), (payload, _, _) in zip(group, coded)]
        coded_together = [True] * len(group)
        # The decoder batches only the model-coded chunks, and with an online model they form its
        # units: code them again in that shape (with an online model, until none of them expands).
        while any(keep) and keep != coded_together and (self.online is not None or not self.engine.batch_invariant):
            if mark is not None:
                self.online.rollback(mark)
            kept = [tokens for (_, tokens), k in zip(group, keep) if k]
            recoded = iter(encode_chunks(self.engine, kept, self.online))
            coded = [next(recoded) if k else result for result, k in zip(coded, keep)]
            coded_together = keep
            if self.online is None:
                break
            keep = [k and len(payload) < len(raw) for (raw, _), (payload, _, _), k in zip(group, coded, keep)]
        if not any(keep):
            if mark is not None:
                self.online.rollback(mark)
            return [fallback or _raw_chunk(b"".join(raw for raw, _ in group))], stats
        if fallback is not None:
            model_size = sum(len(payload) for (payload, _, _), k in zip(coded, keep) if k)
            if self._model_record_due():  # the first model-coded group also pays for the model record
                model_size += container.model_record_size(self.model_settings)
            if len(fallback.payload) <= model_size + sum(len(raw) for (raw, _), k in zip(group, keep) if not k):
                if mark is not None:
                    self.online.rollback(mark)
                return [fallback], stats  # repetitive text that the chunk-by-chunk model cannot see as such
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
        return records, stats

    def _least_model_size(self, group: list[tuple[bytes, np.ndarray]]) -> int:
        """A lower bound of what _code_group charges the model for this group in its comparison: each
        chunk costs at least one 32-bit word of range-coder payload, or its raw bytes if fewer."""
        least = sum(min(MIN_MODEL_PAYLOAD, len(raw)) for raw, _ in group)
        if self._model_record_due():
            least += container.model_record_size(self.model_settings)
        return least

    def _model_record_due(self) -> bool:
        return self.model_settings is not None and not any(
            record.kind == CHUNK_MODEL for records, _ in self._held for record in records
        )

    def _hold(self, records: list[ChunkRecord], stats: Summary, raw: bytes) -> None:
        """Keep coded groups until about a block of input is covered, then write them or one xz chunk.

        xz over a whole block sees repetitions across chunks that neither the model, whose context
        ends at the chunk, nor xz over one group can use; the smaller of the two is written.
        """
        if not self.xz_fallback:
            self._held_mark = None
            if self.online is not None:
                self.online.commit()
            self._write_group(records, stats)
            return
        self._held.append((records, stats))
        self._held_raw += raw
        if self.progress is not None:
            self.progress(len(raw))
        if len(self._held_raw) >= BLOCK_BYTES:
            self._release_held()

    def _release_held(self) -> None:
        if not self._held:
            return
        held, raw = self._held, bytes(self._held_raw)
        coded_size = sum(container.group_size(records) for records, _ in held)
        if self.model_settings is not None and any(r.kind == CHUNK_MODEL for records, _ in held for r in records):
            coded_size += container.model_record_size(self.model_settings)
        fallback = _raw_chunk(raw) if len(held) > 1 else None
        self._held, self._held_raw = [], bytearray()
        mark, self._held_mark = self._held_mark, None
        if fallback is not None and container.group_size([fallback]) < coded_size:
            if mark is not None:
                self.online.rollback(mark)  # the decoder will not see these units
            if self.online is not None:
                self.online.commit()
            self._write_group([fallback], Summary(), report=False)
        else:
            if self.online is not None:
                self.online.commit()
            for records, stats in held:
                self._write_group(records, stats, report=False)

    def _write_group(self, records: list[ChunkRecord], stats: Summary | None = None, report: bool = True) -> None:
        if self.model_settings is not None and any(record.kind == CHUNK_MODEL for record in records):
            container.write_model_record(self.destination, self.model_settings)
            self.model_settings = None
        container.write_group(self.destination, records)
        for record in records:
            self.summary.chunks[CHUNK_NAMES[record.kind]] += 1
        if stats is not None:
            self.summary.model_bits += stats.model_bits
            self.summary.model_alone_bits += stats.model_alone_bits
            self.summary.model_payload_bytes += stats.model_payload_bytes
            self.summary.model_raw_bytes += stats.model_raw_bytes
            self.summary.tokens += stats.tokens
        if report and self.progress is not None:
            self.progress(sum(record.raw_length for record in records))


def encode_chunks(engine, token_lists: list[np.ndarray], online: OnlineModel | None = None,
                  token_bits: list | None = None) -> list[tuple[bytes, float, float]]:
    """Each chunk's payload, its code length in bits and the model's own code length in bits
    (the same without the online model), coded together in one batch.

    With an online model the chunks are one or more units (see online.py), coded in order, and
    `token_bits`, if given, receives each token's cost with and without it (for explain).
    """
    if online is not None:
        results = []
        start = 0
        for size in unit_sizes(len(token_lists), online.unit_chunks):
            results += _encode_unit(engine, token_lists[start : start + size], online, token_bits, start)
            start += size
        return results
    encoders = [coder.Encoder() for _ in token_lists]
    bits = [0.0] * len(token_lists)
    if engine.batch_invariant:  # one full pass, coded piece by piece as its rows arrive
        for index, start, weights in engine.sequence_pieces(token_lists):
            symbols = token_lists[index][start : start + len(weights)]
            bits[index] += float(coder.code_length_bits(symbols, weights).sum())
            encoders[index].encode(symbols, weights)
        return [(encoder.finish(), row_bits, row_bits) for encoder, row_bits in zip(encoders, bits)]
    lengths = [len(tokens) for tokens in token_lists]
    for step, weights, active in _lockstep(engine, lengths, lambda row, step: token_lists[row][step]):
        for row in active:
            symbol, row_weights = token_lists[row][step : step + 1], weights[row : row + 1]
            bits[row] += float(coder.code_length_bits(symbol, row_weights)[0])
            encoders[row].encode(symbol, row_weights)
    return [(encoder.finish(), row_bits, row_bits) for encoder, row_bits in zip(encoders, bits)]


def _encode_unit(engine, token_lists: list[np.ndarray], online: OnlineModel, token_bits: list | None = None,
                 first: int = 0) -> list[tuple[bytes, float, float]]:
    """One unit with the online model. Its token-only part (the match model) depends on no row,
    so it is walked first, step by step across the unit exactly as the decoder will; the full
    pass's rows then arrive chunk by chunk, and each chunk's secondary estimate, which sees only
    its own chunk within the unit, follows them in order."""
    if not engine.batch_invariant:
        raise ValueError("the online model needs an exact engine")
    lengths = [len(tokens) for tokens in token_lists]
    online.begin_unit(lengths)
    candidates = [np.full(length, -1, dtype=np.int64) for length in lengths]
    match_lengths = [np.zeros(length, dtype=np.int64) for length in lengths]
    for step in range(max(lengths, default=0)):
        active = [row for row, length in enumerate(lengths) if step < length]
        for row in active:
            candidates[row][step], match_lengths[row][step] = online.predict(row, step)
        for row in active:
            online.observe(row, step, int(token_lists[row][step]))
    encoders = [coder.Encoder() for _ in token_lists]
    bits = [0.0] * len(token_lists)
    alone_bits = [0.0] * len(token_lists)
    for index, start, weights in engine.sequence_pieces(token_lists):
        symbols = token_lists[index][start : start + len(weights)]
        piece_candidates = candidates[index][start : start + len(weights)]
        probabilities = np.zeros(len(weights), dtype=np.int64)
        for offset in np.flatnonzero(piece_candidates >= 0).tolist():
            candidate = int(piece_candidates[offset])
            probability, cell, fraction = online.target(index, int(match_lengths[index][start + offset]),
                                                        int(weights[offset, candidate]))
            if probability:
                probabilities[offset] = probability
                online.learn(index, cell, fraction, candidate == symbols[offset])
        piece_alone = coder.code_length_bits(symbols, weights)
        mixed = mix_rows(weights, piece_candidates, probabilities)  # in place: the engine's rows are not needed again
        piece_bits = coder.code_length_bits(symbols, mixed)
        alone_bits[index] += float(piece_alone.sum())
        bits[index] += float(piece_bits.sum())
        if token_bits is not None:
            token_bits.append((first + index, start, piece_bits, piece_alone))
        encoders[index].encode(symbols, mixed)
    online.end_unit()
    return [(encoder.finish(), row_bits, alone) for encoder, row_bits, alone in zip(encoders, bits, alone_bits)]


def decode_units(engine, records: list[ChunkRecord], online: OnlineModel) -> list[np.ndarray]:
    """The tokens of a group's model chunks coded with an online model: its units, in order.
    Unlike decode_chunks, the result depends on the online model's state as well."""
    decoded: list[np.ndarray] = []
    for size in unit_sizes(len(records), online.unit_chunks):
        decoded += _decode_unit(engine, records[len(decoded) : len(decoded) + size], online)
    return decoded


def decode_chunks(engine, records: list[ChunkRecord]) -> list[np.ndarray]:
    decoders = [coder.Decoder(record.payload) for record in records]
    decoded = [np.empty(record.token_count, dtype=np.int64) for record in records]

    def next_token(row: int, step: int) -> int:
        return int(decoded[row][step])

    for step, weights, active in _lockstep(engine, [record.token_count for record in records], next_token):
        for row in active:
            decoded[row][step] = _decode_one(decoders[row], weights[row : row + 1])
    return decoded


def _decode_one(decoder: coder.Decoder, row: np.ndarray) -> int:
    try:
        return int(decoder.decode(row)[0])
    except AssertionError:  # how constriction refuses data that no encoder could have written
        raise CorruptError("a model-coded chunk is damaged (invalid range-coder data)") from None


def _decode_unit(engine, records: list[ChunkRecord], online: OnlineModel) -> list[np.ndarray]:
    """One unit in lockstep: at each step every chunk predicts, then every chunk's token is
    decoded under its mixed row, then every chunk learns and observes: _encode_unit's order."""
    decoders = [coder.Decoder(record.payload) for record in records]
    lengths = [record.token_count for record in records]
    decoded = [np.empty(length, dtype=np.int64) for length in lengths]
    online.begin_unit(lengths)
    for step, weights, active in _lockstep(engine, lengths, lambda row, step: int(decoded[row][step])):
        rows = weights[active]
        predictions = [online.predict(row, step) for row in active]
        candidates = np.array([candidate for candidate, _ in predictions], dtype=np.int64)
        probabilities = np.zeros(len(active), dtype=np.int64)
        targets = [None] * len(active)
        for offset, (candidate, length) in enumerate(predictions):
            if candidate >= 0:
                probability, cell, fraction = online.target(active[offset], length, int(rows[offset, candidate]))
                if probability:
                    probabilities[offset] = probability
                    targets[offset] = (cell, fraction)
        mixed = mix_rows(rows, candidates, probabilities)
        for offset, row in enumerate(active):
            token = _decode_one(decoders[row], mixed[offset : offset + 1])
            decoded[row][step] = token
            if targets[offset] is not None:
                online.learn(row, *targets[offset], token == candidates[offset])
        for row in active:
            online.observe(row, step, int(decoded[row][step]))
    online.end_unit()
    return decoded


def _lockstep(engine, lengths: list[int], token_at: Callable[[int, int], int]):
    """Walk a batch of sequences one position at a time: yields (step, weights (B, V), rows still running).

    Every row is fed at every step (the start token once it has finished), so the batch shape
    never depends on which rows are done: encoder and decoder see the same computation.
    """
    session = engine.start(len(lengths))
    feed = np.full(len(lengths), engine.start_token, dtype=np.int64)
    for step in range(max(lengths, default=0)):
        weights = session.advance(feed)
        active = [row for row, length in enumerate(lengths) if step < length]
        yield step, weights, active
        feed = np.full(len(lengths), engine.start_token, dtype=np.int64)
        for row in active:
            feed[row] = token_at(row, step)


# The exact engine decodes up to this many chunks of consecutive groups in lockstep, within a
# budget for their key/value caches (SmolLM2-135M in the GGUF engine needs ~25 MB per 1023-token chunk).
LOCKSTEP_CHUNKS = 64
LOCKSTEP_CACHE_BYTES = 3 * 2**27  # 384 MiB


def online_unit_chunks(engine, chunk_tokens: int, batch_size: int) -> int:
    """The most chunks of an online unit: what the decoder can hold in lockstep within its cache
    budget, the group's chunks split evenly into as few units as that allows. Recorded in the
    file, so the units never depend on the decoding machine."""
    limit = max(1, min(batch_size, LOCKSTEP_CACHE_BYTES // max(1, engine.cache_bytes(chunk_tokens))))
    units = -(-batch_size // limit)
    return -(-batch_size // units)


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
            while limit and len(pending) >= limit:  # a group larger than the budget is cut too
                yield pending[:limit]
                pending = pending[limit:]

    def _lockstep_limit(self) -> int:
        """How many chunks to decode together: 0 (each group alone) unless the engine is exact."""
        if self.record is None or self.record.engine.get("kind") != "exact":
            return 0
        if self._engine is None:
            self._engine, self._tokenizer = self._engine_for(self.record)
        if not self._engine.batch_invariant:
            return 0
        chunk_bytes = max(1, self._engine.cache_bytes(self.chunk_tokens))
        return max(1, min(LOCKSTEP_CHUNKS, LOCKSTEP_CACHE_BYTES // chunk_bytes))

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
