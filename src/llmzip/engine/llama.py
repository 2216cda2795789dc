"""The exact engine for the Llama architecture: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

The same principle as the native engine (gpt.py, integer.py): every number on the run-time path is an
integer, matrix products run on float64 BLAS with operands small enough that every partial sum is
exact, and every constant is derived from the float32 weights with IEEE operations and integer
arithmetic only. What differs is where the numbers come from: Llama models (SmolLM2, TinyLlama,
Llama, Mistral-style GGUF files) were not trained for this engine, so it keeps more precision:

- weights: int16 per output channel; the RMSNorm gains are folded into the next layer's weights,
  and the per-head scales of v and per-channel scales of the SwiGLU product into the weights that
  consume them, before quantisation;
- RMSNorm output: up to 2**20, a normalised row with 2**20 / sqrt(dim) units per RMS;
- q and k: per-head scales from a Cauchy–Schwarz bound, |q|, |k| <= 2**18 before the rotation;
- rotary embeddings: cos and sin tables in 2**-24 units, built from the frequencies with Python
  integers and `decimal` (software arithmetic, the same on every machine);
- v, gate and up: per-head (v) and per-channel (gate, up) scales, |value| <= 2**20;
- SiLU: a table of the sigmoid over the gate in 2**-10 steps on [-16, 16], in 2**-16 units;
- the SwiGLU product: shifted per row (a power of two, recorded for that row) to at most 2**19
  before the down projection, so no static bound has to cover the product of two bounds;
- attention scores, softmax and output rows: as in the native engine.
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import torch

from .exact import ExactEngine
from .integer import (
    ATTENTION_EXP_BITS,
    LOGIT_FRACTION_BITS,
    NORM_FRACTION_BITS,
    OUTPUT_EXP_BITS,
    RESIDUAL_BITS,
    ROW_TOTAL_BITS,
    IntegerRMSNorm,
    QuantisedLinear,
    bit_length,
    exp_table,
    fixed_point,
    integer_attention,
    integer_rows,
    lookup,
    positive_bounds,
    requantise,
    residual_units,
    round_divide,
)

__all__ = ["ExactLlamaEngine", "LlamaTables", "llama_support", "rope_tables", "sigmoid_table"]

FORMAT_VERSION = 1
WEIGHT_LIMIT = 32767  # int16: GGUF weights (4 to 8 bits per block) keep their precision
NORM_LIMIT = 2**20
QK_LIMIT = 2**18  # before the rotation; after it |q|, |k| <= sqrt(2) * QK_LIMIT + 1
ROTATED_LIMIT = 2**19
VALUE_LIMIT = 2**20  # v, gate and up
HIDDEN_LIMIT = 2**19  # the SwiGLU product, per row
ROPE_BITS = 24
SIGMOID_FRACTION_BITS = 10
SIGMOID_RANGE = 16  # the table covers the gate in [-16, 16]; beyond it the sigmoid is 0 or 1
SIGMOID_BITS = 16


def llama_support(config) -> str | None:
    """None when the exact engine covers a Hugging Face config, else the reason it does not."""
    if getattr(config, "model_type", None) != "llama":
        return f"architecture {getattr(config, 'model_type', '?')!r} (only 'llama')"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only SiLU)"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biases in attention or MLP"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "tensor-parallel pretraining layout"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"rotary scaling {rope.get('rope_type')!r} (only the default rotary embedding)"
    return None


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _decimal_cos_sin(angle: decimal.Decimal) -> tuple[decimal.Decimal, decimal.Decimal]:
    """cos and sin of a small angle (|angle| <= 1) by their Taylor series in `decimal`."""
    cos, sin = decimal.Decimal(0), decimal.Decimal(0)
    term, n = decimal.Decimal(1), 0
    negligible = decimal.Decimal(10) ** -(decimal.getcontext().prec + 10)
    while abs(term) > negligible:
        if n % 2 == 0:
            cos += term if n % 4 == 0 else -term
        else:
            sin += term if n % 4 == 1 else -term
        n += 1
        term = term * angle / n
    return cos, sin


def rope_tables(theta: float, head_dim: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """round(2**ROPE_BITS * cos(p * f_j)) and the same for sin, (positions, head_dim / 2) int64.

    f_j = theta ** (-2j / head_dim) as Hugging Face's default rotary embedding defines it. The
    frequencies come from `decimal` at 60 digits, the angles p * f_j from repeated rotation by
    exp(i f_j) in 200-bit integer fixed point, so the tables are the same on every machine.
    """
    guard = 200
    one = 1 << guard
    steps = []
    with decimal.localcontext() as context:
        context.prec = 60
        base = decimal.Decimal(theta)  # exact: a float converts to decimal without rounding
        for j in range(head_dim // 2):
            frequency = base ** (decimal.Decimal(-2 * j) / decimal.Decimal(head_dim))
            cos, sin = _decimal_cos_sin(frequency)
            steps.append((int(cos.scaleb(60).to_integral_value()) * one // 10**60,
                          int(sin.scaleb(60).to_integral_value()) * one // 10**60))
    half = 1 << (guard - ROPE_BITS - 1)
    cos_rows, sin_rows = [], []
    current = [(one, 0)] * len(steps)
    for _ in range(positions):
        cos_rows.append([(re + half) >> (guard - ROPE_BITS) for re, _ in current])
        sin_rows.append([(im + half) >> (guard - ROPE_BITS) for _, im in current])
        current = [((re * c - im * s) >> guard, (re * s + im * c) >> guard) for (re, im), (c, s) in zip(current, steps)]
    return torch.tensor(cos_rows, dtype=torch.int64), torch.tensor(sin_rows, dtype=torch.int64)


def sigmoid_table() -> list[int]:
    """round(2**16 * sigmoid(i / 2**10)) for i in [-16 * 2**10, 16 * 2**10], by integer arithmetic."""
    value_bits = 48
    exps = exp_table(SIGMOID_FRACTION_BITS, value_bits)  # round(2**48 * exp(-i / 1024)), then 0
    steps = SIGMOID_RANGE << SIGMOID_FRACTION_BITS
    one = 1 << value_bits
    positive = []
    for i in range(steps + 1):
        e = exps[min(i, len(exps) - 1)]
        positive.append((2 * (one << SIGMOID_BITS) + (one + e)) // (2 * (one + e)))  # round(2**16 / (1 + e))
    negative = [(1 << SIGMOID_BITS) - value for value in positive[:0:-1]]  # sigmoid(-x) = 1 - sigmoid(x)
    return negative + positive


def _norm_bounds(linear: QuantisedLinear, dim: int, unit: int) -> np.ndarray:
    """Largest |y @ weight.T| per output row for a normalised row y (norm <= sqrt(dim) * unit, each
    entry rounded by at most one unit): Cauchy–Schwarz, in Python integers."""
    weight = linear.transposed.cpu().numpy().T.astype(np.int64)  # integers held exactly in float64
    squares = (weight * weight).sum(axis=1).tolist()  # < dim * 2**30
    absolute = np.abs(weight).sum(axis=1).tolist()
    bounds = []
    for square, l1 in zip(squares, absolute):
        inner = dim * unit * unit * square
        bounds.append((math.isqrt(inner - 1) + 1 if inner > 0 else 0) + l1 + 1)
    return np.array(bounds, dtype=np.float64)


class _UnitRMSNorm(IntegerRMSNorm):
    """x / rms(x) with `unit` units per RMS and no gain: the gain is folded into the next weights."""

    def __init__(self, dim: int, eps: float, input_scale: float, device):
        super().__init__(torch.ones(dim), eps, input_scale, device)
        self.unit = math.isqrt(NORM_LIMIT**2 // dim)
        self.numerator = math.isqrt(dim * self.unit**2 * 4**NORM_FRACTION_BITS)  # sqrt(dim) * U * 2**F
        self.output_limit = NORM_LIMIT

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rescaled, root = self.rescaled_root(x)
        y = round_divide(rescaled * self.numerator, root << NORM_FRACTION_BITS)  # < 2**20 * 2**30
        return y.clamp(-NORM_LIMIT, NORM_LIMIT)


def _folded(weight: torch.Tensor, column_factors) -> torch.Tensor:
    """weight * factors per input column, in float64 then float32 (IEEE, the same everywhere)."""
    factors = torch.as_tensor(np.asarray(column_factors, dtype=np.float64))
    return (weight.detach().cpu().to(torch.float64) * factors[None, :]).to(torch.float32)


class _LlamaBlock:
    def __init__(self, layer, config, residual_scale: float, device):
        C = config.hidden_size
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or C // self.heads
        D, Hq, Hkv = self.head_dim, self.heads, self.kv_heads
        attention, mlp = layer.self_attn, layer.mlp
        self.norm1 = _UnitRMSNorm(C, layer.input_layernorm.variance_epsilon, residual_scale, device)
        self.norm2 = _UnitRMSNorm(C, layer.post_attention_layernorm.variance_epsilon, residual_scale, device)
        gain1 = layer.input_layernorm.weight.detach().cpu().to(torch.float64).numpy()
        gain2 = layer.post_attention_layernorm.weight.detach().cpu().to(torch.float64).numpy()

        # One product for q, k and v (rows: Hq*D, Hkv*D, Hkv*D), the norm's gain folded in.
        qkv_weight = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
        self.qkv = QuantisedLinear(_folded(qkv_weight, gain1), device, WEIGHT_LIMIT, keep_values=False)
        unit = self.norm1.unit
        real = _norm_bounds(self.qkv, C, unit) * self.qkv.scales / unit
        q_real, k_real, v_real = np.split(real, [Hq * D, (Hq + Hkv) * D])
        q_scales = positive_bounds(q_real.reshape(Hq, D).max(axis=1)) / QK_LIMIT
        k_scales = positive_bounds(k_real.reshape(Hkv, D).max(axis=1)) / QK_LIMIT
        v_scales = positive_bounds(v_real.reshape(Hkv, D).max(axis=1)) / VALUE_LIMIT
        self.limits = torch.tensor(np.repeat([QK_LIMIT] * (Hq + Hkv) + [VALUE_LIMIT] * Hkv, D), device=device)
        output_scales = np.repeat(np.concatenate([q_scales, k_scales, v_scales]), D)
        self.qkv_scale = fixed_point(self.qkv.scales / unit / output_scales, C * NORM_LIMIT * WEIGHT_LIMIT, device)
        self.split = (Hq * D, Hkv * D, Hkv * D)
        # Scores in 2**-LOGIT_FRACTION_BITS nats: q.k * s_q * s_k / sqrt(D), per query head.
        group = Hq // Hkv
        score_ratios = q_scales * np.repeat(k_scales, group) / math.sqrt(D) * float(2**LOGIT_FRACTION_BITS)
        self.score_scale = fixed_point(score_ratios, D * ROTATED_LIMIT**2, device).view(1, Hq, 1, 1)
        # The attention output is in v's units per kv head; o_proj takes those scales into its columns.
        self.o_proj = QuantisedLinear(
            _folded(attention.o_proj.weight, np.repeat(np.repeat(v_scales, group), D)), device, WEIGHT_LIMIT,
            keep_values=False,
        )
        self.o_scale = fixed_point(self.o_proj.scales / residual_scale, Hq * D * VALUE_LIMIT * WEIGHT_LIMIT, device)

        # SwiGLU: gate and up per channel; silu(gate) * up scaled per row; down takes the channel
        # scales into its columns.
        hidden = mlp.gate_proj.weight.shape[0]
        self.gate_up = QuantisedLinear(_folded(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), gain2),
                                        device, WEIGHT_LIMIT, keep_values=False)
        unit = self.norm2.unit
        real = _norm_bounds(self.gate_up, C, unit) * self.gate_up.scales / unit
        channel_scales = positive_bounds(real) / VALUE_LIMIT
        gate_scales, up_scales = channel_scales[:hidden], channel_scales[hidden:]
        self.gate_up_scale = fixed_point(self.gate_up.scales / unit / channel_scales, C * NORM_LIMIT * WEIGHT_LIMIT,
                                         device)
        self.sigmoid_index = fixed_point(gate_scales * float(2**SIGMOID_FRACTION_BITS), VALUE_LIMIT, device)
        self.hidden = hidden
        self.down = QuantisedLinear(_folded(mlp.down_proj.weight, gate_scales * up_scales), device, WEIGHT_LIMIT,
                                     keep_values=False)
        self.down_scale = fixed_point(self.down.scales / residual_scale, hidden * HIDDEN_LIMIT * WEIGHT_LIMIT, device)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Hugging Face's rotate-half convention: pairs (i, i + D/2) turn by the angle of i."""
        first, second = x[..., : self.head_dim // 2], x[..., self.head_dim // 2 :]
        half = 1 << (ROPE_BITS - 1)
        rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
        return (rotated + half) >> ROPE_BITS

    def __call__(self, x, cos, sin, tables, keys=None, values=None, allowed=None):
        """x (B, T, C) int64 residual; cos and sin (T, D/2) for the positions of x."""
        B, T, C = x.shape
        qkv = self.qkv(self.norm1(x), NORM_LIMIT)
        qkv = torch.minimum(torch.maximum(requantise(qkv, self.qkv_scale, in_place=True), -self.limits), self.limits)
        q, k, v = qkv.split(self.split, dim=-1)
        q = self._rotate(q.view(B, T, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = self._rotate(k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.reshape(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if keys is not None:
            k, v = keys(k), values(v)
        group = self.heads // self.kv_heads
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = integer_attention(q, k, v, self.score_scale, tables.attention, allowed, ROTATED_LIMIT, VALUE_LIMIT)
        y = y.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)
        x = requantise(self.o_proj(y, VALUE_LIMIT), self.o_scale, in_place=True).add_(x)

        gate_up = requantise(self.gate_up(self.norm2(x), NORM_LIMIT), self.gate_up_scale, -VALUE_LIMIT, VALUE_LIMIT,
                             in_place=True)
        gate, up = gate_up.split(self.hidden, dim=-1)
        index = requantise(gate, self.sigmoid_index).clamp_(-tables.sigmoid_middle, tables.sigmoid_middle)
        sigmoid = lookup(tables.sigmoid, index.add_(tables.sigmoid_middle))
        silu = (gate * sigmoid + (1 << (SIGMOID_BITS - 1))) >> SIGMOID_BITS  # in gate units, |silu| <= 2**20
        product = silu.mul_(up)  # < 2**40
        # Per row: shift right until the row's peak fits HIDDEN_LIMIT, and shift the result back.
        shift = (bit_length(product.abs().amax(-1, keepdim=True)) - (HIDDEN_LIMIT.bit_length() - 1)).clamp_(min=0)
        product = (product + (torch.ones_like(shift) << shift >> 1)) >> shift
        down = requantise(self.down(product, HIDDEN_LIMIT), self.down_scale, in_place=True)
        return down.bitwise_left_shift_(shift).add_(x)


class LlamaTables:
    """The integer tables of a Llama engine: exp for attention and output rows, and the sigmoid."""

    def __init__(self, device):
        self.attention = torch.tensor(exp_table(LOGIT_FRACTION_BITS, ATTENTION_EXP_BITS), device=device)
        self.output = torch.tensor(exp_table(LOGIT_FRACTION_BITS, OUTPUT_EXP_BITS), device=device)
        self.sigmoid = torch.tensor(sigmoid_table(), device=device)
        self.sigmoid_middle = SIGMOID_RANGE << SIGMOID_FRACTION_BITS


class ExactLlamaEngine(ExactEngine):
    """Exact engine for Hugging Face Llama models (including GGUF files loaded by transformers)."""

    cache_dtype = torch.float32  # |k| < 2**20, |v| <= 2**20: exact in float32, half the memory

    def __init__(self, model, device: str | torch.device = "cpu", start_token: int = 0, context_length: int = 2048):
        config = model.config
        reason = llama_support(config)
        if reason is not None:
            raise ValueError(f"the exact engine does not cover this model: {reason}")
        self.device = torch.device(device)
        self.vocab_size = int(config.vocab_size)
        self.start_token = int(start_token)
        self.context_length = int(context_length)
        self.tables = LlamaTables(self.device)

        embedding = model.get_input_embeddings().weight.detach().to(torch.float32).cpu()
        self.residual_scale = (float(embedding.abs().max()) or 1.0) / 2**RESIDUAL_BITS
        # Entries are at most 2**20 units: int32 halves the largest table of the engine.
        self.token_embedding = residual_units(embedding, self.residual_scale, self.device).to(torch.int32)
        self.blocks = [_LlamaBlock(layer, config, self.residual_scale, self.device) for layer in model.model.layers]
        first = self.blocks[0]
        self.cache_heads, self.cache_head_dim = first.kv_heads, first.head_dim
        self.rope_theta = _rope_theta(config)
        self.cos = self.sin = torch.zeros(0, first.head_dim // 2, dtype=torch.int64, device=self.device)

        final_norm = model.model.norm
        self.norm_f = _UnitRMSNorm(config.hidden_size, final_norm.variance_epsilon, self.residual_scale, self.device)
        gain = final_norm.weight.detach().cpu().to(torch.float64).numpy()
        self.head = QuantisedLinear(_folded(model.get_output_embeddings().weight, gain), self.device, WEIGHT_LIMIT,
                                     keep_values=False)
        self.logit_scale = fixed_point(
            self.head.scales / self.norm_f.unit * float(2**LOGIT_FRACTION_BITS),
            config.hidden_size * NORM_LIMIT * WEIGHT_LIMIT,
            self.device,
        )
        self.settings = {
            "kind": "exact",
            "architecture": "llama",
            "version": FORMAT_VERSION,
            "start_token": self.start_token,
            "weight_limit": WEIGHT_LIMIT,
            "norm_limit": NORM_LIMIT,
            "qk_limit": QK_LIMIT,
            "value_limit": VALUE_LIMIT,
            "hidden_limit": HIDDEN_LIMIT,
            "rope_bits": ROPE_BITS,
            "sigmoid": [SIGMOID_FRACTION_BITS, SIGMOID_RANGE, SIGMOID_BITS],
            "norm_fraction_bits": NORM_FRACTION_BITS,
            "residual_bits": RESIDUAL_BITS,
            "logit_fraction_bits": LOGIT_FRACTION_BITS,
            "attention_exp_bits": ATTENTION_EXP_BITS,
            "output_exp_bits": OUTPUT_EXP_BITS,
            "row_total_bits": ROW_TOTAL_BITS,
        }

    def _hidden(self, inputs, start_position, caches=None, allowed=None):
        x = self.token_embedding[inputs].to(torch.int64)  # (B, T, C)
        end = start_position + inputs.shape[1]
        if end > len(self.cos):  # the tables grow with the longest sequence seen, up to the context
            length = min(self.context_length, max(end, 2 * len(self.cos), 256))
            cos, sin = rope_tables(self.rope_theta, self.cache_head_dim, length)
            self.cos, self.sin = cos.to(self.device), sin.to(self.device)
        cos, sin = self.cos[start_position:end], self.sin[start_position:end]
        for index, block in enumerate(self.blocks):
            keys, values = caches[index] if caches is not None else (None, None)
            x = block(x, cos, sin, self.tables, keys=keys, values=values, allowed=allowed)
        return x

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        logits = requantise(self.head(self.norm_f(x), NORM_LIMIT), self.logit_scale, in_place=True)
        return integer_rows(logits, self.tables.output)
