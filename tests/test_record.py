"""The typed model record: round trip through JSON and what a decoder refuses."""

import pytest

from llmzip.errors import CorruptError, FormatError
from llmzip.record import ModelRecord

RECORD = {"model": {"name": "llmzip-tiny", "fingerprint": "ab" * 32, "source": "builtin", "parameters": 5},
          "engine": {"kind": "exact", "version": 1}, "coder": {"name": "range"}, "vocab_size": 300,
          "start_token": 0, "chunk_tokens": 255, "batch_size": 16}


def test_round_trip():
    record = ModelRecord.from_json(RECORD)
    assert record.to_json() == RECORD and record.model_name == "llmzip-tiny" and record.online is None
    with_online = ModelRecord.from_json({**RECORD, "online": {"version": 1}})
    assert with_online.to_json()["online"] == {"version": 1}


def test_a_setting_from_a_newer_llmzip_is_refused():
    with pytest.raises(FormatError, match="does not know \\(sparkle\\).*upgrade llmzip"):
        ModelRecord.from_json({**RECORD, "sparkle": 1})


@pytest.mark.parametrize("field, value", [("model", "x"), ("engine", None), ("vocab_size", 0), ("chunk_tokens", True),
                                          ("batch_size", "16"), ("start_token", 300), ("start_token", -1),
                                          ("online", [1])])
def test_damaged_fields_are_refused(field, value):
    with pytest.raises(CorruptError, match="model record is damaged"):
        ModelRecord.from_json({**RECORD, field: value})


def test_a_missing_field_is_refused():
    damaged = dict(RECORD)
    del damaged["batch_size"]
    with pytest.raises(CorruptError):
        ModelRecord.from_json(damaged)
