#!/usr/bin/env python3
"""Fuzz the llmzip decoder: every damaged file must decode to the exact original or fail cleanly.

Seeds are small files compressed with a tiny native model: empty, one byte, stored, xz-only,
model-coded (several groups) and text inside binary data (one xz block). Each input is a seed after one mutation:
bit flips, byte changes, insertions, deletions, truncation, concatenation or splicing of two
seeds. One input in four then has every checksum recomputed ("repaired"), so the damage
reaches the code behind the CRC checks: record lengths, chunk tables, the header's content size,
JSON fields of the model record, range-coded payloads fed to the model, the final digest.

An input passes when decoding returns exactly the seed's original bytes (or another seed's,
when a splice happens to form that seed's complete stream), or raises
llmzip.LLMZipError (truncations: TruncatedError, an EOFError, or LLMZipError). Anything else
is a finding: another exception, wrong output, an input using more CPU time than --time-limit, or peak
memory growing past --memory-limit-mb. Findings are saved under --findings.

Decoding a model-coded group runs the model, which is slow next to a CRC check; groups that
reach the model are memoised by (engine settings, payloads, token counts), so each distinct
group is decoded by the model once and repeated copies cost a lookup (--no-memo disables it).

    python scripts/fuzz_decoder.py --inputs 1000000 [--model DIR] [--seed 0] [--jobs 1]

Without --model, a tiny random model is built in a temporary directory (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

import llmzip
from llmzip import container, stream
from llmzip.errors import LLMZipError, TruncatedError

REPOSITORY = Path(__file__).resolve().parent.parent
WORDS = ("the quick brown fox jumps over lazy dog language models predict next token an arithmetic coder turns "
         "predictions into bits and tabs newlines emoji 红楼梦 是 中国 古典 小说 Ünïcödé").split()
INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_VALUES = (0, 1, -1, 2, 1023, 1024, 1025, 65535, 2**31, 2**32, 2**63, 10**30, 1.5, "x", "cuda", "meta",
                      None, True, [], {})


class InputTimeout(BaseException):
    """Raised from SIGPROF when one input uses more CPU time than the limit."""


def build_tiny_model(directory: Path) -> str:
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from conftest import make_model_directory

    return str(make_model_directory(directory / "tiny"))


def make_seeds(model: str, *, seed: int = 0, engine: str = "float") -> list[tuple[str, bytes, bytes]]:
    """(name, original, compressed) for a few small files covering every chunk kind and record."""
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(70)).encode()
    binary = bytes(rng.randrange(256) for _ in range(300))
    compressible = (b"\x00\x01\x02 header \x00" + bytes(range(40))) * 12
    # Without the xz fallback, so that a random tiny model still codes the text chunks itself; with the
    # online model wherever the engine has one, so its record and state reach the decoder too.
    compressor = llmzip.Compressor(model=model, engine=engine, device="cpu", chunk_tokens=16, batch_size=3, threads=1,
                                   xz_fallback=False, online=True if engine == "exact" else None)
    originals = {
        "empty": b"",
        "one byte": b"x",
        "stored": binary,
        "xz": compressible,
        "model": text,
        "text in binary": text[:120] + compressible + binary[:60] + text[120:200],
    }
    seeds = [(name, original, compressor.compress(original)) for name, original in originals.items()]
    for name, original, packed in seeds:
        if llmzip.decompress(packed, model=model) != original:
            raise SystemExit(f"seed {name} does not round-trip")
    chunks = {name: llmzip.info(packed).chunks for name, _, packed in seeds}
    if not chunks["model"]["model"] or not chunks["stored"]["stored"] or not chunks["xz"]["xz"]:
        raise SystemExit(f"the seeds do not cover every chunk kind: {chunks}")
    return seeds


# Structure-aware help: find the records and recompute their checksums after a mutation.

def group_layout(data: bytes, position: int) -> tuple[int, int] | None:
    """Where a group's descriptor ends (its CRC follows) and its payload length; None where it does not parse."""
    try:
        count, at = container._read_varint(data, position + 1, "group")
        table_length, table = container._read_varint(data, at, "group")
        entries, at = 0, table
        payload_length = 0
        while at < table + table_length and entries < count:
            fields = []
            for _ in range(4):
                value, at = container._read_varint(data, at, "group")
                fields.append(value)
            payload_length += fields[3]
            at += 4
            entries += 1
    except container.CorruptError:
        return None
    return table + table_length, payload_length


def header_end(data: bytes) -> int | None:
    """Where the header's content-size varint ends (its CRC follows); None where it does not parse."""
    if len(data) <= 5 or data[:4] != container.MAGIC:
        return None
    try:
        return container._read_varint(data, 5, "header", container._MAX_SIZE_VARINT_BYTES)[1]
    except container.CorruptError:
        return None


def repair_checksums(data: bytearray) -> bytearray:
    """Rewrite every CRC the damaged structure still lets us locate; stop where it stops parsing."""
    end = header_end(data)
    if end is None or end + 4 > len(data):
        return data
    struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
    position = end + 4
    while position < len(data):
        tag = data[position : position + 1]
        try:
            if tag == container.MODEL_TAG:
                length, body = container._read_varint(data, position + 1, "model record")
                end = body + length
            elif tag == container.END_TAG:
                end = container._read_varint(data, position + 1, "end", container._MAX_SIZE_VARINT_BYTES)[1]
                end += container._DIGEST_BYTES
            elif tag == container.GROUP_TAG:
                layout = group_layout(data, position)
                if layout is None or layout[0] + 4 > len(data):
                    return data
                end, payload_length = layout
                struct.pack_into("<I", data, end, zlib.crc32(data[position:end]))
                position = end + 4
                end = position + payload_length
            else:
                return data
        except container.CorruptError:
            return data
        if end + 4 > len(data):
            return data
        struct.pack_into("<I", data, end, zlib.crc32(data[position:end]))
        position = end + 4
    return data


def mutate_json_field(data: bytearray, rng: random.Random) -> bytearray:
    """Set the header's content size, or one field of the model record, to an odd value; the lengths
    stay consistent (the caller repairs the checksums)."""
    size_end = header_end(data)
    position = size_end + 4
    while position < len(data) and data[position : position + 1] == container.GROUP_TAG:
        descriptor_end, payload_length = group_layout(data, position)
        position = descriptor_end + 4 + payload_length + 4
    if data[position : position + 1] != container.MODEL_TAG or rng.random() < 0.2:
        size = rng.choice([value for value in INTERESTING_VALUES if isinstance(value, int) and 0 <= value < 2**63])
        return data[:5] + container._varint(size) + data[size_end:]
    length, start = container._read_varint(data, position + 1, "model record")
    record = json.loads(container._inflate(bytes(data[start : start + length]), "model record",
                                           container.FORMAT_VERSION))
    paths = [(key,) for key in record] + [(key, inner) for key, value in record.items() if isinstance(value, dict)
                                          for inner in value]
    path = rng.choice(paths)
    target = record
    for key in path[:-1]:
        target = target[key]
    if rng.random() < 0.2:
        del target[path[-1]]
    else:
        target[path[-1]] = rng.choice(INTERESTING_VALUES)
    body = container._deflate(container._json_bytes(record))
    return data[: position + 1] + container._varint(len(body)) + body + data[start + length :]


def mutate(seeds, rng: random.Random) -> tuple[str, int, bytes]:
    """A mutation's name, the index of the seed whose original it must decode to, and the input."""
    index = rng.randrange(len(seeds))
    data = bytearray(seeds[index][2])
    kind = rng.choice(("flip", "flip", "byte", "insert", "delete", "truncate", "concatenate", "splice", "duplicate"))
    if kind == "flip":
        for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        for _ in range(rng.choice((1, 1, 2, 4))):
            data[rng.randrange(len(data))] = rng.choice(INTERESTING_BYTES + (rng.randrange(256),))
    elif kind == "insert":
        where = rng.randrange(len(data) + 1)
        size = rng.choice((1, 2, 4, 8, 17, 64))
        if rng.random() < 0.5:
            inserted = bytes(rng.randrange(256) for _ in range(size))
        else:
            start = rng.randrange(len(data))
            inserted = bytes(data[start : start + size])
        data[where:where] = inserted
    elif kind == "delete":
        start = rng.randrange(len(data))
        del data[start : start + rng.choice((1, 1, 2, 4, 17, 64))]
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "concatenate":
        data += (rng.choice(seeds)[2] if rng.random() < 0.7
                 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
    elif kind == "splice":
        other = rng.choice(seeds)[2]
        data = data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
    elif kind == "duplicate":
        start = rng.randrange(len(data))
        piece = data[start : start + rng.randrange(1, 200)]
        data[start:start] = piece
    if rng.random() < 0.25:
        if kind in ("flip", "byte") and rng.random() < 0.3:
            try:
                data = mutate_json_field(bytearray(seeds[index][2]), rng)
                kind = "json"
            except (ValueError, struct.error, KeyError, TypeError, IndexError, container.CorruptError):
                pass
        data = repair_checksums(data)
        kind += "+repaired"
    return kind, index, bytes(data)


def install_memo() -> tuple[dict, Callable[[], None]]:
    """Memoise model decoding (the decoder is a pure function of what it is given); returns (stats, undo).

    Without an online model a group's tokens depend on its records alone. With one, a unit's tokens
    and what the online model learns from it depend on the online state before it, which depends
    on every unit the stream decoded before: so the key chains the units, and a hit replays the
    unit's effect on the online model (its tokens, table writes and counts) without running the
    model. A unit that raised raises the same error again.
    """
    originals = stream.decode_chunks, stream._decode_unit
    memo: dict = {}
    stats = {"hits": 0, "misses": 0}

    def remember(key, compute):
        if key in memo:
            stats["hits"] += 1
        else:
            stats["misses"] += 1
            if len(memo) > 10000:
                memo.clear()
            try:
                memo[key] = compute()
            except LLMZipError as error:
                memo[key] = error
        if isinstance(memo[key], LLMZipError):
            raise type(memo[key])(*memo[key].args)
        return memo[key]

    def content(engine, records) -> tuple:
        return (json.dumps(engine.settings, sort_keys=True, default=str),
                tuple((record.payload, record.token_count) for record in records))

    def decode_chunks(engine, records):
        decoded = remember(content(engine, records), lambda: [t.copy() for t in originals[0](engine, records)])
        return [tokens.copy() for tokens in decoded]

    def decode_unit(engine, records, online):
        before = getattr(online, "memo_chain", None)
        key = (before, content(engine, records))

        def compute():
            mark = online.checkpoint()  # opens the log of table writes
            decoded = [tokens.copy() for tokens in originals[1](engine, records, online)]
            written = [indices for indices, _ in online._undo[mark[1]:]]
            written = np.unique(np.concatenate(written)) if written else np.zeros(0, dtype=np.int64)
            writes = (written, online.tables.reshape(-1)[written].copy())  # the unit's table writes, as they ended
            online.commit()
            return decoded, (online.history().copy(), writes, online.hits.copy(), online.trials.copy())

        hit = key in memo
        decoded, (tokens, (written, values), hits, trials) = remember(key, compute)
        if hit:  # the unit's effect on the online model, without the model
            online.begin_unit([len(tokens) - online.size])  # room for the unit's tokens
            online.tokens[: len(tokens)] = tokens
            online.tables.reshape(-1)[written] = values
            online.hits, online.trials = hits.copy(), trials.copy()
            online.end_unit()
        online.memo_chain = hash(key)
        return [tokens.copy() for tokens in decoded]

    stream.decode_chunks, stream._decode_unit = decode_chunks, decode_unit

    def undo() -> None:
        stream.decode_chunks, stream._decode_unit = originals

    return stats, undo


def _on_alarm(signum, frame):
    raise InputTimeout()


def check_one(decompressor, data: bytes, original: bytes, time_limit: float,
              other_originals: frozenset = frozenset()) -> tuple[str, str]:
    """('ok-exact' | 'ok-other-original' | 'ok-error' | a finding's kind, detail).

    The time limit is CPU time (ITIMER_PROF), so a machine busy with other work does not turn
    a slow input into a false hang. A splice can form a complete, valid stream of another
    seed; decoding it to that seed's exact original is correct.
    """
    signal.setitimer(signal.ITIMER_PROF, time_limit)
    try:
        output = decompressor.decompress(data)
    except InputTimeout:
        return "timeout", f"ran past {time_limit} s"
    except TruncatedError as error:
        return "ok-error", f"TruncatedError: {error}"
    except LLMZipError as error:
        return "ok-error", f"{type(error).__name__}: {error}"
    except Exception as error:  # the point of the fuzzer: anything else is a bug
        return "exception", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    if output != original and output in other_originals:
        return "ok-other-original", "the exact original of another seed"
    if output != original and _is_concatenation(output, other_originals | {original}):
        # A splice can also append a whole stream after a stream: llmzip decodes concatenated
        # streams as the concatenation of their contents, like gzip.
        return "ok-concatenation", "the concatenation of seeds' originals"
    if output != original:
        return "wrong-output", f"decoded {len(output)} bytes that differ from the {len(original)}-byte original"
    return "ok-exact", "the original"


def _is_concatenation(output: bytes, originals: frozenset) -> bool:
    """Whether output is two or more originals one after another."""
    if not output:
        return False
    reachable = {0}
    for position in range(len(output) + 1):
        if position not in reachable:
            continue
        for original in originals:
            if original and output.startswith(original, position):
                reachable.add(position + len(original))
    return len(output) in reachable and output not in originals


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fuzz(model: str, *, inputs: int, seed: int = 0, time_limit: float = 20.0, memory_limit_mb: float = 2048,
         findings_directory: Path | None = None, memo: bool = True, report_every: float = 0,
         seeds: list | None = None, engine: str = "float") -> dict:
    """Run `inputs` mutated inputs; returns counts by outcome, findings and timings."""
    seeds = seeds if seeds is not None else make_seeds(model, engine=engine)
    memo_stats, undo_memo = install_memo() if memo else ({}, lambda: None)
    previous_handler = signal.signal(signal.SIGPROF, _on_alarm)
    originals = frozenset(original for _, original, _ in seeds)
    decompressor = llmzip.Decompressor(model=model, device="cpu")
    rng = random.Random(seed)
    outcomes, kinds, messages = Counter(), Counter(), Counter()
    findings = []
    started = last_report = time.monotonic()
    slowest = 0.0
    baseline_rss = peak_rss_mb()
    try:
        for number in range(inputs):
            kind, index, data = mutate(seeds, rng)
            before = time.monotonic()
            outcome, detail = check_one(decompressor, data, seeds[index][1], time_limit, originals)
            slowest = max(slowest, time.monotonic() - before)
            outcomes[outcome] += 1
            kinds[kind] += 1
            if outcome == "ok-error":
                messages[detail.split(" (")[0][:90]] += 1
            if peak_rss_mb() - baseline_rss > memory_limit_mb and not any(f["kind"] == "memory" for f in findings):
                outcome, detail = "memory", f"peak RSS grew to {peak_rss_mb():.0f} MB"
            if not outcome.startswith("ok"):
                name = hashlib.sha256(data).hexdigest()[:16]
                findings.append({"kind": outcome, "mutation": kind, "seed": seeds[index][0], "input": name,
                                 "detail": detail[:2000]})
                if findings_directory is not None:
                    findings_directory.mkdir(parents=True, exist_ok=True)
                    (findings_directory / f"{outcome}-{name}.llmz").write_bytes(data)
            if report_every and time.monotonic() - last_report > report_every:
                last_report = time.monotonic()
                print(f"{number + 1} inputs, {last_report - started:.0f} s, {dict(outcomes)}", flush=True)
    finally:
        signal.signal(signal.SIGPROF, previous_handler)
        undo_memo()
    return {
        "inputs": inputs,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(outcomes),
        "mutations": dict(kinds),
        "errors": dict(messages.most_common(40)),
        "findings": findings[:200],
        "finding_count": len(findings),
        "slowest_input_seconds": round(slowest, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "memo": memo_stats,
    }


def _worker(arguments) -> dict:
    model, inputs, seed, options = arguments
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    return fuzz(model, inputs=inputs, seed=seed, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=10000, help="mutated inputs in all (default 10000)")
    parser.add_argument("--model", help="model name or path, e.g. smollm2 (default: build a tiny random native one)")
    parser.add_argument("--engine", choices=("float", "exact", "auto"), default="float",
                        help="engine the seeds are made with (default float, whose records carry the most settings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes, each with its own random seed")
    parser.add_argument("--time-limit", type=float, default=20.0, help="CPU seconds one input may take")
    parser.add_argument("--memory-limit-mb", type=float, default=2048, help="peak RSS growth that counts as a finding")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"), help="where failing inputs are saved")
    parser.add_argument("--no-memo", dest="memo", action="store_false",
                        help="run the model for every model-coded group")
    parser.add_argument("--report", type=Path, help="write the summary as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or build_tiny_model(Path(scratch))
        options = {"time_limit": args.time_limit, "memory_limit_mb": args.memory_limit_mb,
                   "findings_directory": args.findings, "memo": args.memo, "report_every": 60, "engine": args.engine}
        shares = [args.inputs // args.jobs + (job < args.inputs % args.jobs) for job in range(args.jobs)]
        work = [(model, share, args.seed * 1000 + job, options) for job, share in enumerate(shares)]
        if args.jobs == 1:
            results = [_worker(work[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
                results = pool.map(_worker, work)
    summary = {
        "inputs": sum(r["inputs"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "jobs": args.jobs,
        "outcomes": sum((Counter(r["outcomes"]) for r in results), Counter()),
        "mutations": sum((Counter(r["mutations"]) for r in results), Counter()),
        "errors": sum((Counter(r["errors"]) for r in results), Counter()).most_common(25),
        "finding_count": sum(r["finding_count"] for r in results),
        "findings": [f for r in results for f in r["findings"]][:50],
        "slowest_input_seconds": max(r["slowest_input_seconds"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "memo": [r["memo"] for r in results],
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False, default=str)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if summary["finding_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
