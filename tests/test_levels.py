"""Compression levels choose among the built-in models that are installed."""

import pytest

from llmzip import models
from llmzip.errors import ModelError


@pytest.mark.parametrize(
    "installed, expected",
    [
        (["llmzip-small", "llmzip-tiny"], {1: "llmzip-tiny", 4: "llmzip-tiny", 5: "llmzip-tiny", 9: "llmzip-tiny"}),
        (["llmzip-small"], {1: "llmzip-small", 5: "llmzip-small", 9: "llmzip-small"}),
        (["llmzip-tiny", "llmzip-base", "llmzip-large"], {1: "llmzip-tiny", 5: "llmzip-base", 7: "llmzip-large"}),
        (["llmzip-tiny", "llmzip-large"], {1: "llmzip-tiny", 5: "llmzip-large", 9: "llmzip-large"}),
    ],
)
def test_level_picks_the_nearest_installed_model_larger_first(monkeypatch, installed, expected):
    monkeypatch.setattr(models, "builtin_names", lambda: installed)
    assert {level: models.model_for_level(level) for level in expected} == expected


def test_no_builtin_model_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models, "builtin_names", lambda: [])
    with pytest.raises(ModelError, match="no built-in model is installed"):
        models.model_for_level(5)


def test_shipped_models_are_found():
    assert {"llmzip-small", "llmzip-tiny"} <= set(models.builtin_names())
