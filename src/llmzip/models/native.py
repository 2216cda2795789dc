"""Native llmzip models: a model directory of config.json, model.safetensors and tokenizer.json."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from . import LoadedModel, fingerprint_files
from .gpt import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_gpt

START_TOKEN = 0  # "<|endoftext|>" opens every chunk


def load_native(directory: Path, name: str, source: str) -> LoadedModel:
    from tokenizers import Tokenizer

    from ..tokenization import ByteTokenizer

    files = [directory / CONFIG_FILE, directory / WEIGHTS_FILE, directory / TOKENIZER_FILE]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise ModelError(f"model directory {directory} lacks {', '.join(missing)}")
    try:
        model = load_gpt(directory)
        tokenizer = ByteTokenizer(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), START_TOKEN)
    except ModelError:
        raise
    except Exception as error:  # a damaged model directory can fail in many libraries' ways
        raise ModelError(f"cannot load model from {directory}: {error}") from None
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ModelError(f"model {directory}: tokenizer has more tokens than the model's vocabulary")
    return LoadedModel(
        name=name,
        source=source,
        fingerprint=fingerprint_files(files),
        tokenizer=tokenizer,
        parameters=model.num_parameters(),
        context_length=model.config.context_length,
        size_bytes=sum(path.stat().st_size for path in files),
        backend=model,
    )
