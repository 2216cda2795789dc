#!/usr/bin/env python3
"""Assemble the training corpus for llmzip's built-in models, reproducibly.

Sources, in this order:
- every file of corpora/train (files of 1 MiB or more are stored as .xz);
- text from a few Debian packages fetched with `apt-get download`: the Python documentation
  sources (reStructuredText), the Python standard library, the Linux manual pages (groff
  source) and the C headers of libc, OpenSSL, SQLite and zlib.

Every file is cut into segments of about 64 KiB at line ends. A segment is dropped when it
shares long passages with any file of corpora/bench: 50-byte shingles are taken at
content-defined anchors (so a copied passage yields the same shingles on both sides) and
hashed; shingles that repeat inside bench itself (XML and licence boilerplate) do not count.

Output (data/ is ignored by git): data/corpus/NN-SOURCE.txt shards, data/corpus_report.md,
and the SHA-256 of the shards in order.

    python scripts/build_corpus.py [--corpora /work/shared/corpora] [--output data]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import lzma
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHINGLE_BYTES = 50
ANCHOR_MODULUS = 16  # about one shingle in 16 positions is kept
SEGMENT_BYTES = 64 * 1024
MIN_HITS_TO_DROP = 2  # a single shared 50-byte shingle is usually a stock phrase
# Licence headers and wiki metadata (<contributor> blocks) share a few shingles with bench without
# sharing content; a copied passage shares a sizeable share of a segment's shingles.
MIN_SHARE_TO_DROP = 0.02
HASH_MULTIPLIER = np.uint64(1099511628211)


@dataclass
class Package:
    name: str  # Debian package
    source: str  # shard name
    suffixes: tuple[str, ...]  # files kept, by how their path ends
    under: str  # only files below this path inside the package
    exclude: tuple[str, ...] = ()  # path fragments to skip
    cap_bytes: int = 16 * 1024 * 1024  # most bytes kept, whole files in sorted order


PACKAGES = [
    Package("python3.11-doc", "python-doc", (".rst.txt",), "usr/share/doc/python3.11/html/_sources"),
    Package("libpython3.11-stdlib", "python-stdlib", (".py",), "usr/lib/python3.11",
            exclude=("/test/", "/tests/", "/idle_test/", "/lib2to3/tests/")),
    Package("manpages", "manpages", (".gz",), "usr/share/man"),
    Package("manpages-dev", "manpages", (".gz",), "usr/share/man"),
    Package("libc6-dev", "c-headers", (".h",), "usr/include"),
    Package("libssl-dev", "c-headers", (".h",), "usr/include"),
    Package("libsqlite3-dev", "c-headers", (".h",), "usr/include"),
    Package("zlib1g-dev", "c-headers", (".h",), "usr/include"),
]


@dataclass
class Source:
    name: str
    documents: list[tuple[str, bytes]] = field(default_factory=list)  # (label, bytes)
    origin: str = ""


# ---------------------------------------------------------------- reading

def read_corpus_file(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.suffix == ".xz" else data


def train_sources(corpora: Path) -> list[Source]:
    sources = []
    train = corpora / "train"
    for folder in sorted(path for path in train.iterdir() if path.is_dir()):
        source = Source(f"train-{folder.name}", origin=str(folder))
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            source.documents.append((str(path.relative_to(corpora)), read_corpus_file(path)))
        sources.append(source)
    return sources


def package_files(package: Package, work: Path) -> tuple[list[tuple[str, bytes]], str]:
    """Files of a Debian package that match, and the package's version; ([], reason) on failure."""
    work = work.resolve()
    download = work / "download"
    download.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", package.name], cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob(f"{package.name}_*.deb"))
    if result.returncode != 0 or not debs:
        return [], f"apt-get download failed: {result.stderr.strip()[-200:]}"
    deb = debs[-1]
    extracted = work / "extracted" / package.name
    if not extracted.exists():
        extracted.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], capture_output=True, text=True)
        if result.returncode != 0:
            return [], f"dpkg-deb failed: {result.stderr.strip()[-200:]}"
    root = extracted / package.under
    files = []
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = "/" + str(path.relative_to(extracted))
        if not relative.endswith(package.suffixes) or any(part in relative for part in package.exclude):
            continue
        data = path.read_bytes()
        if relative.endswith(".gz"):
            data = gzip.decompress(data)
        if total + len(data) > package.cap_bytes:
            break
        files.append((f"{package.name}:{relative}", data))
        total += len(data)
    return files, deb.name


# ---------------------------------------------------------------- overlap

def segments(data: bytes) -> list[bytes]:
    """Cut into pieces of about SEGMENT_BYTES, ending at a newline where one is near."""
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + SEGMENT_BYTES, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start + SEGMENT_BYTES // 2, end)
            if newline != -1:
                end = newline + 1
        pieces.append(data[start:end])
        start = end
    return pieces


def shingle_hashes(data: bytes) -> np.ndarray:
    """Hashes of the 50-byte shingles that start at content-defined anchors (uint64, with repeats)."""
    values = np.frombuffer(data, dtype=np.uint8)
    if len(values) < SHINGLE_BYTES:
        return np.zeros(0, dtype=np.uint64)
    count = len(values) - SHINGLE_BYTES + 1
    # Anchor on a hash of the 4 bytes at the start, so the choice depends on content only.
    gram = (values[:count].astype(np.uint32) * 16777619) ^ (values[1:count + 1].astype(np.uint32) * 2166136261)
    gram ^= values[2:count + 2].astype(np.uint32) * 40503
    gram ^= values[3:count + 3].astype(np.uint32) * 69069
    gram ^= gram >> 13
    anchors = np.flatnonzero(gram % ANCHOR_MODULUS == 0)
    hashes = np.zeros(len(anchors), dtype=np.uint64)
    distinct = np.zeros(len(anchors), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(SHINGLE_BYTES):
            column = values[anchors + offset].astype(np.uint64)
            hashes = hashes * HASH_MULTIPLIER + column + np.uint64(1)
            distinct |= np.uint64(1) << (column & np.uint64(63))
    # Runs of one or two characters (rules, padding, zeros) say nothing about shared text.
    bits = np.array([bin(int(value)).count("1") for value in range(256)], dtype=np.uint8)
    popcount = sum(bits[((distinct >> np.uint64(8 * k)) & np.uint64(255)).astype(np.int64)].astype(np.int64)
                   for k in range(8))
    return hashes[popcount >= 6]


def count_hits(hashes: np.ndarray, bench_sorted: np.ndarray) -> int:
    positions = np.searchsorted(bench_sorted, hashes).clip(max=len(bench_sorted) - 1)
    return int((bench_sorted[positions] == hashes).sum())


def bench_shingles(corpora: Path) -> tuple[np.ndarray, int, list[str]]:
    """Shingles of bench/ that occur at most twice there (so stock boilerplate does not count)."""
    names = []
    parts = []
    for path in sorted(p for p in (corpora / "bench").rglob("*") if p.is_file()):
        names.append(str(path.relative_to(corpora)))
        parts.append(shingle_hashes(read_corpus_file(path)))
    everything = np.concatenate(parts)
    unique, counts = np.unique(everything, return_counts=True)
    return unique[counts <= 2], len(unique), names


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path("/work/shared/corpora"))
    parser.add_argument("--output", type=Path, default=Path("data"))
    parser.add_argument("--no-packages", action="store_true", help="use corpora/train only")
    args = parser.parse_args(argv)

    corpus_directory = args.output / "corpus"
    corpus_directory.mkdir(parents=True, exist_ok=True)
    for old in corpus_directory.glob("*.txt"):
        old.unlink()

    print("reading corpora/train ...", file=sys.stderr)
    sources = train_sources(args.corpora)
    package_notes = []
    if not args.no_packages:
        work = args.output / "debian"
        by_name: dict[str, Source] = {}
        for package in PACKAGES:
            print(f"fetching {package.name} ...", file=sys.stderr)
            files, note = package_files(package, work)
            if not files:
                print(f"  skipped {package.name}: {note}", file=sys.stderr)
                package_notes.append(f"{package.name}: skipped ({note})")
                continue
            size = sum(len(data) for _, data in files)
            package_notes.append(f"{note}: {len(files)} files, {size:,} bytes")
            source = by_name.setdefault(package.source, Source(f"deb-{package.source}", origin="Debian"))
            source.documents.extend(files)
        sources.extend(by_name.values())

    print("hashing corpora/bench ...", file=sys.stderr)
    bench, bench_unique, bench_names = bench_shingles(args.corpora)
    print(f"  {len(bench):,} bench shingles kept of {bench_unique:,} distinct", file=sys.stderr)

    rows = []
    dropped_labels = []
    digest = hashlib.sha256()
    total_kept = total_dropped = 0
    for index, source in enumerate(sources):
        kept = bytearray()
        dropped_bytes = dropped_segments = all_segments = single_hit_segments = 0
        for label, data in source.documents:
            for number, piece in enumerate(segments(data)):
                all_segments += 1
                hashes = shingle_hashes(piece)
                hits = count_hits(hashes, bench)
                share = hits / max(1, len(hashes))
                if hits >= MIN_HITS_TO_DROP and share >= MIN_SHARE_TO_DROP:
                    dropped_bytes += len(piece)
                    dropped_segments += 1
                    dropped_labels.append(f"{label} segment {number} ({len(piece):,} B, "
                                          f"{hits} shared shingles = {share:.1%})")
                    continue
                single_hit_segments += hits > 0
                kept += piece
            if not kept.endswith(b"\n"):
                kept += b"\n"
        shard = corpus_directory / f"{index:02d}-{source.name}.txt"
        shard.write_bytes(bytes(kept))
        digest.update(bytes(kept))
        total_kept += len(kept)
        total_dropped += dropped_bytes
        rows.append((shard.name, len(source.documents), len(kept), all_segments, dropped_segments, dropped_bytes,
                     single_hit_segments))
        print(f"  {shard.name}: {len(kept):,} bytes kept, {dropped_segments} of {all_segments} segments dropped",
              file=sys.stderr)

    lines = [
        "# Training corpus report",
        "",
        f"Built by scripts/build_corpus.py. Shards in data/corpus/, concatenated SHA-256 `{digest.hexdigest()}`.",
        f"Total kept: {total_kept:,} bytes ({total_kept / 2**20:.1f} MiB); "
        f"dropped for overlap with bench/: {total_dropped:,} bytes.",
        "",
        "| shard | documents | bytes kept | segments | dropped | bytes dropped | kept segments sharing a shingle |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {docs} | {kept:,} | {segs} | {drop} | {drop_bytes:,} | {single} |"
              for name, docs, kept, segs, drop, drop_bytes, single in rows]
    lines += [
        "",
        "## Overlap check",
        f"{len(bench_names)} bench files hashed. Shingles: {SHINGLE_BYTES} bytes at content-defined anchors "
        f"(1 in {ANCHOR_MODULUS} positions), at least 6 distinct byte values; shingles seen more than twice in "
        f"bench are boilerplate and ignored. Training text is cut into ~{SEGMENT_BYTES // 1024} KiB segments at "
        f"line ends; a segment sharing {MIN_HITS_TO_DROP} or more shingles with bench, and at least "
        f"{MIN_SHARE_TO_DROP:.0%} of its shingles, is dropped "
        "(below that the shared shingles are licence headers and wiki metadata such as <contributor> blocks).",
        "",
        "Dropped segments:" if dropped_labels else "No segment was dropped.",
    ]
    lines += [f"- {label}" for label in dropped_labels[:200]]
    if len(dropped_labels) > 200:
        lines.append(f"- ... and {len(dropped_labels) - 200} more")
    lines += ["", "## Debian packages", ""] + [f"- {note}" for note in package_notes or ["none (--no-packages)"]]
    report = "\n".join(lines) + "\n"
    (args.output / "corpus_report.md").write_text(report)
    print(report)
    print(f"sha256 {digest.hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
