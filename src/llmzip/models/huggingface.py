"""Any local Hugging Face causal LM (a directory) or GGUF file, loaded offline with transformers."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from pathlib import Path

from ..errors import ModelError
from . import LoadedModel, fingerprint_files

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                    "special_tokens_map.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


def _quiet_offline_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "loading Hugging Face or GGUF models needs transformers; install llmzip with the 'hf' extra: "
            "pip install 'llmzip[hf]'"
        ) from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@contextlib.contextmanager
def _gguf_progress_bars_hidden():
    """GGUF conversion draws a tqdm bar of its own that no transformers setting turns off."""
    try:
        module = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        module = None
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


def model_files(path: Path) -> list[Path]:
    """The files whose bytes define the model: weights, config and tokenizer."""
    if path.is_file():
        return [path]
    names = sorted(p for p in path.iterdir()
                   if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _TOKENIZER_FILES
                                       or p.name == "config.json"))
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in names):
        raise ModelError(f"{path} holds no model weights (.safetensors, .bin or .gguf)")
    return names


def load_huggingface(path: Path, name: str) -> LoadedModel:
    from ..tokenization import ByteTokenizer

    files = model_files(path)
    transformers = _quiet_offline_transformers()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"{path} is neither a model directory nor a GGUF file")
        location, options = str(path.parent), {"gguf_file": path.name}
    else:
        location, options = str(path), {}
    try:
        with _gguf_progress_bars_hidden():
            tokenizer = transformers.AutoTokenizer.from_pretrained(location, local_files_only=True, **options)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                location, local_files_only=True, dtype="float32", **options
            )
    except Exception as error:  # transformers raises many kinds for unusable directories
        raise ModelError(f"cannot load a causal language model from {path}: {error}") from None
    model.eval()
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise ModelError(f"{path}: only models with a fast (tokenizers) tokenizer are supported")
    start_token = next(
        (token for token in (tokenizer.bos_token_id, tokenizer.eos_token_id) if token is not None), 0
    )
    byte_tokenizer = ByteTokenizer(backend_tokenizer, start_token)
    context_length = getattr(model.config, "max_position_embeddings", None) or 2048
    return LoadedModel(
        name=name,
        source="huggingface",
        fingerprint=fingerprint_files(files),
        tokenizer=byte_tokenizer,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        context_length=int(context_length),
        size_bytes=sum(file.stat().st_size for file in files),
        backend=model,
    )
