"""The exact engine on a GGUF file's own integers: Llama models with Q4_0, Q4_1 and Q8_0 matrices.

A GGUF matrix is stored in blocks of 32 weights: small integer codes q and an fp16 scale d (and,
for Q4_1, an fp16 minimum m), weight = d * q (+ m). Every fp16 is an integer times a power of two,
so each output row's scales become int32 integers with one shared exponent per row, and a row's
dot product with an integer input is an exact integer:

    sum_b D_b * (sum_j q_bj x_bj) + M_b * (sum_j x_bj)      (then times 2**row_exponent)

Nothing is re-quantised: the engine computes with the file's codes and scales as they are. Inputs
to every product are int16 rows with one power-of-two exponent per row (shifted, rounding half up,
until the row's peak fits 15 bits), and every other scale is a power of two as well, so a value is
always an integer mantissa with a known exponent and rescaling is a rounding shift.

Engine version 2 (the default; version 1 is kept for the files that name it) rounds the input of
every 4-bit product to int8 blocks, as llama.cpp does for these matrices: each block of 32 inputs
becomes c * q with q in [-127, 127] and one integer c per block (`_int8_blocks`), which lets the
kernel multiply 32 codes an instruction instead of 16. The product is then exact on those inputs.

- residual stream: int64 in units of 2**-residual_bits, exact for the token embedding's values;
- RMSNorm: the row shifted so its peak has 20 bits, an exact integer square root, the F32 gains as
  24-bit integers against the largest gain; the output goes straight to int16 rows;
- q and k: power-of-two units per key-value head from a Cauchy–Schwarz bound, |q|, |k| <= 2**18
  before the rotation (clamped, so the bound holds whatever the input);
- rotary positions: adjacent pairs (the GGUF layout) turned by tables in 2**-24 units;
- v: one power-of-two unit per layer, |v| <= 2**20; gate and up: one unit each per layer, <= 2**24;
- SiLU by a sigmoid table; the SwiGLU product goes to int16 rows for the down projection;
- attention scores, softmax and output rows: as in the native engine (integer.py).

Products run in the compiled kernel (`_quantized.c`, AVX2 or plain C, threads splitting output
rows) on CPU, and in float64 torch matmuls on integer operands elsewhere (`reference=True` or a
GPU): both are exact, so both give the same integers. The tests check that row for row.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from .exact import ExactEngine
from .integer import (
    ATTENTION_EXP_BITS,
    LOGIT_FRACTION_BITS,
    NORM_FRACTION_BITS,
    OUTPUT_EXP_BITS,
    ROW_TOTAL_BITS,
    bit_length,
    exact_matmul,
    fixed_point,
    integer_attention,
    integer_rows,
    integer_sqrt,
    lookup,
    round_divide,
    shift_signed,
)
from .llama import ROPE_BITS, SIGMOID_BITS, SIGMOID_FRACTION_BITS, SIGMOID_RANGE, LlamaTables, rope_tables

__all__ = ["GGUFLlama", "NotCovered", "QuantisedMatrix", "ExactGGUFLlamaEngine", "round_shift", "kernels_available"]

FORMAT_VERSION = 2  # the engine version new files get
VERSIONS = (1, 2)  # 1: int16 inputs to every product; 2: int8 input blocks to the 4-bit ones
INPUT_BITS = 15  # product inputs are int16 rows: peak < 2**15
NORM_INPUT_BITS = 20  # RMSNorm shifts a row so its peak has this many bits
GAIN_BITS = 24  # F32 gains as integers below 2**24 against the largest
QK_LIMIT = 2**18
VALUE_LIMIT = 2**20
GATE_UP_LIMIT = 2**24
ROTATED_BOUND = 2**19  # |q|, |k| after the rotation: sqrt(2) * QK_LIMIT, rounded
BLOCK = 32
ROWS_PER_GROUP = 8  # the kernel's interleaving of output rows

try:
    from . import _quantized
except ImportError:  # an install without the compiled kernels: the torch path still works
    _quantized = None


def kernels_available() -> bool:
    return _quantized is not None


# ---------------------------------------------------------------------------------------------
# Integer helpers shared by both paths (the kernels' twins)
# ---------------------------------------------------------------------------------------------


def round_shift(x: torch.Tensor, shift: torch.Tensor, limit: int = 0) -> torch.Tensor:
    """x * 2**shift: right shifts round half up, left shifts saturate at 2**62; shift clamped to
    [-62, 62]; the result clamped to [-limit, limit] when limit > 0. Twin of the kernel's."""
    shift = shift.clamp(-62, 62)
    right = (-shift).clamp(min=0)
    left = shift.clamp(min=0)
    half = torch.where(right > 0, torch.ones_like(right) << (right - 1).clamp(min=0), torch.zeros_like(right))
    saturation = (torch.ones_like(left) << 62) >> left
    y = torch.maximum(torch.minimum((x + half) >> right, saturation), -saturation) << left
    return y.clamp(-limit, limit) if limit > 0 else y


def _int16_rows(values: torch.Tensor, base_exponent) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of int64 -> int16 rows and exponents: shifted right until the peak fits 15 bits."""
    peak = values.abs().amax(-1, keepdim=True)
    shift = (bit_length(peak) - INPUT_BITS).clamp(min=0)
    rows = round_shift(values, -shift).clamp(-(2**INPUT_BITS - 1), 2**INPUT_BITS - 1)
    return rows.to(torch.int16), (shift[..., 0] + base_exponent).to(torch.int32)


def _int8_blocks(x: torch.Tensor) -> torch.Tensor:
    """Twin of the kernel's int8_blocks: int16 rows (N, K) -> the int64 rows c * q they stand for, per
    block of 32: c = min(ceil(peak / 127), 258), q = floor((2x + c) / 2c), so |q| <= 127, |c q| <= 32767."""
    N, K = x.shape
    blocks = x.to(torch.int64).view(N, K // BLOCK, BLOCK)
    peak = blocks.abs().amax(-1, keepdim=True)
    c = torch.div(peak + 126, 127, rounding_mode="floor").clamp(max=258)
    q = torch.div(2 * blocks + c, (2 * c).clamp(min=1), rounding_mode="floor")
    return (q * c).view(N, K)


@dataclass
class _NormConstants:
    gain: torch.Tensor  # int64 (C,)
    gain_exponent: int
    eps_fixed: int
    eps_exponent: int
    numerator: int  # floor(sqrt(C) * 2**NORM_FRACTION_BITS)


def _norm_constants(gain: np.ndarray, eps: float, residual_bits: int, device) -> _NormConstants:
    gain = np.asarray(gain, dtype=np.float64)
    dim = len(gain)
    peak = float(np.abs(gain).max(initial=0.0)) or 1.0
    gain_exponent = int(np.frexp(peak)[1]) - GAIN_BITS
    integers = np.rint(np.ldexp(gain, -gain_exponent)).astype(np.int64)  # |G| <= 2**24
    # eps in units of the squared residual: dim * eps * 2**(2 * residual_bits), as a 40-bit integer.
    eps_units = eps * dim
    eps_fraction = 40 - int(np.frexp(eps_units)[1]) if eps_units > 0 else 0
    eps_fixed = int(np.rint(np.ldexp(eps_units, eps_fraction)))
    return _NormConstants(torch.from_numpy(integers).to(device), gain_exponent, eps_fixed,
                          2 * residual_bits - eps_fraction, math.isqrt(dim * 4**NORM_FRACTION_BITS))


def _rms_norm_reference(x: torch.Tensor, norm: _NormConstants) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of the kernel's rms_norm: int64 rows (N, C) -> int16 rows and exponents."""
    peak = x.abs().amax(-1, keepdim=True)
    shift = NORM_INPUT_BITS - bit_length(peak)
    rescaled = shift_signed(x, shift)
    eps_shift = norm.eps_exponent + 2 * shift
    eps_fixed = torch.full_like(eps_shift, norm.eps_fixed)
    eps = torch.where(eps_shift >= 0,
                      torch.where(norm.eps_fixed.bit_length() + eps_shift > 61, torch.full_like(eps_shift, 2**61),
                                  eps_fixed << eps_shift.clamp(0, 62)),
                      torch.where(-eps_shift >= 63, torch.zeros_like(eps_shift),
                                  eps_fixed >> (-eps_shift).clamp(0, 62)))
    root = integer_sqrt((rescaled * rescaled).sum(-1, keepdim=True) + eps).clamp(min=1)
    y = round_divide(rescaled * norm.gain * norm.numerator, root << NORM_FRACTION_BITS)
    return _int16_rows(y, norm.gain_exponent)


def _rotate_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Twin of the kernel's rotate: x (B, T, heads, D), pairs (2i, 2i + 1) turned by cos and sin (T, D/2)."""
    first, second = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rounding = 1 << (ROPE_BITS - 1)
    turned = [(first * cos - second * sin + rounding) >> ROPE_BITS,
              (second * cos + first * sin + rounding) >> ROPE_BITS]
    return torch.stack(turned, dim=-1).flatten(-2)


def _swiglu_reference(x: torch.Tensor, tables, gate_exponent: int, base_exponent: int):
    """Twin of the kernel's swiglu."""
    gate, up = x.chunk(2, dim=-1)
    index = round_shift(gate, torch.tensor(SIGMOID_FRACTION_BITS - gate_exponent, device=x.device))
    index = index.clamp(-tables.sigmoid_middle, tables.sigmoid_middle) + tables.sigmoid_middle
    silu = (gate * lookup(tables.sigmoid, index) + (1 << (SIGMOID_BITS - 1))) >> SIGMOID_BITS
    return _int16_rows(silu * up, base_exponent)


# ---------------------------------------------------------------------------------------------
# GGUF matrices as integers
# ---------------------------------------------------------------------------------------------


class QuantisedMatrix:
    """A GGUF Q4_0, Q4_1 or Q8_0 matrix (rows R, inputs K) as codes and int32 scales per row exponent.

    `row_exponent` already includes the caller's output unit: the product is
    round(sum * 2**(row_exponent[r] + input_exponent[t])), clamped to `limit` when set.
    """

    def __init__(self, codes: np.ndarray, scales: np.ndarray, minimums: np.ndarray | None, exponents: np.ndarray,
                 signed: bool):
        self.rows, self.inputs = codes.shape  # codes (R, K) in natural order
        if self.rows % ROWS_PER_GROUP or self.inputs % BLOCK:
            raise ValueError(f"a {self.rows} x {self.inputs} matrix does not tile into 8 rows and 32 inputs")
        self.natural_codes = codes  # int8 or uint8
        self.scales = scales.astype(np.int32)  # (R, K/32)
        self.minimums = None if minimums is None else minimums.astype(np.int32)
        self.exponents = exponents.astype(np.int32)  # (R,) the scales' own exponent
        self.signed = signed
        self.output_shift = np.zeros(self.rows, dtype=np.int32)
        self.limits: np.ndarray | None = None  # int64 per row: results clamped to [-limit, limit]
        self._kernel_layout = None
        self._reference_weight = {}
        self._total_exponent = None

    @classmethod
    def from_gguf(cls, kind: str, raw: np.ndarray, rows: int, inputs: int) -> "QuantisedMatrix":
        """From a GGUF tensor's bytes (rows, bytes per row)."""
        blocks = inputs // BLOCK
        raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, blocks, -1)
        scale = raw[:, :, 0:2].copy().view(np.float16)[..., 0].astype(np.float64)
        if kind == "Q8_0":
            codes = raw[:, :, 2:34].view(np.int8).reshape(rows, inputs)
            return cls._with_exponents(codes, scale, None, signed=True)
        if kind == "Q4_1":
            minimum = raw[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
            packed = raw[:, :, 4:20]
        elif kind == "Q4_0":  # d * (q - 8): a minimum of -8 d
            minimum = -8.0 * scale
            packed = raw[:, :, 2:18]
        else:
            raise ValueError(f"tensor type {kind} is not covered (Q4_0, Q4_1 and Q8_0 are)")
        codes = np.concatenate([packed & 15, packed >> 4], axis=-1).reshape(rows, inputs)  # low nibbles first
        return cls._with_exponents(codes, scale, minimum, signed=False)

    @classmethod
    def _with_exponents(cls, codes, scale, minimum, signed):
        """Scales (and minimums) as integers times 2**exponent per row, exact where they fit int32.

        An fp16 value's last bit is 2**(e - 11) (2**-24 for subnormals); the row exponent is the
        smallest last bit in the row, so every scale is an exact integer. The row's total must also
        stay below 2**62; a row whose scales span too many bits would lose its smallest scales'
        lowest bits instead (rounded), which no tested file needs.
        """
        values = scale if minimum is None else np.concatenate([scale, minimum], axis=1)
        magnitude = np.abs(values)
        _, exponents = np.frexp(magnitude)
        last_bits = np.where(magnitude > 0, np.maximum(exponents - 11, -24), 10**6).min(axis=1)
        top = np.where(magnitude > 0, exponents, -(10**6)).max(axis=1)
        blocks = codes.shape[1] // BLOCK
        code_peak = 128 if signed else 15
        block_peak = BLOCK * code_peak * 2**INPUT_BITS
        if minimum is not None:
            block_peak += BLOCK * 2**INPUT_BITS
        allowed_bits = min(31, 62 - int(blocks * block_peak).bit_length())
        row_exponent = np.maximum(last_bits, top - allowed_bits)
        row_exponent = np.where(top < -(10**5), 0, row_exponent)  # an all-zero row
        as_integers = lambda v: np.rint(np.ldexp(v, -row_exponent[:, None])).astype(np.int64)  # noqa: E731
        return cls(codes, as_integers(scale), None if minimum is None else as_integers(minimum), row_exponent, signed)

    @staticmethod
    def stack(matrices: list["QuantisedMatrix"]) -> "QuantisedMatrix":
        """Rows of several matrices with the same inputs, as one product."""
        if len({m.signed for m in matrices}) != 1 or len({m.minimums is None for m in matrices}) != 1:
            raise ValueError("stacked matrices must share their quantisation type")
        minimums = None if matrices[0].minimums is None else np.concatenate([m.minimums for m in matrices])
        stacked = QuantisedMatrix(np.concatenate([m.natural_codes for m in matrices]),
                                  np.concatenate([m.scales for m in matrices]), minimums,
                                  np.concatenate([m.exponents for m in matrices]), matrices[0].signed)
        stacked.output_shift = np.concatenate([m.output_shift for m in matrices])
        if any(m.limits is not None for m in matrices):
            stacked.limits = np.concatenate([np.full(m.rows, 2**62) if m.limits is None else m.limits
                                             for m in matrices])
        return stacked

    def total_exponent(self) -> np.ndarray:
        """The scales' exponent plus the caller's output unit, per row (int32); fixed once used."""
        if self._total_exponent is None:
            self._total_exponent = (self.exponents + self.output_shift).astype(np.int32)
        return self._total_exponent

    def real(self) -> np.ndarray:
        """The weights as float64 (R, K), exactly; for bounds only."""
        blocks = self.inputs // BLOCK
        codes = self.natural_codes.astype(np.float64).reshape(self.rows, blocks, BLOCK)
        weight = codes * self.scales[:, :, None]
        if self.minimums is not None:
            weight = weight + self.minimums[:, :, None]
        return np.ldexp(weight.reshape(self.rows, self.inputs), self.exponents[:, None])

    def kernel_layout(self):
        """codes [R/8][K/32][16][8][2] (8-bit) or [R/8][K/32][4][8][4] (4-bit: step s holds each row's
        inputs 4s .. 4s + 3 in the low nibbles and 16 + 4s .. 16 + 4s + 3 in the high ones), scales and
        minimums [R/8][K/32][8]."""
        if self._kernel_layout is None:
            groups, blocks = self.rows // ROWS_PER_GROUP, self.inputs // BLOCK
            if self.signed:
                codes = self.natural_codes.reshape(groups, ROWS_PER_GROUP, blocks, BLOCK // 2, 2)
                codes = np.ascontiguousarray(codes.transpose(0, 2, 3, 1, 4)).view(np.uint8)
            else:  # (group, row, block, half, step, input) -> (group, block, step, row, input, half)
                codes = self.natural_codes.reshape(groups, ROWS_PER_GROUP, blocks, 2, 4, 4).transpose(0, 2, 4, 1, 5, 3)
                codes = np.ascontiguousarray(codes[..., 0] | (codes[..., 1] << 4), dtype=np.uint8)
            regroup = lambda v: np.ascontiguousarray(  # noqa: E731
                v.reshape(groups, ROWS_PER_GROUP, blocks).transpose(0, 2, 1), dtype=np.int32)
            minimums = None if self.minimums is None else regroup(self.minimums)
            self._kernel_layout = (codes, regroup(self.scales), minimums)
        return self._kernel_layout

    def keep_kernel_layout_only(self):
        """Free the natural-order codes, scales and minimums once the kernel layout exists: the
        compiled kernels read only that, and the natural copies are as large again."""
        self.kernel_layout()
        self.natural_codes = self.scales = self.minimums = None

    def reference_weight(self, device) -> torch.Tensor:
        """The integer weights D*q + M (R, K) as float64 for exact torch products (|w| < 2**40)."""
        key = str(device)
        if key not in self._reference_weight:
            blocks = self.inputs // BLOCK
            codes = torch.from_numpy(self.natural_codes.astype(np.int64)).view(self.rows, blocks, BLOCK)
            weight = codes * torch.from_numpy(self.scales.astype(np.int64))[:, :, None]
            if self.minimums is not None:
                weight += torch.from_numpy(self.minimums.astype(np.int64))[:, :, None]
            self.weight_peak = int(weight.abs().max()) if weight.numel() else 0
            self._reference_weight[key] = (weight.view(self.rows, self.inputs).to(torch.float64).T.contiguous()
                                           .to(device))
        return self._reference_weight[key]


def _int16_outputs(rows: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for a kernel's int16 rows and their exponents."""
    return torch.empty(rows, columns, dtype=torch.int16), torch.empty(rows, dtype=torch.int32)


class _Products:
    """Runs products, norms and int16 rows through the compiled kernels or their torch twins."""

    def __init__(self, compiled: bool, threads: int | None = None, plain: bool = False, int8_inputs: bool = True):
        self.compiled = compiled
        self.fixed_threads = threads  # None: torch's thread count at each call
        self.plain = plain
        self.int8_inputs = int8_inputs  # engine version 2: 4-bit products take int8 input blocks

    @property
    def threads(self) -> int:
        return self.fixed_threads or torch.get_num_threads()

    def linear(self, matrix: QuantisedMatrix, x: torch.Tensor, exponent: torch.Tensor,
               accumulate_into: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """x int16 (N, K), exponent int32 (N,) -> int64 (N, R); added into `accumulate_into` when
        given, else written into `out` when given (compiled kernels)."""
        N = x.shape[0]
        row_exponent = matrix.total_exponent()
        if self.compiled:
            codes, scales, minimums = matrix.kernel_layout()
            if accumulate_into is not None:
                out = accumulate_into
            elif out is None:
                out = torch.empty(N, matrix.rows, dtype=torch.int64)
            _quantized.linear(x.numpy(), exponent.numpy(), codes, scales, minimums, row_exponent, out.numpy(), N,
                              matrix.inputs, matrix.rows, matrix.signed, accumulate_into is not None, self.threads,
                              self.plain, matrix.limits, self.int8_inputs)
            return out
        weight = matrix.reference_weight(x.device)
        inputs = _int8_blocks(x) if self.int8_inputs and not matrix.signed else x.to(torch.int64)
        total = exact_matmul(inputs, weight, 2**INPUT_BITS, max(1, matrix.weight_peak))
        shift = (torch.from_numpy(row_exponent.astype(np.int64)).to(x.device)[None, :]
                 + exponent.to(torch.int64)[:, None])
        value = round_shift(total, shift)
        if matrix.limits is not None:
            limits = torch.from_numpy(matrix.limits).to(x.device)
            value = torch.minimum(torch.maximum(value, -limits), limits)
        if accumulate_into is not None:
            return accumulate_into.add_(value)
        return value

    def rms_norm(self, x: torch.Tensor, norm: _NormConstants) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.compiled:
            return _rms_norm_reference(x, norm)
        N, C = x.shape
        out, exponent = _int16_outputs(N, C)
        _quantized.rms_norm(x.contiguous().numpy(), norm.gain.numpy(), out.numpy(), exponent.numpy(), N, C,
                            norm.eps_fixed, norm.eps_exponent, norm.numerator, NORM_FRACTION_BITS, norm.gain_exponent,
                            self.plain)
        return out, exponent

    def rotate(self, x: torch.Tensor, begin: int, heads: int, width: int, T: int, start: int, cos, sin) -> None:
        """Rotary positions in place on columns [begin, begin + heads * width) of x (N, columns), whose
        row n is at position start + n % T; cos and sin are the whole tables."""
        if not self.compiled:
            part = x[:, begin : begin + heads * width].view(-1, T, heads, width)
            part.copy_(_rotate_reference(part, cos[start : start + T], sin[start : start + T]))
            return
        _quantized.rotate(x.numpy(), cos.numpy(), sin.numpy(), x.shape[0], x.shape[1], begin, heads, width, T, start,
                          cos.shape[0], ROPE_BITS)

    def swiglu(self, x: torch.Tensor, tables, gate_exponent: int, base_exponent: int):
        """Rows [gate | up] -> silu(gate) * up as int16 rows and exponents."""
        hidden = x.shape[1] // 2
        if not self.compiled:
            return _swiglu_reference(x, tables, gate_exponent, base_exponent)
        out, exponent = _int16_outputs(x.shape[0], hidden)
        _quantized.swiglu(x.numpy(), tables.sigmoid_array, out.numpy(), exponent.numpy(), x.shape[0], hidden,
                          tables.sigmoid_middle, SIGMOID_FRACTION_BITS - gate_exponent, SIGMOID_BITS, base_exponent,
                          self.plain)
        return out, exponent

    def int16_rows(self, x: torch.Tensor, base_exponent: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.compiled:
            return _int16_rows(x, base_exponent)
        N, C = x.shape
        out, exponent = _int16_outputs(N, C)
        _quantized.quantise_rows(x.contiguous().numpy(), out.numpy(), exponent.numpy(), N, C, base_exponent, self.plain)
        return out, exponent


# ---------------------------------------------------------------------------------------------
# The GGUF file
# ---------------------------------------------------------------------------------------------


@dataclass
class LlamaShape:
    layers: int
    dim: int
    hidden: int
    heads: int
    kv_heads: int
    vocab_size: int
    context_length: int
    rope_theta: float
    norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class NotCovered(ValueError):
    """A well-formed GGUF file that this engine does not cover (another architecture or type)."""


class GGUFLlama:
    """A Llama GGUF file read with the `gguf` package: its shape and its tensors, memory-mapped."""

    MATRIX_TYPES = ("Q4_0", "Q4_1", "Q8_0")

    def __init__(self, path, reader=None):
        if reader is None:
            import gguf

            reader = gguf.GGUFReader(str(path), "r")
        self.path = path
        self.reader = reader
        self.tensors = {tensor.name: tensor for tensor in self.reader.tensors}
        architecture = self.field("general.architecture")
        if architecture != "llama":
            raise NotCovered(f"architecture {architecture!r} (only 'llama')")
        prefix = "llama."
        dim = int(self.field(prefix + "embedding_length"))
        heads = int(self.field(prefix + "attention.head_count"))
        self.shape = LlamaShape(
            layers=int(self.field(prefix + "block_count")),
            dim=dim,
            hidden=int(self.field(prefix + "feed_forward_length")),
            heads=heads,
            kv_heads=int(self.field(prefix + "attention.head_count_kv", heads)),
            vocab_size=int(self.tensors["token_embd.weight"].shape[1]),
            context_length=int(self.field(prefix + "context_length", 2048)),
            rope_theta=float(self.field(prefix + "rope.freq_base", 10000.0)),
            norm_eps=float(self.field(prefix + "attention.layer_norm_rms_epsilon", 1e-5)),
        )
        if int(self.field(prefix + "rope.dimension_count", self.shape.head_dim)) != self.shape.head_dim:
            raise NotCovered("partial rotary embeddings")
        if self.field(prefix + "rope.scaling.type", "none") not in ("none", None):
            raise NotCovered("rotary scaling")
        if self.shape.dim % self.shape.heads or self.shape.heads % self.shape.kv_heads or self.shape.head_dim % 2:
            raise ValueError("inconsistent head counts")
        for name, tensor in self.tensors.items():
            kind = tensor.tensor_type.name
            is_matrix = len(tensor.shape) == 2
            if is_matrix and kind not in self.MATRIX_TYPES or not is_matrix and kind != "F32":
                raise NotCovered(f"tensor {name} is {kind} (matrices must be {', '.join(self.MATRIX_TYPES)}, "
                                 "vectors F32)")
        expected = {"token_embd.weight": (self.shape.dim, self.shape.vocab_size),
                    "output_norm.weight": (self.shape.dim,)}
        for layer in range(self.shape.layers):
            name = f"blk.{layer}."
            C, H, D, Hkv = self.shape.dim, self.shape.hidden, self.shape.head_dim, self.shape.kv_heads
            expected.update({name + "attn_q.weight": (C, C), name + "attn_k.weight": (C, Hkv * D),
                             name + "attn_v.weight": (C, Hkv * D), name + "attn_output.weight": (C, C),
                             name + "ffn_gate.weight": (C, H), name + "ffn_up.weight": (C, H),
                             name + "ffn_down.weight": (H, C), name + "attn_norm.weight": (C,),
                             name + "ffn_norm.weight": (C,)})
            if any(f"{name}{part}.bias" in self.tensors for part in ("attn_q", "attn_k", "attn_v")):
                raise NotCovered("biases in attention")
        for name, tensor in self.tensors.items():
            if np.asarray(tensor.data).nbytes != int(tensor.n_bytes):
                raise ValueError(f"tensor {name} is truncated")
        for name, shape in expected.items():
            if name not in self.tensors:
                raise ValueError(f"tensor {name} is missing")
            if tuple(int(n) for n in self.tensors[name].shape) != shape:
                raise ValueError(f"tensor {name} has shape {list(self.tensors[name].shape)}, expected {list(shape)}")
        if ("output.weight" in self.tensors
                and tuple(int(n) for n in self.tensors["output.weight"].shape) != expected["token_embd.weight"]):
            raise ValueError("tensor output.weight has the wrong shape")

    def release(self) -> None:
        """Unmap the file once an engine holds its own copies (the mapped pages count as resident
        memory); `reopen` maps it again for another engine."""
        self.reader = None
        self.tensors = {}

    def reopen(self) -> None:
        if self.reader is None:
            from ..models.gguf import _fast_reader

            self.reader = _fast_reader(self.path)
            self.tensors = {tensor.name: tensor for tensor in self.reader.tensors}

    def field(self, key: str, default=None):
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def matrix(self, name: str) -> QuantisedMatrix:
        tensor = self.tensors[name]
        inputs, rows = (int(n) for n in tensor.shape)
        return QuantisedMatrix.from_gguf(tensor.tensor_type.name, np.asarray(tensor.data), rows, inputs)

    def vector(self, name: str) -> np.ndarray:
        return np.asarray(self.tensors[name].data, dtype=np.float32).astype(np.float64)

    def output_name(self) -> str:
        return "output.weight" if "output.weight" in self.tensors else "token_embd.weight"

    def parameters(self) -> int:
        return sum(int(np.prod([int(n) for n in tensor.shape])) for tensor in self.tensors.values())


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


def _exponent_for(bound: float, limit: int) -> int:
    """The power-of-two unit exponent F such that bound * 2**F <= limit."""
    if bound <= 0:
        return 0
    return int(math.floor(math.log2(limit / bound)))


def _norm_product_bounds(matrix: QuantisedMatrix, gain: np.ndarray) -> np.ndarray:
    """Largest |(x / rms(x) * gain) @ w| per row: sqrt(dim) * ||w * gain|| (Cauchy–Schwarz), with 1 % margin
    for the rounding of the int16 input."""
    weighted = matrix.real() * gain[None, :]
    return math.sqrt(matrix.inputs) * np.sqrt((weighted * weighted).sum(axis=1)) * 1.01


class _Block:
    def __init__(self, model: GGUFLlama, layer: int, residual_bits: int, device):
        shape = model.shape
        D, Hq, Hkv = shape.head_dim, shape.heads, shape.kv_heads
        self.heads, self.kv_heads, self.head_dim = Hq, Hkv, D
        name = f"blk.{layer}."
        gain1, gain2 = model.vector(name + "attn_norm.weight"), model.vector(name + "ffn_norm.weight")
        self.norm1 = _norm_constants(gain1, shape.norm_eps, residual_bits, device)
        self.norm2 = _norm_constants(gain2, shape.norm_eps, residual_bits, device)

        q, k, v = (model.matrix(name + part + ".weight") for part in ("attn_q", "attn_k", "attn_v"))
        group = Hq // Hkv
        q_bounds = _norm_product_bounds(q, gain1).reshape(Hkv, group * D).max(axis=1)  # per key-value head
        k_bounds = _norm_product_bounds(k, gain1).reshape(Hkv, D).max(axis=1)
        self.q_exponents = [_exponent_for(b, QK_LIMIT) for b in q_bounds]
        self.k_exponents = [_exponent_for(b, QK_LIMIT) for b in k_bounds]
        self.v_exponent = _exponent_for(float(_norm_product_bounds(v, gain1).max()), VALUE_LIMIT)
        q.output_shift = np.repeat(self.q_exponents, group * D).astype(np.int32)
        k.output_shift = np.repeat(self.k_exponents, D).astype(np.int32)
        v.output_shift = np.full(v.rows, self.v_exponent, dtype=np.int32)
        q.limits = np.full(q.rows, QK_LIMIT, dtype=np.int64)
        k.limits = np.full(k.rows, QK_LIMIT, dtype=np.int64)
        v.limits = np.full(v.rows, VALUE_LIMIT, dtype=np.int64)
        self.qkv = QuantisedMatrix.stack([q, k, v])
        self.split = (Hq * D, Hkv * D, Hkv * D)
        # Scores in 2**-LOGIT_FRACTION_BITS nats: q.k * 2**-(Fq + Fk) / sqrt(D), per key-value head.
        ratios = [2.0 ** (LOGIT_FRACTION_BITS - fq - fk) / math.sqrt(D)
                  for fq, fk in zip(self.q_exponents, self.k_exponents)]
        self.score_scale = fixed_point(ratios, D * ROTATED_BOUND**2, device).view(1, Hkv, 1, 1)
        self.score_multiplier = self.score_scale.multiplier.reshape(-1).cpu().numpy().copy()
        self.score_shift = self.score_scale.shift.reshape(-1).cpu().numpy().copy()

        self.o_proj = model.matrix(name + "attn_output.weight")
        self.o_proj.output_shift = np.full(self.o_proj.rows, residual_bits, dtype=np.int32)

        gate, up = model.matrix(name + "ffn_gate.weight"), model.matrix(name + "ffn_up.weight")
        self.gate_exponent = _exponent_for(float(_norm_product_bounds(gate, gain2).max()), GATE_UP_LIMIT)
        self.up_exponent = _exponent_for(float(_norm_product_bounds(up, gain2).max()), GATE_UP_LIMIT)
        gate.output_shift = np.full(gate.rows, self.gate_exponent, dtype=np.int32)
        up.output_shift = np.full(up.rows, self.up_exponent, dtype=np.int32)
        self.gate_up = QuantisedMatrix.stack([gate, up])
        self.gate_up.limits = np.full(self.gate_up.rows, GATE_UP_LIMIT, dtype=np.int64)
        self.hidden = gate.rows
        self.down = model.matrix(name + "ffn_down.weight")
        self.down.output_shift = np.full(self.down.rows, residual_bits, dtype=np.int32)
        self._kernel_arguments = None

    def matrices(self):
        return [self.qkv, self.o_proj, self.gate_up, self.down]

    def _attend(self, q, k, v, products, tables, keys, values, allowed):
        """Causal attention over the keys so far, keys and values as int16 rows with exponents (the cache's
        form, also in a full pass, so both see the same integers): the torch path; the compiled one is
        inside `block`."""
        B, Hkv, rows, D = q.shape
        T = k.shape[2]
        if keys is None:  # a full pass: the whole sequence as one temporary cache
            keys, values = (_KeyValueRows(B, Hkv, T, D, products, q.device) for _ in range(2))
        keys.append(k)
        values.append(v)
        seen = keys.position + T
        group = rows // T
        mask = None if allowed is None else allowed.repeat(group, 1)
        return integer_attention(q, keys.values(seen), values.values(seen), self.score_scale, tables.attention,
                                 mask, ROTATED_BOUND, VALUE_LIMIT)

    def kernel_arguments(self, tables) -> tuple:
        """This block's constants as the compiled `block` takes them (built once)."""
        if self._kernel_arguments is None:
            def matrix(m: QuantisedMatrix) -> tuple:
                codes, scales, minimums = m.kernel_layout()
                return codes, scales, minimums, m.total_exponent(), m.limits, m.rows, m.inputs, m.signed

            def norm(n: _NormConstants) -> tuple:
                return n.gain.numpy(), n.eps_fixed, n.eps_exponent, n.numerator, NORM_FRACTION_BITS, n.gain_exponent

            self._kernel_arguments = (
                self.qkv.inputs, self.heads, self.kv_heads, self.head_dim, self.hidden, norm(self.norm1),
                matrix(self.qkv), ROPE_BITS, self.score_multiplier, self.score_shift, tables.attention_array,
                self.v_exponent, matrix(self.o_proj), norm(self.norm2), matrix(self.gate_up), tables.sigmoid_array,
                tables.sigmoid_middle, SIGMOID_FRACTION_BITS - self.gate_exponent, SIGMOID_BITS,
                -(self.gate_exponent + self.up_exponent), matrix(self.down))
        return self._kernel_arguments

    def __call__(self, x, products: _Products, start, cos, sin, tables, keys=None, values=None, allowed=None):
        """x (B, T, C) int64 residual at positions start.., updated in place and returned. cos and sin are
        the whole rotary tables. q and k keep GGUF's pair order, which q.k does not see."""
        B, T, C = x.shape
        if products.compiled:  # the same steps in one compiled call
            x = x.contiguous()
            if keys is None:  # a full pass: the whole sequence as one temporary cache
                keys, values = (_KeyValueRows(B, self.kv_heads, T, self.head_dim, products, x.device) for _ in range(2))
            keys.reserve(keys.position + T)
            values.reserve(values.position + T)
            _quantized.block(self.kernel_arguments(tables), x.numpy(), B, T, start, cos.numpy(), sin.numpy(),
                             cos.shape[0], keys.rows.numpy(), keys.exponents.numpy(), values.rows.numpy(),
                             values.exponents.numpy(), keys.position, keys.rows.shape[2], products.threads,
                             products.plain, products.int8_inputs)
            return x
        rows = x.view(B * T, C)
        D, Hq, Hkv = self.head_dim, self.heads, self.kv_heads
        h, exponent = products.rms_norm(rows, self.norm1)
        qkv = products.linear(self.qkv, h, exponent)
        products.rotate(qkv, 0, Hq + Hkv, D, T, start, cos, sin)  # q and k heads are adjacent columns
        q, k, v = qkv.split(self.split, dim=-1)
        q = q.reshape(B, T, Hq, D).transpose(1, 2)  # (B, Hq, T, D)
        k = k.reshape(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.reshape(B, T, Hkv, D).transpose(1, 2)
        group = Hq // Hkv
        # Grouped-query attention without copying keys: the group's query heads become more queries.
        q = q.reshape(B, Hkv, group * T, D)
        y = self._attend(q, k, v, products, tables, keys, values, allowed)
        y = y.reshape(B, Hq, T, D).transpose(1, 2).reshape(B * T, Hq * D)
        y16, exponent = products.int16_rows(y, -self.v_exponent)
        products.linear(self.o_proj, y16, exponent, accumulate_into=rows)

        h, exponent = products.rms_norm(rows, self.norm2)
        gate_up = products.linear(self.gate_up, h, exponent)
        # silu(gate) in gate units (|silu| <= 2**24) times up: below 2**48, in 2**-(gate_exponent + up_exponent)
        p16, exponent = products.swiglu(gate_up, tables, self.gate_exponent, -(self.gate_exponent + self.up_exponent))
        products.linear(self.down, p16, exponent, accumulate_into=rows)
        return x


class _KeyValueRows:
    """Keys or values of one layer: int16 rows (B, H, positions, D) with one exponent per row, grown as needed.

    Rounding each 64-entry row to 15 bits keeps more precision than fp16 and half the memory of
    float32, so more chunks decode in lockstep within the same memory.
    """

    def __init__(self, batch_size, heads, length, head_dim, products, device, capacity=None):
        self.length = length  # positions at most
        self.products = products
        capacity = length if capacity is None else min(length, capacity)
        if torch.device(device).type == "cpu":  # numpy's zeros: torch spreads even small fills over its threads
            self.rows = torch.from_numpy(np.zeros((batch_size, heads, capacity, head_dim), dtype=np.int16))
            self.exponents = torch.from_numpy(np.zeros((batch_size, heads, capacity), dtype=np.int32))
        else:
            self.rows = torch.zeros(batch_size, heads, capacity, head_dim, dtype=torch.int16, device=device)
            self.exponents = torch.zeros(batch_size, heads, capacity, dtype=torch.int32, device=device)
        self.position = 0

    def reserve(self, end: int) -> None:
        """Room for positions < end: grown by doubling, up to the context."""
        if end > self.rows.shape[2]:  # positions past the end are never read: no need to clear them
            B, H, old, D = self.rows.shape
            capacity = min(self.length, max(end, 2 * old))
            rows = self.rows.new_empty(B, H, capacity, D)
            exponents = self.exponents.new_empty(B, H, capacity)
            if rows.device.type == "cpu":  # numpy copies without waiting for torch's threads
                rows.numpy()[:, :, :old] = self.rows.numpy()
                exponents.numpy()[:, :, :old] = self.exponents.numpy()
            else:
                rows[:, :, :old] = self.rows
                exponents[:, :, :old] = self.exponents
            self.rows, self.exponents = rows, exponents

    def append(self, x: torch.Tensor) -> None:
        """x (B, H, T, D) int64 at positions position.. (a session sets `position` before each step)."""
        B, H, T, D = x.shape
        end = self.position + T
        self.reserve(end)
        x16, exponent = self.products.int16_rows(x.reshape(-1, D), 0)
        self.rows[:, :, self.position : end] = x16.view(B, H, T, D)
        self.exponents[:, :, self.position : end] = exponent.view(B, H, T)

    def values(self, end: int) -> torch.Tensor:
        """The integers the rows stand for, (B, H, end, D) int64."""
        return self.rows[:, :, :end].to(torch.int64) << self.exponents[:, :, :end, None].to(torch.int64)


class _Tables(LlamaTables):
    """The Llama tables, also as int64 arrays for the compiled kernels."""

    def __init__(self, device):
        super().__init__(device)
        self.attention_array = self.attention.cpu().numpy().astype(np.int64)
        self.sigmoid_array = self.sigmoid.cpu().numpy().astype(np.int64)
        self.output_array = self.output.cpu().numpy().astype(np.int64)


def _check_version(version: int) -> None:
    if version not in VERSIONS:
        raise ValueError(f"GGUF engine version {version} (this llmzip has {', '.join(map(str, VERSIONS))})")


class ExactGGUFLlamaEngine(ExactEngine):
    """Exact engine computing with a GGUF Llama file's own quantised integers."""


    def __init__(self, model: GGUFLlama, device: str | torch.device = "cpu", start_token: int = 0,
                 context_length: int | None = None, threads: int | None = None, reference: bool = False,
                 plain: bool = False, version: int = FORMAT_VERSION):
        _check_version(version)
        model.reopen()
        shape = model.shape
        self.shape = shape
        self.device = torch.device(device)
        compiled = not reference and self.device.type == "cpu" and kernels_available()
        self.products = _Products(compiled, threads, plain, int8_inputs=version >= 2)
        self.vocab_size = shape.vocab_size
        self.start_token = int(start_token)
        self.context_length = int(context_length or shape.context_length)
        self.tables = _Tables(self.device)

        # Token embeddings: exact integers at the residual's unit, the finest scale exponent among them.
        self.embedding = model.matrix("token_embd.weight")
        self.residual_bits = int(max(0, -int(self.embedding.exponents.min())))
        if self.embedding.minimums is not None:
            raise ValueError("the token embedding must be Q8_0")
        if not self.products.compiled:  # the compiled path reads the numpy arrays (_embed)
            self.embedding_codes = torch.from_numpy(self.embedding.natural_codes).to(self.device)  # int8
            self.embedding_scales = torch.from_numpy(self.embedding.scales.astype(np.int64)).to(self.device)
            self.embedding_shift = torch.from_numpy(
                (self.embedding.exponents + self.residual_bits).astype(np.int64)).to(self.device)

        self.blocks = []
        for layer in range(shape.layers):
            block = _Block(model, layer, self.residual_bits, self.device)
            if self.products.compiled:  # one layer's natural copies at a time, never all 30 at once
                for matrix in block.matrices():
                    matrix.keep_kernel_layout_only()
            self.blocks.append(block)
        self.cache_heads, self.cache_head_dim = shape.kv_heads, shape.head_dim
        self.cos = self.sin = torch.zeros(0, shape.head_dim // 2, dtype=torch.int64, device=self.device)
        self.norm_f = _norm_constants(model.vector("output_norm.weight"), shape.norm_eps, self.residual_bits,
                                      self.device)
        self.head = model.matrix(model.output_name())
        self.head.output_shift = np.full(self.head.rows, LOGIT_FRACTION_BITS, dtype=np.int32)
        if self.products.compiled:  # the kernels read only their own layout
            self.head.keep_kernel_layout_only()
        model.release()

        self.settings = {
            "kind": "exact",
            "architecture": "llama-gguf",
            "version": version,
            "start_token": self.start_token,
            "residual_bits": self.residual_bits,
            "input_bits": INPUT_BITS,
            "norm_input_bits": NORM_INPUT_BITS,
            "norm_fraction_bits": NORM_FRACTION_BITS,
            "gain_bits": GAIN_BITS,
            "qk_limit": QK_LIMIT,
            "value_limit": VALUE_LIMIT,
            "gate_up_limit": GATE_UP_LIMIT,
            "rope_bits": ROPE_BITS,
            "sigmoid": [SIGMOID_FRACTION_BITS, SIGMOID_RANGE, SIGMOID_BITS],
            "logit_fraction_bits": LOGIT_FRACTION_BITS,
            "attention_exp_bits": ATTENTION_EXP_BITS,
            "output_exp_bits": OUTPUT_EXP_BITS,
            "row_total_bits": ROW_TOTAL_BITS,
        }

    def set_threads(self, threads: int | None) -> None:
        """Threads of the compiled kernels (None: torch's count); the integers are the same for any."""
        self.products.fixed_threads = threads

    def with_version(self, version: int) -> "ExactGGUFLlamaEngine":
        """This engine computing as engine version `version`: the same weights (no second copy),
        its own settings and products."""
        if version == self.settings["version"]:
            return self
        _check_version(version)
        other = copy.copy(self)
        other.products = copy.copy(self.products)
        other.products.int8_inputs = version >= 2
        other.settings = {**self.settings, "version": version}
        return other

    def new_caches(self, batch_size: int) -> tuple:
        return tuple(_KeyValueRows(batch_size, self.cache_heads, self.context_length, self.cache_head_dim,
                                   self.products, self.device, capacity=64) for _ in range(2))

    def cache_bytes(self, positions: int) -> int:
        row = self.cache_head_dim * 2 + 4  # int16 entries and an int32 exponent
        return len(self.blocks) * 2 * self.cache_heads * row * positions

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        B, T = tokens.shape
        flat = tokens.reshape(-1)
        if self.products.compiled:  # numpy: torch would spread these small products over threads and wait
            rows = flat.numpy()
            codes = self.embedding.natural_codes[rows].astype(np.int64).reshape(B * T, -1, BLOCK)
            values = (codes * self.embedding.scales[rows][:, :, None].astype(np.int64)).reshape(B * T, -1)
            shift = (self.embedding.exponents[rows] + self.residual_bits).astype(np.int64)
            return torch.from_numpy(values << shift[:, None]).view(B, T, -1)
        codes = self.embedding_codes[flat].to(torch.int64).view(B * T, -1, BLOCK)
        values = (codes * self.embedding_scales[flat][:, :, None]).view(B * T, -1)
        return (values << self.embedding_shift[flat][:, None]).view(B, T, -1)

    def _hidden(self, inputs, start_position, caches=None, allowed=None):
        x = self._embed(inputs)  # (B, T, C)
        cos, sin = self.rotary_tables(start_position + inputs.shape[1])
        for index, block in enumerate(self.blocks):
            keys, values = caches[index] if caches is not None else (None, None)
            x = block(x, self.products, start_position, cos, sin, self.tables, keys=keys, values=values,
                      allowed=allowed)
        return x

    def rotary_tables(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables covering at least `positions` positions; they grow with the longest
        sequence seen, up to the context."""
        if positions > len(self.cos):
            length = min(self.context_length, max(positions, 2 * len(self.cos), 256))
            cos, sin = rope_tables(self.shape.rope_theta, self.shape.head_dim, length)
            self.cos, self.sin = cos.to(self.device), sin.to(self.device)
        return self.cos, self.sin

    def _rows(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        h, exponent = self.products.rms_norm(x.contiguous(), self.norm_f)
        if not self.products.compiled:
            return integer_rows(self.products.linear(self.head, h, exponent), self.tables.output)
        logits = self.products.linear(self.head, h, exponent, out=out)
        table = self.tables.output_array
        # float64 rows of the same integers, as the coder takes them: no conversion pass of its own
        _quantized.output_rows(logits.numpy(), table, logits.shape[0], logits.shape[1], len(table), ROW_TOTAL_BITS,
                               1 if len(logits) < 64 else self.products.threads, 1)
        return logits.view(torch.float64)

    def _piece_rows(self, x: torch.Tensor) -> torch.Tensor:
        """A full pass's rows into one buffer kept from piece to piece: a fresh 100 MB of rows per
        piece costs more in page faults than coding them."""
        if not self.products.compiled:
            return self._rows(x)
        size = len(x) * self.vocab_size
        if getattr(self, "_piece_buffer", None) is None or self._piece_buffer.numel() < size:
            self._piece_buffer = torch.empty(size, dtype=torch.int64)
        return self._rows(x, out=self._piece_buffer[:size].view(len(x), self.vocab_size))
