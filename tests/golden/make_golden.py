"""Rebuild the golden files of the current format version. Run only on purpose: a changed golden
file means a changed format. The version 1 files (NAME.llmz) are never rebuilt.

    python tests/golden/make_golden.py
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import llmzip  # noqa: E402
from conftest import SAMPLE_TEXT, make_model_directory  # noqa: E402

SAMPLES = {
    "text": (SAMPLE_TEXT * 2).encode(),
    "binary": bytes(range(256)) * 2 + b"\x00\xff" * 50,
}


def main() -> None:
    # The model is made once: the version 1 files need these very weights.
    model = HERE / "model"
    if not model.exists():
        make_model_directory(model)
    for name, data in SAMPLES.items():
        (HERE / f"{name}.bin").write_bytes(data)
        packed = llmzip.compress(data, model=str(model), engine="exact", device="cpu", batch_size=4, xz_fallback=False)
        (HERE / f"{name}.v2.llmz").write_bytes(packed)
        print(name, len(data), "->", len(packed))


if __name__ == "__main__":
    main()
