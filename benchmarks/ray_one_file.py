"""Wall-clock speed-up of compressing one file with `llmzip --ray` from 1 to 2 Ray worker processes.

    .venv/bin/python benchmarks/ray_one_file.py [--file canterbury/alice29.txt] [--bytes 40000]
        [--level 5] [--runs 2] [--out DIR]

One file (the first --bytes bytes of a file of ../shared/corpora/bench) is compressed at --level
through the command line: without Ray on 1 thread, then on a local Ray cluster of 1 and of 2
worker slots, where its chunks' full passes are Ray tasks (one thread each) and the driver codes.
Each Ray setting first compresses a two-chunk file, so that the workers have started and loaded
the model; then every setting runs --runs times and the fastest is kept (on a shared machine the
fastest is the one least disturbed by other work). Every output is compared with the run without
Ray, byte for byte, and decoded once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it

import ray  # noqa: E402

from llmzip import api, bench  # noqa: E402
from llmzip.cli import main  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "bench"


def compress(path: Path, level: int, ray_flag: list[str]) -> float:
    started = time.perf_counter()
    if main([*ray_flag, f"-{level}", "-T", "1", "-f", "-k", "-q", str(path)]) != 0:
        raise SystemExit(f"llmzip failed on {path}")
    return time.perf_counter() - started


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default="canterbury/alice29.txt", help="a file of the bench corpora")
    parser.add_argument("--bytes", type=int, default=40000, help="bytes taken from its start")
    parser.add_argument("--level", type=int, default=5, help="the compression level (5: SmolLM2, 1: llmzip-tiny)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per setting; the fastest is kept")
    parser.add_argument("--out", default="benchmarks/results", help="where ray_one_file_level*.json goes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmzip-ray-one-file-"))
    data = bench.read_input(CORPUS / args.file, args.bytes)
    path, warm = work / Path(args.file).name, work / "warm.txt"
    path.write_bytes(data)
    warm.write_bytes(data[:8000])
    results = {"machine": bench.cpu_name(), "cores": os.cpu_count(), "load_average_before": os.getloadavg(),
               "file": args.file, "bytes": len(data), "level": args.level, "runs": args.runs, "seconds": {}}

    local = [compress(path, args.level, []) for _ in range(args.runs)]
    expected = Path(f"{path}.llmz").read_bytes()
    if api.decompress(expected) != data:
        raise SystemExit("the local run does not decode to its input: this is a bug")
    results["seconds"]["no Ray, 1 thread"] = min(local)
    results["compressed_bytes"] = len(expected)
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            compress(warm, args.level, ["--ray"])
            timed = []
            for _ in range(args.runs):
                timed.append(compress(path, args.level, ["--ray"]))
                if Path(f"{path}.llmz").read_bytes() != expected:
                    raise SystemExit("Ray wrote other bytes than the local run: this is a bug")
            results["seconds"][f"{workers} worker(s)"] = min(timed)
        finally:
            ray.shutdown()
    results["load_average_after"] = os.getloadavg()  # other work on the machine: context for the times
    seconds = results["seconds"]
    results["speedup"] = seconds["1 worker(s)"] / seconds["2 worker(s)"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"ray_one_file_level{args.level}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{results['machine']}, {results['cores']} cores; {args.file}, first {len(data):,} bytes, level "
          f"{args.level} -> {len(expected):,} bytes; fastest of {args.runs} runs; load average before "
          f"{results['load_average_before'][0]:.1f}, after {results['load_average_after'][0]:.1f}")
    for name, value in seconds.items():
        print(f"  {name:<18} {value:7.2f} s  {len(data) / value / 1000:.2f} kB/s")
    print(f"  speed-up 1 -> 2 workers: {results['speedup']:.2f}x")


if __name__ == "__main__":
    main_benchmark()
