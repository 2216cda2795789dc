"""Throughput of the GGUF engine's product kernel against what this machine's cores can do at all.

    python benchmarks/product_kernel.py [--tokens 1 16 256] [--repeat 5] [--json FILE]

Speeds measured on a shared machine move with its host: the same code ran at 40 GMAC/s on one
thread one day and at 11 another. So this script first measures the ceiling of the day: a
probe compiled with the system C compiler runs independent `vpmaddwd` (16 int16 multiply-adds
an instruction, what the kernel uses) and `vpmaddubsw` (32 uint8 x int8, what int8 inputs would
allow) with nothing else in the loop, on one core. Then the compiled product kernel runs the
default model's matrix shapes (SmolLM2-135M: Q4_1 q/k/v, output, gate/up and down products, the
Q8_0 output layer) on random codes, for 1 and 2 threads and each number of input rows, with the
inputs of engine version 1 (int16 rows) and, for the 4-bit matrices, of version 2 (int8 blocks),
and each figure is printed with its share of the one-core `vpmaddwd` ceiling. The fastest of
--repeat runs is kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmzip.bench import cpu_name
from llmzip.engine import gguf_llama

# (name, output rows, inputs, quantisation) of one SmolLM2-135M layer and its output layer.
SHAPES = [("qkv", 960, 576, "Q4_1"), ("output", 576, 576, "Q4_1"), ("gate_up", 3072, 576, "Q4_1"),
          ("down", 576, 1536, "Q4_1"), ("head", 49152, 576, "Q8_0")]

PROBE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CHAINS 6
#define LOOPS 50000000L
int main(void) {
    __m256i sums[CHAINS], inputs[CHAINS], weights = _mm256_set1_epi16(3);
    for (int k = 0; k < CHAINS; k++) { sums[k] = _mm256_setzero_si256(); inputs[k] = _mm256_set1_epi16(k + 1); }
    double start = now();
    for (long i = 0; i < LOOPS; i++) {
        __asm__ volatile("" : "+x"(weights)); /* keeps the products inside the loop */
        for (int k = 0; k < CHAINS; k++) sums[k] = _mm256_add_epi32(sums[k], _mm256_madd_epi16(weights, inputs[k]));
    }
    double madd = now() - start;
    start = now();
    for (long i = 0; i < LOOPS; i++) {
        __asm__ volatile("" : "+x"(weights));
        for (int k = 0; k < CHAINS; k++) sums[k] = _mm256_add_epi16(sums[k], _mm256_maddubs_epi16(weights, inputs[k]));
    }
    double maddubs = now() - start;
    __m256i all = sums[0];
    for (int k = 1; k < CHAINS; k++) all = _mm256_add_epi32(all, sums[k]);
    printf("%.6f %.6f %d\n", CHAINS * LOOPS / madd / 1e9, CHAINS * LOOPS / maddubs / 1e9, _mm256_extract_epi32(all, 0));
    return 0;
}
"""


def instruction_ceiling() -> dict | None:
    """Instructions a second on one core: {"vpmaddwd": G/s, "vpmaddubsw": G/s}, or None without a compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        source, binary = Path(directory) / "probe.c", Path(directory) / "probe"
        source.write_text(PROBE)
        subprocess.run([compiler, "-O3", "-mavx2", str(source), "-o", str(binary)], check=True)
        best = (0.0, 0.0)
        for _ in range(3):
            madd, maddubs, _ = subprocess.run([str(binary)], capture_output=True, text=True,
                                              check=True).stdout.split()
            best = max(best[0], float(madd)), max(best[1], float(maddubs))
    return {"vpmaddwd": best[0], "vpmaddubsw": best[1]}


def random_matrix(rows: int, inputs: int, kind: str, rng) -> gguf_llama.QuantisedMatrix:
    blocks = inputs // gguf_llama.BLOCK
    scales = rng.integers(1, 2**15, (rows, blocks))
    if kind == "Q8_0":
        codes = rng.integers(-128, 128, (rows, inputs)).astype(np.int8)
        return gguf_llama.QuantisedMatrix(codes, scales, None, np.zeros(rows, np.int32), signed=True)
    codes = rng.integers(0, 16, (rows, inputs)).astype(np.uint8)
    minimums = rng.integers(-2**15, 2**15, (rows, blocks))
    return gguf_llama.QuantisedMatrix(codes, scales, minimums, np.zeros(rows, np.int32), signed=False)


def product_speed(matrix, tokens: int, threads: int, repeat: int, rng, int8_inputs: bool) -> float:
    """Fastest multiply-adds a second (G/s) of matrix @ `tokens` random int16 rows (taken as int8
    blocks with `int8_inputs`, as engine version 2 does for 4-bit matrices)."""
    products = gguf_llama._Products(compiled=True, threads=threads, int8_inputs=int8_inputs)
    x = torch.from_numpy(rng.integers(-2**15 + 1, 2**15, (tokens, matrix.inputs)).astype(np.int16))
    exponent = torch.zeros(tokens, dtype=torch.int32)
    products.linear(matrix, x, exponent)  # lays the codes out once
    calls = max(1, int(2e8 // (matrix.rows * matrix.inputs * tokens)))  # about 0.2 G multiply-adds a timing
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            products.linear(matrix, x, exponent)
        best = min(best, (time.perf_counter() - started) / calls)
    return matrix.rows * matrix.inputs * tokens / best / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256], help="input rows per product")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=5, help="timings per figure; the fastest is kept")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not gguf_llama.kernels_available():
        raise SystemExit("the compiled kernels are not built (pip install -e .)")

    print(f"Machine: {cpu_name()}")
    ceiling = instruction_ceiling()
    peak = None
    if ceiling is None:
        print("no C compiler: the instruction ceiling is not measured")
    else:
        peak = 16 * ceiling["vpmaddwd"]
        print(f"one core: vpmaddwd {ceiling['vpmaddwd']:.2f} G/s = {peak:.1f} GMAC/s on int16 inputs; "
              f"vpmaddubsw {ceiling['vpmaddubsw']:.2f} G/s = {32 * ceiling['vpmaddubsw']:.1f} GMAC/s on int8")
    rng = np.random.default_rng(0)
    matrices = {name: random_matrix(rows, inputs, kind, rng) for name, rows, inputs, kind in SHAPES}
    figures = []
    print("\n| product | rows x inputs | inputs | tokens | threads | GMAC/s | of one core's vpmaddwd ceiling |")
    print("|---|---|---|---:|---:|---:|---:|")
    for name, rows, inputs, kind in SHAPES:
        for input_kind in ("int16", "int8 blocks") if kind != "Q8_0" else ("int16",):
            for tokens in args.tokens:
                for threads in args.threads:
                    speed = product_speed(matrices[name], tokens, threads, args.repeat, rng, input_kind != "int16")
                    share = f"{speed / peak:.0%}" if peak else "-"
                    print(f"| {name} ({kind}) | {rows} x {inputs} | {input_kind} | {tokens} | {threads} | {speed:.1f} "
                          f"| {share} |", flush=True)
                    figures.append({"product": name, "rows": rows, "inputs": inputs, "kind": kind,
                                    "input": input_kind, "tokens": tokens, "threads": threads, "gmac_per_s": speed})
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_name(), "ceiling": ceiling, "products": figures},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
