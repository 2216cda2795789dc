"""Rebuild the golden files. Run only on purpose: a changed golden file means a changed format.

    python tests/golden/make_golden.py
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import SAMPLE_TEXT, make_model_directory  # noqa: E402

import llmzip  # noqa: E402

SAMPLES = {
    "text": (SAMPLE_TEXT * 2).encode(),
    "binary": bytes(range(256)) * 2 + b"\x00\xff" * 50,
}


def main() -> None:
    model = make_model_directory(HERE / "model")
    for name, data in SAMPLES.items():
        (HERE / f"{name}.bin").write_bytes(data)
        packed = llmzip.compress(data, model=str(model), engine="exact", device="cpu", batch_size=4, xz_fallback=False)
        (HERE / f"{name}.llmz").write_bytes(packed)
        print(name, len(data), "->", len(packed))


if __name__ == "__main__":
    main()
