"""GGUF files read directly: the exact engine computes with their own quantised integers.

A Llama GGUF whose matrices are Q4_0, Q4_1 or Q8_0 (SmolLM2-135M's are) loads without a float
model: the `gguf` package reads the shape and memory-maps the tensors, and the tokenizer is built
from the file's metadata. A float model (for `--engine float`) is loaded through transformers only
when asked for. Other GGUF files go through transformers as before (see huggingface.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import ModelError
from . import LoadedModel

SHA256_BLOCK = 1 << 20


def content_fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes: a renamed or moved copy is the same model."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(SHA256_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _fast_reader(path: Path):
    """gguf.GGUFReader over a plain ndarray view of its memory map: numpy.memmap's per-slice
    bookkeeping made parsing the 100k tokenizer strings take seconds."""
    import gguf
    import numpy as np

    class Reader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, value):
            self._plain = value.view(np.ndarray)

    return Reader(str(path), "r")


def _tokenizer(model, path: Path):
    """The file's tokenizer as transformers converts it, from metadata this reader already parsed."""
    from .huggingface import _quiet_offline_transformers

    _quiet_offline_transformers()
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:  # another transformers layout: let it read the file itself
        import transformers

        loaded = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            local_files_only=True)
        return loaded.backend_tokenizer
    fields = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        value = model.field(f"tokenizer.{key}")
        if value is not None:
            fields[name] = value
    backend, _ = convert_gguf_tokenizer(model.field("general.architecture"), fields)
    return backend


def load_gguf(path: Path, name: str, source: str = "gguf", origin: dict | None = None) -> LoadedModel | None:
    """The model, or None when the file is not one the GGUF exact engine covers."""
    try:
        import gguf  # noqa: F401

        from ..engine.gguf_llama import GGUFLlama, NotCovered
    except ImportError:
        raise ModelError("reading GGUF files needs the gguf package; install llmzip with the 'hf' extra: "
                         "pip install 'llmzip[hf]'") from None
    # Imported before the reading starts: an exception there (Ctrl-C among others) must not meet an
    # `except` clause naming a class that was never imported.
    try:
        model = GGUFLlama(path, reader=_fast_reader(path))
    except NotCovered:
        return None
    except Exception as error:  # a damaged or truncated file fails in many ways inside the reader
        raise ModelError(f"{path} is not a usable GGUF file ({type(error).__name__}: {error})") from None
    from ..tokenization import ByteTokenizer

    try:
        backend_tokenizer = _tokenizer(model, path)
    except ModelError:
        raise
    except Exception as error:  # the converters raise many kinds for odd metadata
        raise ModelError(f"{path}: cannot build its tokenizer: {error}") from None
    bos, eos = model.field("tokenizer.ggml.bos_token_id"), model.field("tokenizer.ggml.eos_token_id")
    start_token = int(bos if bos is not None else eos if eos is not None else 0)
    loaded = LoadedModel(
        name=name,
        source=source,
        fingerprint=content_fingerprint(path),
        tokenizer=ByteTokenizer(backend_tokenizer, start_token),
        parameters=model.parameters(),
        context_length=model.shape.context_length,
        size_bytes=path.stat().st_size,
        backend=model,
    )
    loaded.origin = origin or {"file": path.name}
    loaded.path = path
    return loaded
