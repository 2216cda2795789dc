"""The native GPT family: a small decoder-only transformer read top to bottom.

The architecture is chosen so that an integer-only engine can reproduce it exactly:
RMSNorm (no mean, no bias), learned absolute positions, ReLU² MLP, no biases anywhere and
an output head tied to the token embedding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
ARCHITECTURE = "llmzip-gpt"


@dataclass
class GPTConfig:
    vocab_size: int = 8192  # byte-level BPE vocabulary, special tokens included
    context_length: int = 512  # most positions a chunk may hold, start token included
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    mlp_ratio: int = 4  # hidden width of the MLP is mlp_ratio * n_embd
    norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)

    def to_dict(self) -> dict:
        return {"architecture": ARCHITECTURE, **asdict(self)}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # With a cache the T new queries sit at the end of the key sequence.
        causal = T > 1
        if cache is not None and k.shape[2] != T and T > 1:
            raise ValueError("incremental attention takes one new position at a time")
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.norm2 = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.context_length, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight"):  # scaled residual projections, as in GPT-2
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens, start_position: int = 0, caches=None):
        """Logits for every position of `tokens` (B, T) -> (B, T, V)."""
        B, T = tokens.shape
        positions = torch.arange(start_position, start_position + T, device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)  # (B, T, C)
        for index, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[index])
        return self.norm_f(x) @ self.wte.weight.T  # (B, T, V)


def save_model_directory(directory: Path, model: GPT, tokenizer_json: str, card: str | None = None) -> None:
    """Write a model directory: config, safetensors weights, tokenizer and an optional model card."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    weights = {name: tensor.detach().to(torch.float32).contiguous().cpu()
               for name, tensor in model.state_dict().items()}
    save_file(weights, str(directory / WEIGHTS_FILE))
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    if card is not None:
        (directory / "README.md").write_text(card)


def load_gpt(directory: Path) -> GPT:
    from safetensors.torch import load_file

    directory = Path(directory)
    config = GPTConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    model = GPT(config)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    model.eval()
    return model


def is_gpt_directory(directory: Path) -> bool:
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        return False
    try:
        return json.loads(config_path.read_text()).get("architecture") == ARCHITECTURE
    except (OSError, ValueError):
        return False
