"""Whole files through the llmzip command line: chunk length against size and speed, with baselines.

    python benchmarks/chunk_lengths.py ../shared/corpora/bench/canterbury/alice29.txt
    python benchmarks/chunk_lengths.py --chunks 1023 2047 --repeat 3 FILE...

For every file and chunk length: the real .llmz size (framing included) and bits per byte, the
seconds to compress and to decompress (the fastest of --repeat runs, model loading included),
peak resident memory of each, and a decode check (the output must equal the input). gzip -9,
bzip2 -9, xz -9e, zstd -22 and brotli -q 11 are measured on the same bytes in the same run.

Every measurement is appended to --results (JSON lines) as soon as it ends, and one already
there is not run again: a run cut short resumes where it stopped. --markdown writes the table.
Rows carry the container format version they were written in; only the current version's rows
count as done and go into the table (older ones stay in the file as history).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmzip.bench import baseline, cpu_description
from llmzip.container import FORMAT_VERSION

BASELINES = ["gzip", "bzip2", "xz", "zstd", "brotli"]
RESULTS = Path(__file__).resolve().parent / "results" / "chunk_lengths.jsonl"

# Runs a command and prints its peak resident memory (KiB) and wall seconds as JSON on stderr's last line.
_TIMED = (
    "import json, resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "seconds = time.perf_counter() - started\n"
    "print(json.dumps({'code': code, 'seconds': seconds, "
    "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}), file=sys.stderr)\n"
)


def timed(command: list[str]) -> dict:
    finished = subprocess.run([sys.executable, "-c", _TIMED, *command], stderr=subprocess.PIPE, text=True)
    lines = finished.stderr.strip().splitlines()
    report = json.loads(lines[-1])
    if report["code"] != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n" + "\n".join(lines[:-1]))
    return report


def llmzip_command() -> list[str]:
    binary = Path(sys.executable).with_name("llmzip")
    return [str(binary)] if binary.exists() else [sys.executable, "-m", "llmzip.cli"]


def measure_model(path: Path, chunk_tokens: int, level: int, threads: int, decode: bool = True,
                  online: bool = True) -> dict:
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / path.name
        source.write_bytes(data)
        packed, restored = Path(directory) / "packed.llmz", Path(directory) / "restored"
        options = [f"-{level}", "-q", "-f", "-T", str(threads), "--chunk-tokens", str(chunk_tokens)]
        options += [] if online else ["--no-online"]
        compress = timed([*llmzip_command(), *options, "-o", str(packed), str(source)])
        size = packed.stat().st_size
        if not decode:
            return {"compressed_bytes": size, "bits_per_byte": 8 * size / len(data),
                    "compress_seconds": compress["seconds"], "compress_peak_mib": compress["peak_kib"] / 1024,
                    "verified": False}
        decompress = timed([*llmzip_command(), "-d", "-q", "-f", "-T", str(threads), "-o", str(restored), str(packed)])
        if restored.read_bytes() != data:
            raise SystemExit(f"{path}: the decoded output differs from the input")
    return {
        "compressed_bytes": size,
        "bits_per_byte": 8 * size / len(data),
        "compress_seconds": compress["seconds"],
        "decompress_seconds": decompress["seconds"],
        "compress_peak_mib": compress["peak_kib"] / 1024,
        "decompress_peak_mib": decompress["peak_kib"] / 1024,
        "verified": True,
    }


def measure_baselines(path: Path) -> dict:
    data = path.read_bytes()
    sizes = {}
    for name in BASELINES:
        codec = baseline(name)
        if codec is not None:
            sizes[codec.label] = len(codec.compress(data))
    return sizes


def load(results: Path) -> list[dict]:
    if not results.exists():
        return []
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def append(results: Path, row: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as stream:
        stream.write(json.dumps(row) + "\n")


def markdown(rows: list[dict]) -> str:
    lines = ["| file | bytes | chunk tokens | online model | runs | .llmz bytes | bits/byte | best classical | "
             "ratio to best | "
             "compress kB/s | decompress kB/s | peak MiB (c / d) |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    models = [row for row in rows if row["kind"] == "model" and row.get("format", 1) == FORMAT_VERSION]
    classical = {row["file"]: row["sizes"] for row in rows if row["kind"] == "baselines"}
    grouped: dict[tuple, list[dict]] = {}
    for row in models:
        grouped.setdefault((row["file"], row["chunk_tokens"], row.get("online", False)), []).append(row)
    for (file, chunk, online), runs in sorted(grouped.items()):
        raw = runs[0]["bytes"]
        best_name, best_size = min(classical.get(file, {"-": 0}).items(), key=lambda item: item[1])
        compress = min(run["compress_seconds"] for run in runs)
        decoded = [run for run in runs if run["verified"]]
        decompress = f"{raw / min(run['decompress_seconds'] for run in decoded) / 1000:.2f}" if decoded else "not run"
        decode_peak = f"{max(r['decompress_peak_mib'] for r in decoded):.0f}" if decoded else "-"
        size = runs[0]["compressed_bytes"]
        lines.append(
            f"| {Path(file).name} | {raw:,} | {chunk} | {'on' if online else 'off'} | {len(runs)} | {size:,} | "
            f"{8 * size / raw:.3f} | "
            f"{best_name} {8 * best_size / raw:.3f} | {size / best_size:.3f} | {raw / compress / 1000:.2f} | "
            f"{decompress} | {max(r['compress_peak_mib'] for r in runs):.0f} / {decode_peak} |"
        )
    machine = models[0]["machine"] if models else ""
    return "\n".join(lines) + f"\n\nMachine: {machine}. Seconds include loading the model; the fastest run is shown.\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1023, 2047, 4095, 8191])
    parser.add_argument("--level", type=int, default=5, help="the level whose model is measured (default 5: smollm2)")
    parser.add_argument("--repeat", type=int, default=1, help="round trips per file and chunk length")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--compress-only", action="store_true",
                        help="size and compression speed only (no decode check: marked unverified)")
    parser.add_argument("--no-online", action="store_true", help="the model alone, without the online model")
    args = parser.parse_args(argv)
    machine = f"{cpu_description(args.threads)}, {platform.system()}"
    rows = load(args.results)
    for path in args.files:
        name = str(path)
        if not any(row["kind"] == "baselines" and row["file"] == name for row in rows):
            rows.append({"kind": "baselines", "file": name, "sizes": measure_baselines(path)})
            append(args.results, rows[-1])
        for chunk in args.chunks:
            done = sum(1 for row in rows if row["kind"] == "model" and row["file"] == name
                       and row["chunk_tokens"] == chunk and row["level"] == args.level
                       and row.get("format", 1) == FORMAT_VERSION and row.get("online", False) == (not args.no_online))
            for _ in range(done, args.repeat):
                started = time.strftime("%H:%M:%S")
                row = {"kind": "model", "file": name, "bytes": path.stat().st_size, "chunk_tokens": chunk,
                       "level": args.level, "threads": args.threads, "machine": machine, "format": FORMAT_VERSION,
                       "online": not args.no_online,
                       **measure_model(path, chunk, args.level, args.threads, decode=not args.compress_only,
                                       online=not args.no_online)}
                rows.append(row)
                append(args.results, row)
                print(f"{started} {path.name} chunk {chunk}: {row['bits_per_byte']:.4f} bits/byte, "
                      f"{row['compress_seconds']:.0f} s / {row.get('decompress_seconds', float('nan')):.0f} s",
                      flush=True)
    table = markdown([row for row in rows if row["file"] in {str(p) for p in args.files}])
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
