#!/usr/bin/env python3
"""Peak memory of the llmzip command line against input size: it must not grow with the input.

Each case runs `llmzip` in a child process under /usr/bin/time and reads its peak resident set
size (maximum RSS). Inputs are generated in the scratch directory:

- binary: non-text data (records in mostly-zero 4 KiB pages), which goes through the raw/xz
  path; sizes default to 16 MiB, 128 MiB and 1 GiB;
- text: random words, which go through the model path (float engine, tiny model, one
  thread); model inference on CPU is slow, so sizes default to 256 KiB, 1 MiB and 2 MiB.

Every case compresses from a file and from standard input, decompresses from a file and from
standard input, and checks the decompressed bytes against the input's SHA-256.

    python scripts/memory_check.py [--binary-mib 16 128 1024] [--text-kib 256 1024 2048] [--model DIR]
                                   [--scratch DIR] [--report FILE.json]

Without --model, a tiny random model is built in the scratch directory (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
BLOCK = 1 << 20


def write_binary(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as stream:
        for index in range(0, size, BLOCK):
            block = bytearray(min(BLOCK, size - index))
            for page in range(0, len(block) - 16, 4096):
                struct.pack_into("<QQ", block, page, index + page, (index + page) * 2654435761 % (1 << 64))
            digest.update(block)
            stream.write(block)
    return digest.hexdigest()


def write_text(path: Path, size: int, seed: int = 0) -> str:
    sys.path.insert(0, str(REPOSITORY / "scripts"))
    from fuzz_decoder import WORDS

    rng = random.Random(seed)
    data = bytearray()
    while len(data) < size:
        data += (" ".join(rng.choice(WORDS) for _ in range(12)) + ".\n").encode()
    data = bytes(data[:size])
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def measure(command: list[str], stdin: Path | None = None, stdout: Path | None = None) -> dict:
    """Run a command under /usr/bin/time; its peak RSS in MiB and wall time."""
    report = Path(tempfile.mktemp(suffix=".time"))
    started = time.monotonic()
    with open(stdin or os.devnull, "rb") as source, open(stdout or os.devnull, "wb") as destination:
        completed = subprocess.run(["/usr/bin/time", "-o", str(report), "-f", "%M"] + command, stdin=source,
                                   stdout=destination, stderr=subprocess.PIPE)
    seconds = time.monotonic() - started
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr.decode()[-2000:]}")
    peak_kib = int(report.read_text().split()[-1])
    report.unlink()
    return {"peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(seconds, 1)}


def run_case(kind: str, size: int, scratch: Path, model: str, model_only: bool = False) -> dict:
    source = scratch / f"{kind}-{size}.bin"
    expected = write_binary(source, size) if kind == "binary" else write_text(source, size)
    packed, unpacked = scratch / "packed.llmz", scratch / "unpacked.bin"
    llmzip = [sys.executable, "-m", "llmzip.cli", "-q", "-m", model, "--engine", "float", "-T", "1"]
    result = {"kind": kind, "size_bytes": size, "model_only": model_only}
    compress = llmzip + (["--model-only"] if model_only else [])
    result["compress_file"] = measure(compress + ["-f", "-o", str(packed), str(source)])
    result["compress_stdin"] = measure(compress + ["-c"], stdin=source, stdout=scratch / "packed-stdin.llmz")
    result["compressed_bytes"] = packed.stat().st_size
    result["decompress_file"] = measure(llmzip + ["-d", "-f", "-o", str(unpacked), str(packed)])
    if file_sha256(unpacked) != expected:
        raise SystemExit(f"{kind} {size}: decompressed file differs from the input")
    result["decompress_stdin"] = measure(llmzip + ["-d", "-c"], stdin=scratch / "packed-stdin.llmz", stdout=unpacked)
    if file_sha256(unpacked) != expected:
        raise SystemExit(f"{kind} {size}: decompressed standard output differs from the input")
    from llmzip import info

    with open(packed, "rb") as stream:
        result["chunks"] = info(stream).chunks
    for path in (source, packed, unpacked, scratch / "packed-stdin.llmz"):
        path.unlink(missing_ok=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary-mib", type=int, nargs="*", default=[16, 128, 1024])
    parser.add_argument("--text-kib", type=int, nargs="*", default=[256, 1024, 2048])
    parser.add_argument("--model", help="native model directory (default: build a tiny random one)")
    parser.add_argument("--scratch", type=Path, help="where inputs are generated (default: a temporary directory)")
    parser.add_argument("--model-only", action="store_true",
                        help="no xz fallback for text, so decompression runs the model too "
                             "(a random tiny model loses to xz)")
    parser.add_argument("--report", type=Path, help="append each case as a JSON line here too")
    args = parser.parse_args(argv)
    if not shutil.which("/usr/bin/time"):
        raise SystemExit("needs /usr/bin/time (Debian package 'time')")
    scratch = Path(tempfile.mkdtemp(prefix="llmzip-memory-", dir=args.scratch))
    try:
        model = args.model
        if model is None:
            sys.path.insert(0, str(REPOSITORY / "tests"))
            from conftest import make_model_directory

            model = str(make_model_directory(scratch / "tiny"))
        cases = [("text", kib << 10) for kib in args.text_kib] + [("binary", mib << 20) for mib in args.binary_mib]
        for kind, size in cases:
            result = run_case(kind, size, scratch, model, args.model_only)
            line = json.dumps(result)
            print(line, flush=True)
            if args.report:
                with open(args.report, "a") as stream:
                    stream.write(line + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
