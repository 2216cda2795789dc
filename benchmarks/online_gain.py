"""The online model's gain: the same model with and without it, against the classical compressors.

    python benchmarks/online_gain.py --level 1 ../shared/corpora/bench/calgary/bib ...
    python benchmarks/online_gain.py --level 5 --max-bytes 30000 ../shared/corpora/bench/silesia/xml.xz

Per file and level: the compressed size with the model alone (`--no-online`) and with the
online model, both with the default xz fallback, and with the model coding every text chunk
(`--model-only` against `--model-only` plus the online model, which isolates what the model's
own code gains); compress and decompress time of each (every file is decoded and compared);
the best of gzip -9, bzip2 -9, xz -9e, zstd -22 and brotli -q 11. Measurements are appended to
a JSON-lines file and skipped when already there, so an interrupted run resumes; the Markdown
table is rewritten from all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch

import llmzip
from llmzip.bench import baseline, cpu_description, read_input

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ["gzip", "bzip2", "xz", "zstd", "brotli"]
# (label, xz_fallback, online)
MODES = [("alone", True, False), ("online", True, True), ("model-only", False, False),
         ("model-only+online", False, True)]


def round_trip(level: int, xz_fallback: bool, online: bool, data: bytes, compressors: dict) -> dict:
    """One mode's round trip, decoded and compared, in this process with the model loaded once:
    the times are the coding alone."""
    key = (level, xz_fallback, online)
    if key not in compressors:
        compressors[key] = llmzip.Compressor(level=level, xz_fallback=xz_fallback, online=online)
    compressor = compressors[key]
    output = io.BytesIO()
    started = time.perf_counter()
    summary = compressor.copy_stream(io.BytesIO(data), output, content_size=len(data))
    compress_seconds = time.perf_counter() - started
    packed = output.getvalue()
    started = time.perf_counter()
    restored = llmzip.Decompressor().decompress(packed)
    decompress_seconds = time.perf_counter() - started
    if restored != data:
        raise SystemExit("decoded output differs from the input: this is a bug")
    return {"bytes": len(packed), "digest": hashlib.sha256(packed).hexdigest(), "compress_runs": [compress_seconds],
            "decompress_runs": [decompress_seconds], "model_bits": summary.model_bits,
            "model_alone_bits": summary.model_alone_bits, "tokens": summary.tokens, "chunks": dict(summary.chunks)}


def run_modes(level: int, modes: list[tuple], data: bytes, compressors: dict, repeat: int) -> dict[str, dict]:
    """Each mode's round trips, the modes taking turns so that a busy spell of a shared machine
    falls on all of them; its times are the fastest of `repeat` runs."""
    rows: dict[str, dict] = {}
    for _ in range(repeat):
        for label, xz_fallback, online in modes:
            row = round_trip(level, xz_fallback, online, data, compressors)
            if label in rows:
                if row["digest"] != rows[label]["digest"]:
                    raise SystemExit("two runs wrote different files: this is a bug")
                rows[label]["compress_runs"] += row["compress_runs"]
                rows[label]["decompress_runs"] += row["decompress_runs"]
            else:
                rows[label] = row
    for row in rows.values():
        row["compress_seconds"], row["decompress_seconds"] = min(row["compress_runs"]), min(row["decompress_runs"])
    return rows


def best_classical(data: bytes) -> tuple[str, int]:
    sizes = {}
    for name in BASELINES:
        codec = baseline(name)
        if codec is not None:
            sizes[name] = len(codec.compress(data))
    name = min(sizes, key=sizes.get)
    return name, sizes[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--level", type=int, action="append", help="llmzip level(s) (default 1 and 5)")
    parser.add_argument("--max-bytes", type=int, help="measure the first N bytes of each file")
    parser.add_argument("--modes", default="alone,online,model-only,model-only+online")
    parser.add_argument("--results", default=str(RESULTS / "online_gain.jsonl"))
    parser.add_argument("-T", "--threads", type=int, help="torch threads (one is steadier on a shared machine)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="round trips per mode, the modes taking turns; times are the fastest")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    compressors: dict = {}
    modes = [mode for mode in MODES if mode[0] in args.modes.split(",")]
    for level in args.level or [1, 5]:
        for name in args.files:
            data = read_input(Path(name), args.max_bytes)
            digest = hashlib.sha256(data).hexdigest()[:16]
            missing = [mode for mode in modes if f"{digest}:{level}:{mode[0]}" not in done]
            measured = run_modes(level, missing, data, compressors, args.repeat) if missing else {}
            classical = best_classical(data) if missing else None
            for label, measurement in measured.items():
                key = f"{digest}:{level}:{label}"
                row = {"key": key, "file": _short(name), "raw_bytes": len(data), "level": level, "mode": label,
                       "sample": args.max_bytes, "machine": cpu_description(torch.get_num_threads()),
                       **measurement, "best_classical": classical}
                with results.open("a") as stream:
                    stream.write(json.dumps(row) + "\n")
                done[key] = row
                print(f"{row['file']} level {level} {label}: {row['bytes']:,} bytes "
                      f"({8 * row['bytes'] / len(data):.4f} bits/byte), {row['compress_seconds']:.1f} s + "
                      f"{row['decompress_seconds']:.1f} s", file=sys.stderr, flush=True)
    results.with_suffix(".md").write_text(markdown(list(done.values())))
    return 0


def _short(name: str) -> str:
    path = Path(name)
    return f"{path.parent.name}/{path.name.removesuffix('.xz')}"


def markdown(rows: list[dict]) -> str:
    """One line per (file, sample, level): bits/byte of each mode, the classical best, the gains."""
    table = {}
    for row in rows:
        table.setdefault((row["file"], row["raw_bytes"], row["level"]), {})[row["mode"]] = row
    lines = ["# The online model's gain (decode verified)", "",
             "bits/byte; *alone* and *online* use the default xz fallback, *model-only* codes every text chunk "
             "with the model. Gain = 1 − online / alone. Time: compress + decompress seconds of the model alone → "
             "with the online model (a shared, busy 2-core machine: times are rough).", "",
             "| file | bytes | level | alone | online | gain | model-only | model-only+online | gain | best classical "
             "| online / min(alone, classical) | seconds alone → online |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for (name, raw, level), modes in sorted(table.items()):
        def bits(mode):
            return 8 * modes[mode]["bytes"] / raw if mode in modes else None

        def cell(value):
            return "–" if value is None else f"{value:.4f}"

        def gain(before, after):
            return "–" if before is None or after is None else f"{100 * (1 - after / before):+.1f}%"

        any_row = next(iter(modes.values()))
        classical_name, classical_bytes = any_row["best_classical"]
        classical = 8 * classical_bytes / raw
        ratio = (f"{bits('online') / min(bits('alone'), classical):.3f}"
                 if bits("online") is not None and bits("alone") is not None else "–")
        times = "–"
        if "alone" in modes and "online" in modes:
            times = (f"{modes['alone']['compress_seconds']:.0f}+{modes['alone']['decompress_seconds']:.0f} → "
                     f"{modes['online']['compress_seconds']:.0f}+{modes['online']['decompress_seconds']:.0f}")
        lines.append(f"| {name} | {raw:,} | {level} | {cell(bits('alone'))} | {cell(bits('online'))} | "
                     f"{gain(bits('alone'), bits('online'))} | {cell(bits('model-only'))} | "
                     f"{cell(bits('model-only+online'))} | {gain(bits('model-only'), bits('model-only+online'))} | "
                     f"{classical_name} {classical:.4f} | {ratio} | {times} |")
    lines += ["", "## What the online model costs in time", "",
              "Both model-code every text chunk (the xz fallback off), so the rows are the same model's; the "
              "fastest of the runs, the modes taking turns. Compressing excludes loading the model (one "
              "compressor per mode); each decompression starts a fresh decompressor, loading included.", "",
              "| file | bytes | level | runs | compress: model-only → +online | cost | "
              "decompress: model-only → +online | cost | machine |", "|---|---:|---:|---:|---|---:|---|---:|---|"]
    for (name, raw, level), modes in sorted(table.items()):
        if "model-only" not in modes or "model-only+online" not in modes:
            continue
        alone, online = modes["model-only"], modes["model-only+online"]
        runs = min(len(alone.get("compress_runs", [0])), len(online.get("compress_runs", [0])))

        def cost(direction):
            before, after = alone[f"{direction}_seconds"], online[f"{direction}_seconds"]
            return f"{before:.2f} → {after:.2f} s", f"{100 * (after / before - 1):+.1f}%"

        (compress, compress_cost), (decompress, decompress_cost) = cost("compress"), cost("decompress")
        lines.append(f"| {name} | {raw:,} | {level} | {runs} | {compress} | {compress_cost} | {decompress} | "
                     f"{decompress_cost} | {online.get('machine', '–')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
