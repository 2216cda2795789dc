"""The exact engine's code length against float inference of the same model, on the same chunks.

    python benchmarks/exact_vs_float.py smollm2 ../shared/corpora/bench/canterbury/alice29.txt
    python benchmarks/exact_vs_float.py smollm2 FILE --max-bytes 200000 --chunk-tokens 1023
    python benchmarks/exact_vs_float.py smollm2 FILE --engine-versions 1 2 --repeat 3

The text is tokenised and cut into chunks as compression cuts them. For every chunk the exact
engine's integer rows give the code length the range coder approaches (Σ −log2 of each token's
share of its row, counted at the coder's 24-bit floor), and the float model (transformers,
float32, the same weights) gives its ideal cross-entropy. Both are reported in bits per byte of
the covered text, with their difference: the price of exactness. With --engine-versions, every
listed version of the GGUF exact engine is measured on the same chunks (one copy of the weights),
its speed the fastest of --repeat full passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from llmzip import coder, models
from llmzip.bench import cpu_name


def float_bits(model, chunks: list[np.ndarray], start_token: int) -> float:
    total = 0.0
    with torch.no_grad():
        for chunk in chunks:
            inputs = torch.tensor([[start_token] + chunk[:-1].tolist()])
            logits = model(inputs).logits[0].to(torch.float64)
            log_probs = torch.log_softmax(logits, dim=-1)
            total -= float(log_probs[torch.arange(len(chunk)), torch.from_numpy(chunk)].sum()) / np.log(2)
    return total


def exact_bits(engine, chunks: list[np.ndarray]) -> float:
    total = 0.0
    for index, start, rows in engine.sequence_pieces(chunks):
        total += float(coder.code_length_bits(chunks[index][start : start + len(rows)], rows).sum())
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="smollm2, a built-in name or a model path")
    parser.add_argument("file", type=Path)
    parser.add_argument("--max-bytes", type=int, help="only the first N bytes")
    parser.add_argument("--chunk-tokens", type=int, default=1023)
    parser.add_argument("--engine-versions", type=int, nargs="+", help="GGUF exact engine versions (default: newest)")
    parser.add_argument("--repeat", type=int, default=1, help="full passes per version; the fastest is reported")
    parser.add_argument("--no-float", action="store_true", help="leave out float inference")
    args = parser.parse_args(argv)
    loaded = models.load_model(args.model)
    data = args.file.read_bytes()[: args.max_bytes]
    tokens = loaded.tokenizer.tokenize(data)
    chunks = [tokens[start : start + args.chunk_tokens] for start in range(0, len(tokens), args.chunk_tokens)]
    result = {"file": args.file.name, "bytes": len(data), "tokens": len(tokens), "chunk_tokens": args.chunk_tokens,
              "machine": cpu_name(), "threads": torch.get_num_threads()}
    exact = {}  # label -> bits
    for version in args.engine_versions or [None]:
        engine = loaded.engine(exact=True, device="cpu", version=version)
        label = f"exact_v{engine.settings.get('version')}"
        seconds = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            exact[label] = exact_bits(engine, chunks)
            seconds.append(time.perf_counter() - began)
        result[f"{label}_bits_per_byte"] = exact[label] / len(data)
        result[f"{label}_positions_per_second"] = len(tokens) / min(seconds)
    if not args.no_float:
        began = time.perf_counter()
        ideal = float_bits(loaded.float_backend().to("cpu").eval(), chunks, loaded.tokenizer.start_token)
        result["float_bits_per_byte"] = ideal / len(data)
        result["float_positions_per_second"] = len(tokens) / (time.perf_counter() - began)
        for label, bits in exact.items():
            result[f"{label}_over_float_percent"] = 100 * (bits - ideal) / ideal
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
