"""Training: tokenizer, a tiny run end to end, exact resume and the prequential log."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from llmzip.models.gpt import load_gpt
from llmzip.train import fake_quantise_per_channel, main, token_byte_lengths, train_tokenizer

TEXT_WORDS = "the quick brown fox jumps over a lazy dog while data compresses into fewer bits 你好 世界 压缩".split()
TINY = ["--vocab-size", "300", "--context-length", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--batch-size", "4", "--warmup-steps", "2", "--val-windows", "8", "--threads", "1", "--log-every", "1000",
        "--snapshot-minutes", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for name in ("a.txt", "b.txt"):
        lines = (" ".join(rng.choice(TEXT_WORDS) for _ in range(10)) for _ in range(300))
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def train(corpus, output, *extra):
    return main([str(corpus), "-o", str(output), *TINY, *extra])


def test_tokenizer_round_trips_bytes_and_chinese():
    tokenizer = train_tokenizer(["hello world, hello compression", "红楼梦 三国演义 水浒传", "x = 1\n"], 300)
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.get_vocab_size() >= 257  # every byte has a token
    for text in ["hello world", "红楼梦里的人", "tabs\tand\nnewlines  ", "émoji 🙂 mixed 中文 text"]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids) == text
        assert sum(token_byte_lengths(tokenizer)[ids]) == len(text.encode("utf-8"))


def test_fake_quantisation_lands_on_the_int8_grid():
    weight = torch.randn(5, 7, requires_grad=True)
    quantised = fake_quantise_per_channel(weight)
    scale = weight.detach().abs().amax(dim=1, keepdim=True) / 127
    levels = quantised.detach() / scale
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    quantised.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))  # straight-through


def test_tiny_run_writes_a_loadable_model_and_prequential_log(corpus, tmp_path):
    output = tmp_path / "model"
    assert train(corpus, output, "--steps", "4") == 0
    model = load_gpt(output)
    assert model.config.context_length == 16
    card = (output / "README.md").read_text()
    assert "Benchmark results" in card and "Prequential" in card
    log = json.loads((tmp_path / "model.train" / "prequential.json").read_text())
    assert len(log["steps"]) == 4 and log["summary"]["bits_per_byte"] > 0
    assert "xz_bits_per_byte" in log["summary"]
    # Quantisation-aware training covered the last steps, so the stored weights sit on the int8 grid.
    weight = model.blocks[0].mlp.fc.weight.detach()
    levels = weight / (weight.abs().amax(dim=1, keepdim=True) / 127)
    assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_resume_matches_an_uninterrupted_run(corpus, tmp_path):
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    assert train(corpus, straight, "--steps", "6") == 0
    assert train(corpus, paused, "--steps", "6", "--pause-at-step", "3") == 0
    assert json.loads((tmp_path / "paused.train" / "prequential.json").read_text())["summary"]["bytes"] > 0
    assert train(corpus, paused, "--steps", "6", "--resume") == 0
    expected = load_file(str(straight / "model.safetensors"))
    resumed = load_file(str(paused / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    first = json.loads((tmp_path / "straight.train" / "prequential.json").read_text())
    second = json.loads((tmp_path / "paused.train" / "prequential.json").read_text())
    assert first["steps"] == second["steps"]


def test_time_budget_ends_the_run_and_still_writes_a_model(corpus, tmp_path):
    output = tmp_path / "model"
    assert train(corpus, output, "--steps", "100000", "--time-budget-minutes", "0.002") == 0
    log = json.loads((tmp_path / "model.train" / "prequential.json").read_text())
    assert 0 < len(log["steps"]) < 100000
    assert load_gpt(output).config.vocab_size <= 300


@pytest.mark.parametrize("arguments, message", [
    (["missing-folder", "-o", "{out}"], "training input 'missing-folder' does not exist"),
    (["{corpus}", "-o", "{out}", "--n-embd", "30", "--n-head", "4"], "must be a multiple of --n-head"),
    (["{corpus}", "-o", "{out}", "--resume"], "nothing to resume"),
    (["{corpus}", "-o", "{out}", "--context-length", "1"], "--context-length must be at least 2"),
])
def test_train_errors_are_one_line(corpus, tmp_path, capsys, arguments, message):
    from llmzip import cli

    argv = [argument.format(corpus=corpus, out=tmp_path / "model") for argument in arguments]
    assert cli.main(["train", *argv]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert error.strip().count("\n") == 0
