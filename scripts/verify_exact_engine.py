"""Check that the exact engine gives the same rows on every device and pass shape.

Tokenises a text file with a model's tokenizer (a built-in name, a native model directory, or a
Hugging Face / GGUF Llama model), cuts the tokens into chunks as compression does and computes
every chunk's rows several ways:

- with CUDA: CPU full pass (reference), CUDA full pass, CUDA incremental decoding;
- without:   CPU full pass with 1 thread (reference), with 2 threads, CPU incremental decoding.

Then it compresses the covered text into an .llmz file on one device (or thread count) and
decodes it on the other, both ways, through the public API.

It prints how many positions were compared and how many rows differ in any bit, then the
exact engine's compressed size (through the real coder) against the float model's ideal
cross-entropy on the same text, in bits per byte.

    python scripts/verify_exact_engine.py MODEL TEXT_FILE [--positions 50000] [--engine-version 1]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmzip import coder, models
from llmzip.api import MAX_CHUNK_TOKENS


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model",
                        help="built-in model name, native model directory, Hugging Face directory or GGUF file")
    parser.add_argument("text", type=Path, help="UTF-8 text file to tokenise")
    parser.add_argument("--positions", type=int, default=50_000, help="positions to compare (default 50000)")
    parser.add_argument("--incremental-positions", type=int, default=None,
                        help="positions to decode incrementally (default: all of them)")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="tokens per chunk (default: as compression, the context less one, "
                             "at most %d)" % MAX_CHUNK_TOKENS)
    parser.add_argument("--batch-size", type=int, default=64, help="chunks per incremental session (default 64)")
    parser.add_argument("--round-trip-bytes", type=int, default=100_000,
                        help="bytes of the text compressed on one device and decoded on the other (default 100000)")
    parser.add_argument("--cpu-only", action="store_true", help="do not use CUDA even when it is available")
    parser.add_argument("--engine-version", type=int, default=None,
                        help="the GGUF exact engine's version to check (default: the newest, what llmzip writes)")
    return parser.parse_args(argv)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_chunks(tokenizer, text_path: Path, positions: int, chunk_length: int):
    """Token chunks covering the first `positions` tokens, and the number of text bytes they cover."""
    ids = tokenizer.tokenize(text_path.read_bytes())[:positions]
    if len(ids) < positions:
        print(f"note: the text has only {len(ids)} tokens", file=sys.stderr)
    covered_bytes = sum(len(tokenizer.token_bytes[token]) for token in ids.tolist())
    chunks = [ids[start : start + chunk_length] for start in range(0, len(ids), chunk_length)]
    return chunks, covered_bytes


def full_pass(engine, chunks) -> tuple[list[np.ndarray], float]:
    began = time.perf_counter()
    rows = engine.sequence_weights(chunks)
    return rows, time.perf_counter() - began


def incremental(engine, chunks, batch_size: int) -> tuple[list[np.ndarray], float]:
    """Decode each chunk one position at a time, `batch_size` chunks per session."""
    began = time.perf_counter()
    results = []
    for first in range(0, len(chunks), batch_size):
        batch = chunks[first : first + batch_size]
        longest = max(len(chunk) for chunk in batch)
        inputs = np.full((len(batch), longest), engine.start_token, dtype=np.int64)
        for row, chunk in enumerate(batch):
            inputs[row, 1 : len(chunk)] = chunk[:-1]
        session = engine.start(len(batch))
        steps = np.stack([session.advance(inputs[:, t]) for t in range(longest)], axis=1)  # (B, T, V)
        results += [steps[row, : len(chunk)] for row, chunk in enumerate(batch)]
    return results, time.perf_counter() - began


def compare(name: str, reference, candidate) -> int:
    positions = sum(len(rows) for rows in candidate)
    mismatches = sum(int((a != b).any(axis=1).sum()) for a, b in zip(reference, candidate))
    print(f"{name}: {positions} positions compared, {mismatches} mismatching rows")
    return mismatches


def float_bits(model, chunks, start_token: int, device) -> float:
    """The float model's ideal code length: -log2 softmax(logits)[token], summed."""
    model = model.to(device)
    total = 0.0
    with torch.no_grad():
        for chunk in chunks:
            inputs = torch.from_numpy(np.concatenate([[start_token], chunk[:-1]])).to(device)[None]
            output = model(inputs)
            logits = getattr(output, "logits", output)  # Hugging Face models return an output object
            log_p = torch.log_softmax(logits[0].double(), dim=-1)
            total -= float(log_p[torch.arange(len(chunk), device=device), torch.from_numpy(chunk).to(device)].sum())
    model.to("cpu")
    return total / math.log(2)


def coded_bits(chunks, rows) -> int:
    """Size of the exact engine's rows through the real range coder, all chunks in one payload."""
    encoder = coder.Encoder()
    for chunk, weights in zip(chunks, rows):
        encoder.encode(chunk, weights)
    return 8 * len(encoder.finish())


def rate(size: int, seconds: float) -> str:
    return f"{seconds:.1f} s, {size / seconds / 1000:.3g} KB/s"


def cross_round_trip(model_name: str, data: bytes, chunk_tokens: int, settings: list[tuple[str, str, int]]) -> int:
    """Compress with each setting and decode with every other; the number of failed round trips."""
    import llmzip

    failures = 0
    for name, device, threads in settings:
        torch.set_num_threads(threads)
        began = time.perf_counter()
        packed = llmzip.compress(data, model=model_name, engine="exact", device=device, chunk_tokens=chunk_tokens,
                                 xz_fallback=False)
        seconds = time.perf_counter() - began
        print(f"compressed on {name}: {len(data)} -> {len(packed)} bytes "
              f"({8 * len(packed) / len(data):.4f} bits/byte), "
              f"{rate(len(data), seconds)}")
        for other_name, other_device, other_threads in settings:
            if other_name == name:
                continue
            torch.set_num_threads(other_threads)
            began = time.perf_counter()
            try:
                same = llmzip.decompress(packed, model=model_name, device=other_device) == data
            except llmzip.LLMZipError as error:
                same, _ = False, print(f"  decode failed: {error}")
            seconds = time.perf_counter() - began
            failures += not same
            print(f"  decoded on {other_name}: {'identical' if same else 'DIFFERENT'}, {rate(len(data), seconds)}")
    return failures


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    loaded = models.load_model(arguments.model)
    start_token = loaded.tokenizer.start_token
    limit = min(loaded.context_length - 1, MAX_CHUNK_TOKENS)
    chunk_length = min(arguments.chunk_tokens or limit, limit)
    chunks, covered_bytes = load_chunks(loaded.tokenizer, arguments.text, arguments.positions, chunk_length)
    incremental_chunks = chunks
    if arguments.incremental_positions is not None:
        incremental_chunks = chunks[: max(1, math.ceil(arguments.incremental_positions / chunk_length))]
    use_cuda = torch.cuda.is_available() and not arguments.cpu_only
    print(f"model: {arguments.model} ({loaded.source}, {loaded.parameters:,} parameters, "
          f"context {loaded.context_length}, "
          f"chunks of {chunk_length} tokens)")
    print(f"text: {arguments.text}: {sum(map(len, chunks))} positions in {len(chunks)} chunks, {covered_bytes} bytes")
    print(f"torch {torch.__version__}; CPU: {cpu_name()}, {torch.get_num_threads()} threads")

    mismatches = 0
    if loaded.source == "gguf":  # the compiled kernels against their torch twins, on this CPU
        from llmzip.engine.gguf_llama import ExactGGUFLlamaEngine

        twin = ExactGGUFLlamaEngine(loaded.backend, start_token=start_token, context_length=loaded.context_length,
                                    reference=True)
        if arguments.engine_version is not None:
            twin = twin.with_version(arguments.engine_version)
        compiled_engine = loaded.engine(exact=True, device="cpu", version=arguments.engine_version)
        compiled, seconds = full_pass(compiled_engine, chunks[:1])
        print(f"CPU compiled kernels, full pass: {len(chunks[0]) / seconds:.0f} positions/s")
        rows, seconds = full_pass(twin, chunks[:1])
        print(f"CPU torch reference, full pass: {len(chunks[0]) / seconds:.0f} positions/s")
        mismatches += compare("CPU compiled kernels vs torch reference (first chunk)", compiled, rows)
        del twin
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"CUDA: {torch.cuda.get_device_name()}")
        cpu_engine = loaded.engine(exact=True, device="cpu", version=arguments.engine_version)
        reference, seconds = full_pass(cpu_engine, chunks)
        print(f"CPU full pass: {sum(map(len, chunks)) / seconds:.0f} positions/s")
        cuda_engine = loaded.engine(exact=True, device="cuda", version=arguments.engine_version)
        full_pass(cuda_engine, chunks[:1])  # warm-up
        rows, seconds = full_pass(cuda_engine, chunks)
        print(f"CUDA full pass: {sum(map(len, chunks)) / seconds:.0f} positions/s")
        mismatches += compare("CPU full pass vs CUDA full pass", reference, rows)
        rows, seconds = incremental(cuda_engine, incremental_chunks, arguments.batch_size)
        print(f"CUDA incremental: {sum(map(len, rows)) / seconds:.0f} positions/s")
        mismatches += compare("CPU full pass vs CUDA incremental", reference, rows)
    else:
        print("CUDA: not available; comparing CPU thread counts and pass shapes")
        engine = loaded.engine(exact=True, device="cpu", version=arguments.engine_version)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            reference, seconds = full_pass(engine, chunks)
            print(f"CPU full pass, 1 thread: {sum(map(len, chunks)) / seconds:.0f} positions/s")
            torch.set_num_threads(2)
            rows, seconds = full_pass(engine, chunks)
            print(f"CPU full pass, 2 threads: {sum(map(len, chunks)) / seconds:.0f} positions/s")
            mismatches += compare("CPU 1 thread vs 2 threads", reference, rows)
        finally:
            torch.set_num_threads(threads)
        rows, seconds = incremental(engine, incremental_chunks, arguments.batch_size)
        print(f"CPU incremental: {sum(map(len, rows)) / seconds:.0f} positions/s")
        mismatches += compare("CPU full pass vs CPU incremental", reference, rows)

    text_bytes = arguments.text.read_bytes()[: min(covered_bytes, arguments.round_trip_bytes)]
    threads = torch.get_num_threads()
    if use_cuda:
        settings = [("CUDA", "cuda", threads), ("CPU", "cpu", threads)]
    else:
        settings = [("CPU, 1 thread", "cpu", 1), ("CPU, 2 threads", "cpu", 2)]
    mismatches += cross_round_trip(arguments.model, text_bytes, chunk_length, settings)
    torch.set_num_threads(threads)

    exact = coded_bits(chunks, reference) / max(1, covered_bytes)
    ideal = (float_bits(loaded.float_backend(), chunks, start_token, "cuda" if use_cuda else "cpu")
             / max(1, covered_bytes))
    print(f"bits per byte: exact engine {exact:.4f} (coded), float model {ideal:.4f} (ideal), "
          f"difference {exact - ideal:+.4f}")
    print("RESULT:", "all rows identical, every file decoded" if mismatches == 0
          else f"{mismatches} mismatching rows or failed round trips")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
