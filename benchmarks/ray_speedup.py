"""Wall-clock speed-up of `llmzip bench --ray` and `llmzip --ray` from 1 to 2 Ray worker processes.

    .venv/bin/python benchmarks/ray_speedup.py [--bytes 40000] [--files 4] [--runs 3] [--out DIR]

The work: the first --bytes bytes of --files text files of ../shared/corpora/bench with
llmzip-tiny (level 1), every text chunk model-coded. Measured, each on a local Ray cluster of 1
and then 2 worker slots (one worker process per slot, one thread each):
- bench: `llmzip bench --ray --shard-bytes` over the files cut in half, so 2 x --files round trips
  (compress, decompress, compare), none from the cache;
- compress: `llmzip --ray -1` over the files, one task per file.
Each is run once to start the workers and load the model, then --runs times; the fastest run is
kept (on a shared machine the fastest is the one least disturbed by other work). For reference,
the same work without Ray in this process on 1 thread. Every compressed file is compared with a
local run's bytes, and the bench rows with each other. For bench it also reports the round trips'
own times added up, and so how many ran at a time: when two ran at once but the run was not twice
as fast, each got less CPU than alone (other work on the machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command line sets it

import ray  # noqa: E402

from llmzip import api, bench  # noqa: E402
from llmzip.cli import main  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "bench"
SOURCES = ["canterbury/alice29.txt", "canterbury/lcet10.txt", "canterbury/plrabn12.txt", "calgary/book1",
           "calgary/book2", "canterbury/asyoulik.txt"]


def fastest(runs: int, action) -> tuple[float, object]:
    """The fastest wall-clock time of `runs` runs, and what that run's action returned."""
    action()  # workers started and the model loaded: not what is being measured
    timed = []
    for _ in range(runs):
        started = time.perf_counter()
        value = action()
        timed.append((time.perf_counter() - started, value))
    return min(timed, key=lambda pair: pair[0])


def run_quietly(argv: list[str]) -> None:
    if main(argv) != 0:
        raise SystemExit(f"llmzip {' '.join(argv)} failed")


def bench_argv(files: list[Path], out: Path, shard_bytes: int) -> list[str]:
    return ["bench", *map(str, files), "--models", "llmzip-tiny", "--baselines", "", "--model-only", "--no-cache",
            "--no-plots", "-q", "-T", "1", "--shard-bytes", str(shard_bytes), "--out", str(out)]


def bits(out: Path) -> list:
    rows = json.loads((out / "results.json").read_text())["rows"]
    return [(row["file"], row["compressed_bytes"], row["verified"]) for row in rows]


def task_seconds(out: Path) -> float:
    """The round trips' own times added up: what the tasks took, wherever and whenever they ran."""
    rows = json.loads((out / "results.json").read_text())["rows"]
    return sum(row["compress_seconds"] + row["decompress_seconds"] for row in rows if row["scope"] == "file")


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=40000, help="bytes taken from each file")
    parser.add_argument("--files", type=int, default=4, help="how many files")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per setting; the fastest is kept")
    parser.add_argument("--out", default="benchmarks/results", help="where ray_speedup.json goes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmzip-ray-speedup-"))
    files = []
    for source in SOURCES[: args.files]:
        path = work / Path(source).name
        path.write_bytes(bench.read_input(CORPUS / source, args.bytes))
        files.append(path)
    shard_bytes = args.bytes // 2 + args.bytes // 8  # two shards a file
    expected = {path: api.compress(path.read_bytes(), level=1) for path in files}

    def compress_on_ray():
        run_quietly(["--ray", "-1", "-f", "-q", *map(str, files)])
        for path in files:
            if Path(f"{path}.llmz").read_bytes() != expected[path]:
                raise SystemExit(f"{path}: Ray wrote other bytes than a local run: this is a bug")

    results = {"machine": bench.cpu_name(), "cores": os.cpu_count(), "load_average_before": os.getloadavg(),
               "files": [str(p.name) for p in files],
               "bytes_per_file": args.bytes, "shard_bytes": shard_bytes, "runs": args.runs, "seconds": {}}
    local_out = work / "local"

    def bench_run(argv: list[str], out: Path):
        run_quietly(argv)
        return task_seconds(out)

    results["task_seconds"] = {}
    seconds, tasks = fastest(args.runs, lambda: bench_run(bench_argv(files, local_out, shard_bytes), local_out))
    results["seconds"]["bench, no Ray, 1 thread"], results["task_seconds"]["bench, no Ray, 1 thread"] = seconds, tasks
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            out = work / f"ray{workers}"
            name = f"bench, {workers} worker(s)"
            results["seconds"][name], results["task_seconds"][name] = fastest(
                args.runs, lambda: bench_run(bench_argv(files, out, shard_bytes) + ["--ray"], out))
            if bits(out) != bits(local_out):
                raise SystemExit("bench on Ray differs from the local run: this is a bug")
            results["seconds"][f"compress, {workers} worker(s)"] = fastest(args.runs, compress_on_ray)[0]
        finally:
            ray.shutdown()
    results["load_average_after"] = os.getloadavg()  # other work on the machine: context for the times
    seconds = results["seconds"]
    results["speedup"] = {"bench": seconds["bench, 1 worker(s)"] / seconds["bench, 2 worker(s)"],
                          "compress": seconds["compress, 1 worker(s)"] / seconds["compress, 2 worker(s)"]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "ray_speedup.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{results['machine']}, {results['cores']} cores; {len(files)} files x {args.bytes:,} bytes; "
          f"fastest of {args.runs} runs; load average before {results['load_average_before'][0]:.1f}, "
          f"after {results['load_average_after'][0]:.1f}")
    for name, value in seconds.items():
        tasks = results["task_seconds"].get(name)
        # Tasks at a time: above 1 the round trips overlapped; each one's time shows how much CPU it got.
        overlap = f"; round trips {tasks:6.2f} s in all, {tasks / value:.2f} at a time" if tasks else ""
        print(f"  {name:<28} {value:7.2f} s{overlap}")
    print(f"  speed-up 1 -> 2 workers: bench {results['speedup']['bench']:.2f}x, "
          f"compress {results['speedup']['compress']:.2f}x", file=sys.stdout)


if __name__ == "__main__":
    main_benchmark()
