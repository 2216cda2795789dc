"""The training loop: AdamW on windows of the corpus, quantisation-aware at the end, checkpoints
that make `--resume` exact, and the model directory written at every stop."""

from __future__ import annotations

import argparse
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrainingError
from ..models.gpt import CONFIG_FILE, GPT, TOKENIZER_FILE, WEIGHTS_FILE, GPTConfig, save_model_directory
from .config import TrainConfig
from .data import WindowPlan, corpus_files, log, make_batch, prepare_corpus
from .report import Prequential, model_card


def fake_quantise_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """Round each row to symmetric int8 (scale = max|row| / 127, float32); gradients pass straight through."""
    master = weight.float()
    scale = master.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantised = torch.clamp(torch.round(master / scale), -127, 127) * scale
    return weight + (quantised.to(weight.dtype) - weight).detach()


def quantised_weight_names(model: GPT) -> list[str]:
    return [f"{module_name}.weight" for module_name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))]


def forward(model: GPT, tokens: torch.Tensor, quantise: bool) -> torch.Tensor:
    if not quantise:
        return model(tokens)
    parameters = dict(model.named_parameters())
    replaced = {name: fake_quantise_per_channel(parameters[name]) for name in quantised_weight_names(model)}
    return torch.func.functional_call(model, replaced, (tokens,))


class Run:
    """One training run in its work folder (default OUTPUT.train/): settings, tokens, checkpoints, logs."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = args.work_dir or args.output.with_name(args.output.name + ".train")
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(args.device)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise TrainingError("--device cuda: this torch has no CUDA device; "
                                "train on the CPU or install a CUDA torch")
        if args.threads:
            torch.set_num_threads(args.threads)
        settings_path = self.work / "settings.json"
        checkpoint_path = self.work / "checkpoint.pt"
        if args.resume:
            if not checkpoint_path.is_file():
                raise TrainingError(f"nothing to resume: {checkpoint_path} does not exist")
            self.config = TrainConfig.from_json(settings_path.read_text(), settings_path)
        else:
            self.config = TrainConfig.from_args(args)
            settings_path.write_text(self.config.to_json())
        c = self.config
        outputs = (args.output.resolve(), self.work.resolve())
        self.files = [path for path in corpus_files(list(c.inputs))
                      if not any(parent in outputs for parent in path.resolve().parents)]
        self.corpus = prepare_corpus(self.work, self.files, c, args.tokenizer)
        self.model_config = GPTConfig(vocab_size=self.corpus.tokenizer.get_vocab_size(),
                                      context_length=c.context_length, n_layer=c.n_layer, n_head=c.n_head,
                                      n_embd=c.n_embd)
        torch.manual_seed(c.seed)
        self.model = GPT(self.model_config).to(self.device)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=c.learning_rate, betas=(0.9, 0.95), fused=fused)
        self.window = c.context_length - 1
        self.plan = WindowPlan(len(self.corpus.train_tokens), self.window, c.batch_size, c.seed)
        self.prequential = Prequential(self.work, self.corpus, self.plan)
        self.step = 0
        self.trained_seconds = 0.0
        self.val_history: list[list[float]] = []
        if args.resume:
            self.load_checkpoint(checkpoint_path)
        self.forward_model = torch.compile(self.model) if args.compile else self.model

    # -- schedule

    def learning_rate(self, step: int) -> float:
        c = self.config
        peak, floor = c.learning_rate, c.learning_rate * c.min_learning_rate_ratio
        if step < c.warmup_steps:
            return peak * (step + 1) / c.warmup_steps
        if c.time_budget_minutes:
            progress = self.trained_seconds / (60 * c.time_budget_minutes)
        else:
            progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))

    def quantising(self, step: int) -> bool:
        c = self.config
        if c.qat_fraction <= 0:
            return False
        if c.time_budget_minutes:
            return self.trained_seconds >= 60 * c.time_budget_minutes * (1 - c.qat_fraction)
        return step >= round(c.steps * (1 - c.qat_fraction))

    def finished(self) -> bool:
        c = self.config
        return self.step >= c.steps or bool(c.time_budget_minutes
                                            and self.trained_seconds >= 60 * c.time_budget_minutes)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    # -- steps

    def train_step(self) -> float:
        samples = self.plan.batch(self.step)
        inputs, targets = make_batch(self.corpus.train_tokens, [start for _, start in samples], self.window)
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        self.model.train()
        with self.autocast():
            logits = forward(self.forward_model, inputs, self.quantising(self.step))  # (B, T, V)
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        loss = losses.mean()
        first_epoch = torch.tensor([epoch == 0 for epoch, _ in samples], device=self.device)
        if bool(first_epoch.any()):  # scored before the optimizer learns from it: the prequential code
            bits = (losses.detach().sum(dim=1) / math.log(2))[first_epoch].sum().item()
            covered = self.corpus.byte_lengths.to(self.device)[targets][first_epoch].sum().item()
            self.prequential.record(self.step, bits, int(covered))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def validation_bits_per_byte(self) -> float:
        val_tokens = self.corpus.val_tokens
        count = len(val_tokens) // self.window
        if count == 0:
            return float("nan")
        chosen = np.linspace(0, count - 1, min(count, self.config.val_windows)).round().astype(int)
        starts = [int(index) * self.window for index in np.unique(chosen)]
        bits = covered = 0.0
        self.model.eval()
        for first in range(0, len(starts), 16):
            inputs, targets = make_batch(val_tokens, starts[first:first + 16], self.window)
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            with self.autocast():
                logits = forward(self.model, inputs, self.quantising(max(0, self.step - 1)))
            bits += (F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
                     / math.log(2))
            covered += self.corpus.byte_lengths.to(self.device)[targets].sum().item()
        return bits / covered

    # -- checkpoints

    def save_checkpoint(self) -> None:
        path = self.work / "checkpoint.pt"
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "windows_consumed": self.step * self.config.batch_size, "torch_rng": torch.get_rng_state(),
                 "prequential": self.prequential.rows, "trained_seconds": self.trained_seconds,
                 "val_history": self.val_history}
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        self.prequential.write(self.step)

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        self.prequential.rows = state["prequential"]
        self.trained_seconds = state["trained_seconds"]
        self.val_history = state["val_history"]
        log(f"resumed at step {self.step} of {self.config.steps}")

    # -- model directory

    def export_model(self, directory: Path, validation_bpb: float, summary: dict) -> None:
        model = self.model
        quantised = self.quantising(max(0, self.step - 1))
        if quantised:  # store the weights the model was trained to use: already on the int8 grid
            model = GPT(self.model_config)
            model.load_state_dict(self.model.state_dict())
            with torch.no_grad():
                for name in quantised_weight_names(model):
                    parameter = model.get_parameter(name)
                    parameter.copy_(fake_quantise_per_channel(parameter.detach().cpu()))
        save_model_directory(directory, model, self.corpus.tokenizer.to_str())
        size = sum((directory / name).stat().st_size for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE))
        card = model_card(self.args.output.name, self.config, self.model, size=size, validation_bpb=validation_bpb,
                          summary=summary, quantised=quantised, step=self.step, finished=self.finished(),
                          trained_seconds=self.trained_seconds, device=self.args.device, corpus=self.corpus,
                          files=self.files)
        (directory / "README.md").write_text(card)

    def snapshot(self) -> None:
        validation = self.validation_bits_per_byte()
        self.val_history.append([self.step, validation])
        directory = self.work / "snapshots" / f"step-{self.step:07d}"
        self.export_model(directory, validation, self.prequential.summary(self.step))
        log(f"snapshot at step {self.step}: validation {validation:.4f} bits per byte -> {directory}")

    # -- main loop

    def run(self) -> int:
        c = self.config
        args = self.args
        log(f"model: {self.model.num_parameters():,} parameters, {self.model_config}")
        started = time.monotonic()
        last_checkpoint = last_snapshot = started
        last_log, last_log_step = started, self.step
        bytes_per_token = float(self.corpus.byte_lengths[torch.from_numpy(self.corpus.train_tokens[:100000]).long()]
                                .float().mean())
        stop_reason = None
        interrupted = []
        previous_handlers = {}
        if threading.current_thread() is threading.main_thread():  # finish the step, then checkpoint and stop
            previous_handlers = {number: signal.signal(number, lambda number, frame: interrupted.append(number))
                                 for number in (signal.SIGINT, signal.SIGTERM)}
        while not self.finished():
            if interrupted:
                stop_reason = f"signal {signal.Signals(interrupted[0]).name}"
                break
            if args.pause_at_step is not None and self.step >= args.pause_at_step:
                stop_reason = f"--pause-at-step {args.pause_at_step} reached"
                break
            step_start = time.monotonic()
            loss = self.train_step()
            now = time.monotonic()
            self.trained_seconds += now - step_start
            if self.step % args.log_every == 0 or self.step == c.steps:
                rate = (self.step - last_log_step) * c.batch_size * self.window / max(1e-9, now - last_log)
                log(f"step {self.step}/{c.steps} loss {loss:.4f} ({loss / math.log(2) / bytes_per_token:.3f} bpb) "
                    f"lr {self.learning_rate(self.step - 1):.2e}{' qat' if self.quantising(self.step - 1) else ''} "
                    f"{rate:,.0f} tokens/s")
                last_log, last_log_step = now, self.step
            if args.snapshot_minutes and now - last_snapshot >= args.snapshot_minutes * 60:
                self.snapshot()
                last_snapshot = time.monotonic()
            if now - last_checkpoint >= args.checkpoint_minutes * 60:
                self.save_checkpoint()
                last_checkpoint = time.monotonic()
            if args.max_minutes is not None and now - started >= args.max_minutes * 60:
                stop_reason = f"--max-minutes {args.max_minutes} reached"
                break
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        if stop_reason:
            log(f"stopping at step {self.step}: {stop_reason}; continue with --resume")
        summary = self.prequential.write(self.step, with_xz=self.finished())
        self.prequential.plot(summary)
        validation = self.validation_bits_per_byte()
        self.val_history.append([self.step, validation])
        self.export_model(args.output, validation, summary)
        self.save_checkpoint()
        if summary["bits_per_byte"] is not None:
            xz_text = f", xz -9e {summary['xz_bits_per_byte']:.4f}" if "xz_bits_per_byte" in summary else ""
            log(f"prequential: {summary['bits_per_byte']:.4f} bits per byte over {summary['bytes']:,} bytes{xz_text}")
        log(f"validation: {validation:.4f} bits per byte; model written to {args.output}")
        return 0
