"""The float engine: ordinary float32 inference, for models the exact engine does not cover.

Float results depend on the device, the kernels chosen for a shape, the thread count and
library versions. So the encoder drives this engine through exactly the incremental path and
batch shapes the decoder will use, and the header records every setting that could change a
bit; a decoder on a machine that differs refuses instead of producing wrong output.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import EngineMismatchError


def machine_settings(device: str, threads: int) -> dict:
    settings = {
        "device": torch.device(device).type,
        "dtype": "float32",
        "torch": torch.__version__,
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if settings["device"] == "cuda":
        settings["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import transformers

        settings["transformers"] = transformers.__version__
    except ImportError:
        pass
    return settings


class FloatEngine:
    batch_invariant = False

    def __init__(self, model, *, device: str = "cpu", batch_size: int = 16, threads: int | None = None):
        self.model = model
        self.device = torch.device(device)
        self.threads = threads or torch.get_num_threads()
        self.batch_size = batch_size
        self.backend = model.float_backend().to(self.device)
        self.vocab_size = self._output_width()
        self.start_token = model.tokenizer.start_token
        self.settings = {"kind": "float", "batch_size": batch_size, **machine_settings(device, self.threads)}

    def _output_width(self) -> int:
        config = getattr(self.backend, "config", None)
        return int(config.vocab_size)

    def start(self, batch_size: int) -> "FloatSession":
        torch.set_num_threads(self.threads)
        return FloatSession(self, batch_size)

    def sequence_weights(self, token_lists):
        return None  # the encoder must walk the decoder's incremental path

    def check_machine(self, recorded: dict) -> None:
        """Refuse to decode where this machine would compute other floats than the encoder did."""
        here = {"kind": "float", "batch_size": recorded.get("batch_size"),
                **machine_settings(str(self.device), recorded.get("threads", 0))}
        differing = [f"{key} {recorded.get(key)!r} here {here.get(key)!r}" for key in sorted(set(recorded) | set(here))
                     if recorded.get(key) != here.get(key)]
        if differing:
            raise EngineMismatchError(
                "this file was made with the float engine on another kind of machine and cannot be decoded "
                "exactly here (" + "; ".join(differing) + "); decode it where it was made, with the same settings"
            )


class FloatSession:
    def __init__(self, engine: FloatEngine, batch_size: int):
        self.engine = engine
        self.batch_size = batch_size
        self.position = 0
        backend = engine.backend
        self.native = hasattr(backend, "blocks")
        self.cache = [dict() for _ in backend.blocks] if self.native else None

    @torch.inference_mode()
    def advance(self, tokens: np.ndarray) -> np.ndarray:
        inputs = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=self.engine.device).view(self.batch_size, 1)
        if self.native:
            logits = self.engine.backend(inputs, start_position=self.position, caches=self.cache)[:, -1]
        else:
            output = self.engine.backend(input_ids=inputs, past_key_values=self.cache, use_cache=True)
            self.cache = output.past_key_values
            logits = output.logits[:, -1]
        self.position += 1
        return torch.softmax(logits.float(), dim=-1).double().cpu().numpy()  # (B, V)
