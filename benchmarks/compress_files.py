"""Compress files with one model and report how close the coder gets to the model's cross-entropy.

    python benchmarks/compress_files.py --model llmzip-small ../shared/corpora/bench/canterbury/alice29.txt
    python benchmarks/compress_files.py --model PATH --max-bytes 20000 FILE...

Per file: raw size, compressed size, bits per byte, the cross-entropy bound Σ −log2 p of the
model-coded tokens, the coder's overhead over that bound (in all, and per chunk), compress and
decompress throughput with the device named, and xz -9 / zstd -19 measured in the same run.
Every file is decoded and compared with the input. Text is model-coded throughout (no xz
fallback), so the overhead measured is the coder's alone.
"""

from __future__ import annotations

import argparse
import io
import lzma
import sys
import time
from pathlib import Path

import llmzip
from llmzip.bench import device_description, read_input

CODER_FLUSH_BITS = 32  # a range coder ends each chunk's payload on a whole 32-bit word


def measure_file(compressor: llmzip.Compressor, decompressor: llmzip.Decompressor, data: bytes) -> dict:
    output = io.BytesIO()
    started = time.perf_counter()
    summary = compressor.copy_stream(io.BytesIO(data), output, content_size=len(data))
    compress_seconds = time.perf_counter() - started
    packed = output.getvalue()
    started = time.perf_counter()
    restored = decompressor.decompress(packed)
    decompress_seconds = time.perf_counter() - started
    if restored != data:
        raise SystemExit("decoded output differs from the input: this is a bug")
    payload_bits = 8 * summary.model_payload_bytes
    chunks = summary.chunks["model"]
    overhead_bits = payload_bits - summary.model_bits
    return {
        "raw": len(data),
        "compressed": len(packed),
        "bits_per_byte": 8 * len(packed) / len(data),
        "cross_entropy_bits": summary.model_bits,
        "payload_bits": payload_bits,
        "overhead_percent": 100 * overhead_bits / summary.model_bits if summary.model_bits else 0.0,
        "overhead_beyond_flush_percent": 100 * (overhead_bits - CODER_FLUSH_BITS * chunks) / summary.model_bits
                                         if summary.model_bits else 0.0,
        "overhead_bits_per_chunk": overhead_bits / chunks if chunks else 0.0,
        "model_chunks": chunks,
        "compress_bytes_per_second": len(data) / compress_seconds,
        "decompress_bytes_per_second": len(data) / decompress_seconds,
        "xz_9": len(lzma.compress(data, preset=9)),
        "zstd_19": _zstd_size(data),
    }


def _zstd_size(data: bytes) -> int | None:
    try:
        import zstandard
    except ImportError:
        return None
    return len(zstandard.ZstdCompressor(level=19).compress(data))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", required=True, help="built-in name, model directory or GGUF file")
    parser.add_argument("--engine", default="auto", choices=("auto", "exact", "float"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-bytes", type=int, default=None, help="measure only the first N bytes of each file")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    compressor = llmzip.Compressor(model=args.model, engine=args.engine, device=args.device, batch_size=args.batch_size,
                                   xz_fallback=False)
    decompressor = llmzip.Decompressor(model=args.model, device=args.device)
    device = device_description(str(compressor.engine.settings.get("device", args.device or "cpu")))
    print(f"model {compressor.model.name} ({compressor.model.parameters:,} parameters), "
          f"engine {compressor.engine.settings['kind']}, "
          f"device {device}, chunk {compressor.chunk_tokens} tokens, batch {args.batch_size}")
    header = (f"{'file':<18} {'raw':>9} {'llmzip':>9} {'bpb':>6} {'CE bpb':>6} {'overhead':>9} {'beyond flush':>12} "
              f"{'bits/chunk':>10} {'comp B/s':>9} {'dec B/s':>9} {'xz -9':>9} {'zstd -19':>9}")
    print(header)
    for path in args.files:
        row = measure_file(compressor, decompressor, read_input(path, args.max_bytes))
        print(f"{path.name[:18]:<18} {row['raw']:>9,} {row['compressed']:>9,} {row['bits_per_byte']:>6.3f} "
              f"{row['cross_entropy_bits'] / row['raw']:>6.3f} {row['overhead_percent']:>8.3f}% "
              f"{row['overhead_beyond_flush_percent']:>11.3f}% {row['overhead_bits_per_chunk']:>10.1f} "
              f"{row['compress_bytes_per_second']:>9,.0f} {row['decompress_bytes_per_second']:>9,.0f} "
              f"{row['xz_9']:>9,} {row['zstd_19'] if row['zstd_19'] is not None else '-':>9}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
