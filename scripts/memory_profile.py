#!/usr/bin/env python3
"""Resident memory of the default model against input size, sampled over each run: flat or growing?

For each size, a child process compresses that much text and another decompresses the result;
every --interval seconds each child records its resident set size (VmRSS), its peak (VmHWM) and
the bytes it has passed on. The decompressed bytes are compared with the input. A default-model
run takes minutes per 100 kB on two cores, so sizes go up to a few hundred kB, not 100 MB; the
peak against size, and its growth per MB between consecutive sizes, show whether it stays flat.
(The decoder's peak first grows with the number of chunks it decodes in lockstep, up to its
cache budget; past that it should stay flat.)

    python scripts/memory_profile.py [--text-kib 16 64 256] [--interval 5] [--no-online] [--report FILE.json]

The text is the training corpora of ../shared/corpora/train (their .xz files decompressed, one
after another), or --input.
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
TRAIN = REPOSITORY.parent / "shared" / "corpora" / "train"


def write_text(path: Path, size: int) -> None:
    order = ["gutenberg", "wikipedia", "multilingual", "chinese"]  # English first: what the default model knows best
    sources = sorted((p for p in TRAIN.rglob("*") if p.is_file() and not p.name.startswith(("README", "MANIFEST"))),
                     key=lambda p: (order.index(p.parent.name) if p.parent.name in order else len(order), str(p)))
    if not sources:
        raise SystemExit(f"no training text under {TRAIN}; pass --input")
    written = 0
    with open(path, "wb") as out:
        while written < size:
            for source in sources:
                data = lzma.decompress(source.read_bytes()) if source.suffix == ".xz" else source.read_bytes()
                data = data[: size - written]
                out.write(data)
                written += len(data)
                if written >= size:
                    break


def memory() -> dict:
    """This process's VmRSS and VmHWM in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: round(int(fields[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def child(direction: str, source: Path, destination: Path, interval: float, online: bool) -> None:
    """Compress or decompress, printing a JSON sample every `interval` seconds."""
    import llmzip

    started = time.monotonic()
    done = [0]
    finished = threading.Event()

    def sample() -> None:
        while not finished.wait(interval):
            print(json.dumps({"seconds": round(time.monotonic() - started, 1), "bytes_done": done[0], **memory()}),
                  flush=True)

    def progress(count: int) -> None:
        done[0] += count

    threading.Thread(target=sample, daemon=True).start()
    with open(source, "rb") as raw, open(destination, "wb") as out:
        if direction == "compress":
            llmzip.Compressor(online=None if online else False).copy_stream(raw, out, progress=progress)
        else:
            llmzip.Decompressor().copy_stream(raw, out, progress=progress)
    finished.set()
    print(json.dumps({"seconds": round(time.monotonic() - started, 1), "bytes_done": done[0], "end": True,
                      **memory()}), flush=True)


def sample_run(direction: str, source: Path, destination: Path, args) -> list[dict]:
    command = [sys.executable, __file__, "--child", direction, str(source), str(destination),
               "--interval", str(args.interval)] + (["--no-online"] if args.no_online else [])
    samples = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            samples.append(json.loads(line))
            print(direction, line.strip(), flush=True)
    if process.returncode:
        raise SystemExit(f"the {direction} child failed ({process.returncode})")
    return samples


def summary(samples: list[dict]) -> dict:
    last = samples[-1]
    return {"seconds": last["seconds"], "bytes": last["bytes_done"], "peak_mib": last["VmHWM"],
            "samples": len(samples)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, help="text whose prefixes are used (default: the training corpora)")
    parser.add_argument("--text-kib", type=int, nargs="*", default=[16, 64, 256])
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples")
    parser.add_argument("--no-online", action="store_true", help="the model alone, without the online model")
    parser.add_argument("--report", type=Path, help="append one JSON line per size here, samples included")
    parser.add_argument("--child", nargs=3, metavar=("DIRECTION", "SOURCE", "DESTINATION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        direction, source, destination = args.child
        child(direction, Path(source), Path(destination), args.interval, not args.no_online)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmzip-memory-") as scratch:
        text = Path(scratch) / "all.txt"
        if args.input is None:
            write_text(text, max(args.text_kib) << 10)
        for kib in sorted(args.text_kib):
            data = (args.input or text).read_bytes()[: kib << 10]
            source, packed, output = (Path(scratch) / name for name in ("in.txt", "in.llmz", "out.txt"))
            source.write_bytes(data)
            compress = sample_run("compress", source, packed, args)
            decompress = sample_run("decompress", packed, output, args)
            if output.read_bytes() != data:
                raise SystemExit(f"{kib} KiB: the decompressed bytes differ from the input")
            row = {"bytes": len(data), "online": not args.no_online, "compressed_bytes": packed.stat().st_size,
                   "compress": summary(compress), "decompress": summary(decompress)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.report:
                with open(args.report, "a") as report:
                    report.write(json.dumps({**row, "compress_samples": compress, "decompress_samples": decompress})
                                 + "\n")
    for smaller, larger in zip(rows, rows[1:]):  # growth between consecutive sizes
        megabytes = (larger["bytes"] - smaller["bytes"]) / 1e6
        for direction in ("compress", "decompress"):
            before, after = smaller[direction]["peak_mib"], larger[direction]["peak_mib"]
            print(f"{direction}: peak {before} MiB at {smaller['bytes']:,} bytes, {after} MiB at "
                  f"{larger['bytes']:,} bytes: {(after - before) / megabytes:+.1f} MiB per MB of input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
