"""Model backends behind one small interface, and how a name or path becomes a model.

A model gives a byte-exact tokenizer, a fingerprint (SHA-256 of weights and tokenizer) and
an engine that turns token prefixes into coder weights. Three sources exist:
- built-in native models shipped in the package (`llmzip-small`, ...), by name;
- a native model directory (config.json with architecture "llmzip-gpt");
- any local Hugging Face causal LM directory or GGUF file, loaded offline with transformers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..tokenization import ByteTokenizer

BUILTIN_DIRECTORY = Path(__file__).resolve().parent.parent / "builtin"
# Compression levels pick a built-in model: the level's wish if installed, else the nearest
# installed one, larger first. llmzip-small is not a level: llmzip-tiny, trained longer on an
# idle machine, compresses better and faster (see its model card); it stays installed by name.
LEVEL_MODELS = {1: "llmzip-tiny", 2: "llmzip-tiny", 3: "llmzip-tiny", 4: "llmzip-tiny", 5: "llmzip-base",
                6: "llmzip-base", 7: "llmzip-large", 8: "llmzip-large", 9: "llmzip-large"}
FAMILY = ["llmzip-tiny", "llmzip-base", "llmzip-large"]  # the levels' models, smallest first
DEFAULT_LEVEL = 5


@dataclass
class LoadedModel:
    name: str  # what a user types to get it: a built-in name or the path given
    source: str  # "builtin", "native" or "huggingface"
    fingerprint: str  # sha256 hex of weights + tokenizer (+ config)
    tokenizer: ByteTokenizer
    parameters: int
    context_length: int
    size_bytes: int  # bytes of the model's files on disk
    backend: object = field(repr=False)  # torch module (native) or transformers model
    _exact_engines: dict = field(default_factory=dict, repr=False)  # Llama exact engines by device, built once

    def engine(self, *, exact: bool | None = None, device: str = "cpu", batch_size: int = 16, threads: int | None = None):
        """The engine this model compresses with; exact by default where the model supports it."""
        from ..engine.float import FloatEngine

        unsupported = self.exact_unsupported()
        if exact is None:
            exact = unsupported is None
        if not exact:
            return FloatEngine(self, device=device, batch_size=batch_size, threads=threads)
        if unsupported is not None:
            raise ModelError(f"model '{self.name}' has no exact engine: {unsupported}; use the float engine")
        if self.source in ("builtin", "native"):
            from ..engine.exact import ExactGPTEngine

            return ExactGPTEngine(self.backend, device=device, start_token=self.tokenizer.start_token)
        from ..engine.exact_llama import ExactLlamaEngine

        key = str(device)
        if key not in self._exact_engines:  # building one quantises every weight: seconds for 100M parameters
            self._exact_engines[key] = ExactLlamaEngine(
                self.backend, device=device, start_token=self.tokenizer.start_token, context_length=self.context_length
            )
        return self._exact_engines[key]

    def exact_unsupported(self) -> str | None:
        """None when the exact engine covers this model, else why not."""
        if self.source in ("builtin", "native"):
            return None
        from ..engine.exact_llama import llama_support

        return llama_support(self.backend.config)


def builtin_names() -> list[str]:
    if not BUILTIN_DIRECTORY.is_dir():
        return []
    return sorted(path.name for path in BUILTIN_DIRECTORY.iterdir() if (path / "config.json").is_file())


def model_for_level(level: int) -> str:
    installed = builtin_names()
    if not installed:
        raise ModelError(
            "no built-in model is installed; pass --model PATH with a native llmzip model directory, "
            "a Hugging Face model directory or a GGUF file"
        )
    wished = FAMILY.index(LEVEL_MODELS[level])
    for name in FAMILY[wished:] + FAMILY[:wished][::-1]:
        if name in installed:
            return name
    return installed[0]  # only models outside the level family are installed


def fingerprint_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


_cache: dict[tuple, LoadedModel] = {}


def load_model(name_or_path: str) -> LoadedModel:
    """A built-in name, a native model directory, a Hugging Face directory or a GGUF file."""
    path = Path(name_or_path).expanduser()
    if name_or_path in builtin_names() and not path.exists():
        path, source, name = BUILTIN_DIRECTORY / name_or_path, "builtin", name_or_path
    elif path.exists():
        source, name = None, path.resolve().name  # the file records a name, never a machine's path
    else:
        installed = ", ".join(builtin_names()) or "none installed"
        raise ModelError(f"model '{name_or_path}' not found: not a built-in model ({installed}) nor an existing path")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        from .gpt import is_gpt_directory

        if path.is_dir() and is_gpt_directory(path):
            from .native import load_native

            _cache[key] = load_native(path, name, source or "native")
        else:
            from .huggingface import load_huggingface

            _cache[key] = load_huggingface(path, name)
    return _cache[key]


def describe_missing(header_model: dict) -> str:
    name = header_model.get("name", "?")
    fingerprint = str(header_model.get("fingerprint", "?"))
    return (
        f"this file needs model '{name}' (sha256 {fingerprint[:12]}…); "
        "install it, or pass --model PATH to the model it was compressed with"
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
