"""The exact engine's code length against float inference of the same model, on the same chunks.

    python benchmarks/exact_vs_float.py smollm2 ../shared/corpora/bench/canterbury/alice29.txt
    python benchmarks/exact_vs_float.py smollm2 FILE --max-bytes 200000 --chunk-tokens 1023

The text is tokenised and cut into chunks as compression cuts them. For every chunk the exact
engine's integer rows give the code length the range coder approaches (Σ −log2 of each token's
share of its row, counted at the coder's 24-bit floor), and the float model (transformers,
float32, the same weights) gives its ideal cross-entropy. Both are reported in bits per byte of
the covered text, with their difference: the price of exactness.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from llmzip import coder, models


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
    args = parser.parse_args(argv)
    loaded = models.load_model(args.model)
    data = args.file.read_bytes()[: args.max_bytes]
    tokens = loaded.tokenizer.tokenize(data)
    chunks = [tokens[start : start + args.chunk_tokens] for start in range(0, len(tokens), args.chunk_tokens)]
    began = time.perf_counter()
    exact = exact_bits(loaded.engine(exact=True, device="cpu"), chunks)
    exact_seconds = time.perf_counter() - began
    began = time.perf_counter()
    ideal = float_bits(loaded.float_backend().to("cpu").eval(), chunks, loaded.tokenizer.start_token)
    float_seconds = time.perf_counter() - began
    result = {
        "file": args.file.name, "bytes": len(data), "tokens": len(tokens), "chunk_tokens": args.chunk_tokens,
        "exact_bits_per_byte": exact / len(data), "float_bits_per_byte": ideal / len(data),
        "difference_percent": 100 * (exact - ideal) / ideal,
        "exact_positions_per_second": len(tokens) / exact_seconds,
        "float_positions_per_second": len(tokens) / float_seconds,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
