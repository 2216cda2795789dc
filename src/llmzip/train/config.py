"""What a training run is: a model size and the settings that shape its result (`TrainConfig`),
and the `llmzip train` options that make one."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import TrainingError

# Named sizes; the parameter counts include the tied embedding / output head.
PRESETS = {
    "tiny": dict(vocab_size=4096, context_length=256, n_layer=2, n_head=2, n_embd=96),  # ~0.6M, llmzip-tiny
    "small": dict(vocab_size=4096, context_length=256, n_layer=4, n_head=4, n_embd=128),  # ~1.3M, llmzip-small
    "base": dict(vocab_size=8192, context_length=512, n_layer=8, n_head=4, n_embd=256),  # ~8.6M
    "large": dict(vocab_size=16384, context_length=512, n_layer=8, n_head=8, n_embd=512),  # ~34M
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a run's result; saved in the work folder, so `--resume` continues the
    same run whatever the command line says. Machine options (device, threads, stops) are not here."""

    preset: str
    inputs: tuple[str, ...]
    # the model
    vocab_size: int
    context_length: int
    n_layer: int
    n_head: int
    n_embd: int
    # the optimisation
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1234
    qat_fraction: float = 0.3
    val_fraction: float = 0.01
    val_windows: int = 128
    tokenizer_sample_bytes: int = 24 * 2**20
    time_budget_minutes: float | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        """The preset, overridden by every option given on the command line."""
        values = dict(PRESETS[args.preset], preset=args.preset, inputs=tuple(str(Path(name)) for name in args.inputs))
        for field in fields(cls):
            given = getattr(args, field.name, None)
            if given is not None and field.name not in ("preset", "inputs"):
                values[field.name] = given
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        positive = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd", "steps", "batch_size",
                    "warmup_steps", "val_windows", "tokenizer_sample_bytes")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1")
        if self.context_length < 2:
            raise TrainingError("--context-length must be at least 2 (the start token and one text token)")
        if self.n_embd % self.n_head:
            raise TrainingError(f"--n-embd ({self.n_embd}) must be a multiple of --n-head ({self.n_head})")
        if not 0 <= self.qat_fraction <= 1 or not 0 <= self.val_fraction < 1:
            raise TrainingError("--qat-fraction must lie in [0, 1] and --val-fraction in [0, 1)")
        if self.vocab_size < 257:
            raise TrainingError("--vocab-size must be at least 257 (the start token and every byte)")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> "TrainConfig":
        try:
            values = json.loads(text)
            return cls(**dict(values, inputs=tuple(values["inputs"])))
        except (ValueError, TypeError, KeyError):
            raise TrainingError(f"{where} is not the settings of a run this llmzip can resume; use a new --work-dir")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llmzip train`; the CLI adds them to its subcommand."""
    defaults = TrainConfig("", (), 0, 0, 0, 0, 0)
    parser.add_argument("inputs", nargs="+", help="training files or folders (.xz files are decompressed)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="model directory to write")
    parser.add_argument("--work-dir", type=Path, help="checkpoints, tokens and logs (default: OUTPUT.train)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in the work folder")
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default="small", help="named size (default: small)")
    model.add_argument("--vocab-size", type=int, help="BPE vocabulary, <|endoftext|> included")
    model.add_argument("--context-length", type=int)
    model.add_argument("--n-layer", type=int)
    model.add_argument("--n-head", type=int)
    model.add_argument("--n-embd", type=int)
    model.add_argument("--tokenizer", type=Path, help="use this tokenizer.json instead of training one")
    run = parser.add_argument_group("training")
    run.add_argument("--steps", type=int, help=f"optimizer steps (default {defaults.steps})")
    run.add_argument("--batch-size", type=int, help=f"windows per step (default {defaults.batch_size})")
    run.add_argument("--learning-rate", type=float, help=f"peak AdamW learning rate (default {defaults.learning_rate})")
    run.add_argument("--min-learning-rate-ratio", type=float, help="end of the cosine, as a share of the peak")
    run.add_argument("--warmup-steps", type=int)
    run.add_argument("--weight-decay", type=float)
    run.add_argument("--grad-clip", type=float)
    run.add_argument("--seed", type=int)
    run.add_argument("--qat-fraction", type=float,
                     help="share of the last steps trained with int8 fake quantisation (default 0.3; 0 turns it off)")
    run.add_argument("--val-fraction", type=float, help="tail of every file held out for validation (default 0.01)")
    run.add_argument("--val-windows", type=int, help="most validation windows scored (default 128)")
    run.add_argument("--time-budget-minutes", type=float,
                     help="schedule the learning rate and quantisation by training time instead of steps and stop "
                          "when it is spent (for shared machines of unknown speed; resuming is then not bit-exact)")
    run.add_argument("--tokenizer-sample-bytes", type=int, help="bytes of text the BPE is trained on")
    machine = parser.add_argument_group("machine")
    machine.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    machine.add_argument("--threads", type=int, help="torch CPU threads")
    machine.add_argument("--compile", action="store_true", help="torch.compile the model")
    machine.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint + model) after this long")
    machine.add_argument("--pause-at-step", type=int,
                         help="stop cleanly once this step is reached (with --resume at the current step: only "
                              "write the model directory again)")
    machine.add_argument("--checkpoint-minutes", type=float, default=5.0)
    machine.add_argument("--snapshot-minutes", type=float, default=15.0,
                         help="write an intermediate model directory to WORK/snapshots this often (0: never)")
    machine.add_argument("--log-every", type=int, default=20)
