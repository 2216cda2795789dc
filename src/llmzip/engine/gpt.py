"""The exact engine of the native GPT family (the built-in llmzip-tiny): learned positions,
RMSNorm, ReLU² MLP, int8 weights; the number formats are described in integer.py."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..models.gpt import GPT
from .exact import ExactEngine
from .integer import (
    ACTIVATION_LIMIT,
    ATTENTION_EXP_BITS,
    GAIN_BITS,
    LOGIT_FRACTION_BITS,
    NORM_FRACTION_BITS,
    NORM_INPUT_BITS,
    NORM_OUTPUT_LIMIT,
    OUTPUT_EXP_BITS,
    RESIDUAL_BITS,
    ROW_TOTAL_BITS,
    WEIGHT_LIMIT,
    IntegerRMSNorm,
    QuantisedLinear,
    exp_table,
    fixed_point,
    integer_attention,
    integer_rows,
    positive_bounds,
    requantise,
    residual_units,
)

FORMAT_VERSION = 1


class GPTBlock:
    def __init__(self, block, config, residual_scale: float, device):
        C, H = config.n_embd, config.n_head
        self.heads, self.head_dim = H, C // H
        self.norm1 = IntegerRMSNorm(block.norm1.weight, config.norm_eps, residual_scale, device)
        self.norm2 = IntegerRMSNorm(block.norm2.weight, config.norm_eps, residual_scale, device)
        self.qkv = QuantisedLinear(block.attn.qkv.weight, device)
        self.attention_proj = QuantisedLinear(block.attn.proj.weight, device)
        self.fc = QuantisedLinear(block.mlp.fc.weight, device)
        self.mlp_proj = QuantisedLinear(block.mlp.proj.weight, device)

        # q, k, v: real bound of each output channel, then one scale per head (q, k) or per
        # tensor (v, whose mix feeds one product) mapping that bound to ACTIVATION_LIMIT.
        norm1_unit = self.norm1.output_scale
        real_bounds = self.norm1.output_bounds(self.qkv.values) * self.qkv.scales * norm1_unit
        q_bounds, k_bounds, v_bounds = real_bounds.reshape(3, H, self.head_dim)
        q_head_scales = positive_bounds(q_bounds.max(axis=1)) / ACTIVATION_LIMIT
        k_head_scales = positive_bounds(k_bounds.max(axis=1)) / ACTIVATION_LIMIT
        self.v_scale = float(positive_bounds(v_bounds.max())) / ACTIVATION_LIMIT
        output_scales = np.concatenate(
            [np.repeat(q_head_scales, self.head_dim), np.repeat(k_head_scales, self.head_dim),
             np.full(C, self.v_scale)]
        )
        qkv_input_bound = C * ACTIVATION_LIMIT * WEIGHT_LIMIT
        self.qkv_scale = fixed_point(self.qkv.scales * norm1_unit / output_scales, qkv_input_bound, device)
        # Scores: q.k * s_q * s_k / sqrt(D) nats, in 2**-LOGIT_FRACTION_BITS units, per head.
        score_ratios = q_head_scales * k_head_scales / math.sqrt(self.head_dim) * float(2**LOGIT_FRACTION_BITS)
        score_bound = self.head_dim * ACTIVATION_LIMIT**2
        self.score_scale = fixed_point(score_ratios, score_bound, device).view(1, H, 1, 1)
        self.attention_proj_scale = fixed_point(
            self.v_scale * self.attention_proj.scales / residual_scale, C * ACTIVATION_LIMIT * WEIGHT_LIMIT, device
        )

        # MLP: the pre-activation has one scale; ReLU² squares it exactly.
        fc_bounds = self.norm2.output_bounds(self.fc.values) * self.fc.scales * self.norm2.output_scale
        self.hidden_scale = float(positive_bounds(fc_bounds.max())) / ACTIVATION_LIMIT
        self.fc_scale = fixed_point(
            self.fc.scales * self.norm2.output_scale / self.hidden_scale, C * ACTIVATION_LIMIT * WEIGHT_LIMIT, device
        )
        hidden = self.fc.outputs
        self.mlp_proj_scale = fixed_point(
            self.hidden_scale * self.hidden_scale * self.mlp_proj.scales / residual_scale,
            hidden * ACTIVATION_LIMIT**2 * WEIGHT_LIMIT,
            device,
        )

    def __call__(self, x, table, keys=None, values=None, allowed=None):
        """x (B, T, C) int64 residual. With `keys`/`values` (caches holding earlier positions) the new
        k and v are appended by the caller's session; otherwise attention is causal over x itself."""
        B, T, C = x.shape
        qkv = requantise(
            self.qkv(self.norm1(x), ACTIVATION_LIMIT), self.qkv_scale, -ACTIVATION_LIMIT, ACTIVATION_LIMIT,
            in_place=True,
        )
        q, k, v = qkv.view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        if keys is not None:
            k, v = keys(k), values(v)
        y = integer_attention(q, k, v, self.score_scale, table, allowed)
        y = y.transpose(1, 2).reshape(B, T, C)
        # Products come back as fresh int64 tensors, so each is requantised where it lies.
        x = requantise(self.attention_proj(y, ACTIVATION_LIMIT), self.attention_proj_scale, in_place=True).add_(x)
        hidden = requantise(
            self.fc(self.norm2(x), ACTIVATION_LIMIT), self.fc_scale, 0, ACTIVATION_LIMIT, in_place=True
        )  # ReLU
        mlp = self.mlp_proj(hidden.mul_(hidden), ACTIVATION_LIMIT**2)
        return requantise(mlp, self.mlp_proj_scale, in_place=True).add_(x)


class ExactGPTEngine(ExactEngine):
    """Engine for the native GPT family whose rows are bit-identical on every device and batch shape."""

    def __init__(self, model: GPT, device: str | torch.device = "cpu", start_token: int = 0):
        config = model.config
        self.config = config
        self.device = torch.device(device)
        self.vocab_size = config.vocab_size
        self.start_token = int(start_token)
        self.context_length = config.context_length
        self.cache_heads, self.cache_head_dim = config.n_head, config.n_embd // config.n_head

        wte = model.wte.weight.detach().to(torch.float32).cpu()
        wpe = model.wpe.weight.detach().to(torch.float32).cpu()
        # The lookup uses the float embeddings at residual resolution; only the tied output head
        # uses the int8 grid, as that is where wte is a matrix-product weight.
        embedding_peak = float(max(wte.abs().max(), wpe.abs().max())) or 1.0
        self.residual_scale = embedding_peak / 2**RESIDUAL_BITS
        self.token_embedding = residual_units(wte, self.residual_scale, self.device)  # (V, C)
        self.position_embedding = residual_units(wpe, self.residual_scale, self.device)  # (context, C)

        self.blocks = [GPTBlock(block, config, self.residual_scale, self.device) for block in model.blocks]
        self.norm_f = IntegerRMSNorm(model.norm_f.weight, config.norm_eps, self.residual_scale, self.device)
        self.head = QuantisedLinear(model.wte.weight, self.device)
        self.logit_scale = fixed_point(
            self.norm_f.output_scale * self.head.scales * float(2**LOGIT_FRACTION_BITS),
            config.n_embd * ACTIVATION_LIMIT * WEIGHT_LIMIT,
            self.device,
        )
        self.attention_table = torch.tensor(exp_table(LOGIT_FRACTION_BITS, ATTENTION_EXP_BITS), device=self.device)
        self.output_table = torch.tensor(exp_table(LOGIT_FRACTION_BITS, OUTPUT_EXP_BITS), device=self.device)

        self.settings = {
            "kind": "exact",
            "version": FORMAT_VERSION,
            "start_token": self.start_token,
            "weight_limit": WEIGHT_LIMIT,
            "activation_limit": ACTIVATION_LIMIT,
            "norm_output_limit": NORM_OUTPUT_LIMIT,
            "norm_input_bits": NORM_INPUT_BITS,
            "norm_fraction_bits": NORM_FRACTION_BITS,
            "gain_bits": GAIN_BITS,
            "residual_bits": RESIDUAL_BITS,
            "logit_fraction_bits": LOGIT_FRACTION_BITS,
            "attention_exp_bits": ATTENTION_EXP_BITS,
            "output_exp_bits": OUTPUT_EXP_BITS,
            "row_total_bits": ROW_TOTAL_BITS,
        }

    def _embed(self, tokens: torch.Tensor, start_position: int) -> torch.Tensor:
        positions = torch.arange(start_position, start_position + tokens.shape[1], device=self.device)
        return self.token_embedding[tokens] + self.position_embedding[positions]  # (B, T, C)

    def _hidden(self, inputs, start_position, caches=None, allowed=None):
        x = self._embed(inputs, start_position)
        for index, block in enumerate(self.blocks):
            keys, values = caches[index] if caches is not None else (None, None)
            x = block(x, self.attention_table, keys=keys, values=values, allowed=allowed)
        return x

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and tied head for residual rows (N, C) -> integer weights (N, V) summing to 2**30."""
        logits = requantise(self.head(self.norm_f(x), ACTIVATION_LIMIT), self.logit_scale, in_place=True)  # (N, V)
        return integer_rows(logits, self.output_table)
