"""The model record: which model a stream was coded with, and every setting that changes a bit.

The container stores it as JSON (container.write_model_record); this is its typed form. The
encoder builds one from its compressor, the decoder rebuilds its engine from one read back, and
`from_json` is the one place a record read from a file is checked: a damaged field is a
CorruptError, a setting this llmzip does not know a FormatError (a newer llmzip wrote it, and
guessing would decode garbage).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CorruptError, FormatError

_FIELDS = ("model", "engine", "coder", "vocab_size", "start_token", "chunk_tokens", "batch_size", "online")


@dataclass(frozen=True)
class ModelRecord:
    model: dict  # name, source, fingerprint (SHA-256 hex), parameters, origin (package and version)
    engine: dict  # the engine's settings: kind (exact or float) and every constant that changes a row
    coder: dict  # coder.CODER_SETTINGS
    vocab_size: int  # width of a row
    start_token: int  # the token that opens every chunk
    chunk_tokens: int  # the most tokens a chunk may hold
    batch_size: int  # the most chunks a group may hold
    online: dict | None = None  # the online model's settings (online.py); None: the model alone

    @property
    def model_name(self) -> str:
        return str(self.model.get("name"))

    @property
    def fingerprint(self) -> str | None:
        return self.model.get("fingerprint")

    def to_json(self) -> dict:
        record = {name: getattr(self, name) for name in _FIELDS}
        if self.online is None:
            del record["online"]
        return record

    @classmethod
    def from_json(cls, record: dict) -> "ModelRecord":
        unknown = sorted(set(record) - set(_FIELDS))
        if unknown:
            raise FormatError(f"the file's model record has settings this llmzip does not know ({', '.join(unknown)}); "
                              "upgrade llmzip to read it")
        for name in ("model", "engine", "coder"):
            if not isinstance(record.get(name), dict):
                raise CorruptError(f"the model record is damaged (field '{name}')")
        for name in ("vocab_size", "chunk_tokens", "batch_size"):
            _positive_integer(record, name)
        start_token = record.get("start_token")
        if not _is_integer(start_token) or not 0 <= start_token < record["vocab_size"]:
            raise CorruptError("the model record is damaged (field 'start_token')")
        online = record.get("online")
        if online is not None and not isinstance(online, dict):
            raise CorruptError("the model record is damaged (field 'online')")
        if not isinstance(record["model"].get("name"), str):
            raise CorruptError("the model record is damaged (the model's name)")
        return cls(**{name: record.get(name) for name in _FIELDS})


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_integer(record: dict, name: str) -> int:
    value = record.get(name)
    if not _is_integer(value) or value <= 0:
        raise CorruptError(f"the model record is damaged (field '{name}')")
    return value
