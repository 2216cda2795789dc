"""Whether the encoder's choice keeps its promise: with the online model on (the default), no file
comes out more than 0.1% larger than with `--no-online`.

    python benchmarks/online_gain.py --level 1 --modes alone,online \\
        --results benchmarks/results/online_choice_level1.jsonl FILES...
    python benchmarks/online_choice.py benchmarks/results/online_choice_level1.jsonl ... \\
        > benchmarks/results/online_choice.md

Reads the decode-verified measurements of online_gain.py (modes `alone` and `online`, the default
xz fallback) and prints one Markdown table: both sizes, their ratio, and whether the online model
was kept (its bits differ from the model's alone). Exits 1 if a file is more than 0.1% larger.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LIMIT = 1.001


def main(argv: list[str]) -> int:
    rows = [json.loads(line) for name in argv for line in Path(name).read_text().splitlines() if line.strip()]
    pairs: dict = {}
    for row in rows:
        pairs.setdefault((row["level"], row["file"], row["raw_bytes"]), {})[row["mode"]] = row
    lines = ["# The online model kept only where it pays (decode verified)", "",
             "Bytes of the whole `.llmz` file with the model alone (`--no-online`) and with the default "
             "(the online model, kept by the encoder only where the file comes out smaller with it); "
             f"ratio = default / alone, at most {LIMIT} promised. *kept*: the default file uses the online model. "
             "Seconds: compress + decompress (a shared, busy 2-core machine: rough).",
             "",
             "| level | file | bytes | alone | default | ratio | kept | seconds alone → default |",
             "|---:|---|---:|---:|---:|---:|---|---|"]
    worst = 0.0
    for (level, name, raw), modes in sorted(pairs.items()):
        if "alone" not in modes or "online" not in modes:
            continue
        alone, default = modes["alone"], modes["online"]
        ratio = default["bytes"] / alone["bytes"]
        worst = max(worst, ratio)
        kept = "yes" if default["model_bits"] != default["model_alone_bits"] else "no"
        times = (f"{alone['compress_seconds']:.0f}+{alone['decompress_seconds']:.0f} → "
                 f"{default['compress_seconds']:.0f}+{default['decompress_seconds']:.0f}")
        if alone.get("sample"):
            name += f" (first {raw:,} bytes)"
        lines.append(f"| {level} | {name} | {raw:,} | {alone['bytes']:,} | {default['bytes']:,} | {ratio:.4f} | {kept} "
                     f"| {times} |")
    lines += ["", f"Largest ratio: {worst:.4f}."]
    print("\n".join(lines))
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
