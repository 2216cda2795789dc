"""Latency of a small file: one 2,048-byte paragraph of alice29 through the llmzip command line.

    python benchmarks/paragraph.py [--file ../shared/corpora/bench/canterbury/alice29.txt]
                                   [--offset 149504] [--repeat 3] [--no-online]

The slice (534 tokens with SmolLM2: one chunk) is compressed once at the default level, then
decompressed --repeat times; each run is a fresh `llmzip -d` process, so model loading is
included. Reported: the .llmz size, the fastest decompression, its peak resident memory, and
a check that every output equals the slice. One JSON line is appended to --results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from chunk_lengths import llmzip_command, timed

from llmzip.bench import cpu_description
from llmzip.container import FORMAT_VERSION

ALICE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "bench" / "canterbury" / "alice29.txt"
RESULTS = Path(__file__).resolve().parent / "results" / "paragraph.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=ALICE)
    parser.add_argument("--offset", type=int, default=149504, help="where the slice starts")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-online", action="store_true", help="the model alone, without the online model")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.file.exists():
        print(f"{args.file} not found (the corpora live in ../shared)", file=sys.stderr)
        return 2
    data = args.file.read_bytes()[args.offset : args.offset + args.length]
    flags = ["--no-online"] if args.no_online else []
    with tempfile.TemporaryDirectory() as scratch:
        source, packed, output = (Path(scratch) / name for name in ("paragraph.txt", "paragraph.txt.llmz", "out"))
        source.write_bytes(data)
        compressed = timed(llmzip_command() + flags + ["-k", str(source)])
        runs = []
        for _ in range(args.repeat):
            runs.append(timed(llmzip_command() + ["-d", "-f", "-o", str(output), str(packed)]))
            if output.read_bytes() != data:
                raise SystemExit("the decompressed paragraph differs from the input")
        fastest = min(runs, key=lambda run: run["seconds"])
        row = {
            "file": args.file.name, "offset": args.offset, "bytes": len(data), "online": not args.no_online,
            "format": FORMAT_VERSION, "compressed_bytes": packed.stat().st_size,
            "compress_seconds": round(compressed["seconds"], 2),
            "decompress_seconds": round(fastest["seconds"], 2),
            "decompress_runs": [round(run["seconds"], 2) for run in runs],
            "decompress_peak_mib": round(fastest["peak_kib"] / 1024),
            "verified": True, "machine": cpu_description(os.cpu_count() or 1), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
    print(json.dumps(row))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as results:
        results.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
