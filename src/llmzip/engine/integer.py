"""Integer building blocks of the exact engines: a row is a pure function of weights and prefix.

Every number on the inference path is an integer held in an int64 tensor; its real value is the
integer times a scale fixed when the engine is built. Scales are derived from the float32
weights with basic IEEE operations only (+ - * / max, frexp, rounding), which give the same bits
on every platform, and are applied at run time as integer multipliers and shifts. Nothing on the
run-time path depends on exp, sqrt or any other float function whose last bit could differ
between CPU and GPU, libraries or thread counts (the one float sqrt is a first guess that
integer checks correct).

Matrix products run on ordinary BLAS in float64: their operands are integers and every partial
sum stays below 2**53, so each addition is exact and the result is the same whatever the
summation order, blocking, batch shape or device. `exact_matmul` splits a reduction into parts
when its bound would cross that limit.

Number formats of the native GPT engine (gpt.py), the defaults here (a "unit" is one step of the
integer; the Llama engines keep more precision, see their modules):
- weights: per-output-channel symmetric int8, `quantise_weight_per_channel`;
- residual stream: int64 with one scale per model, 2**-20 of the largest embedding entry;
- RMSNorm output: |y| <= 32000, scale max|gain| / U, where U units are one RMS;
- q, k, v and the MLP hidden pre-activation: |a| <= 32767, scales from a Cauchy–Schwarz bound
  on the layer's output given a normalised input (per head for q and k, per tensor for v and a),
  so they can never overflow and adapt to the weights of both random and trained models;
- ReLU² output: a*a kept exactly (< 2**30), no rounding;
- attention scores and output logits: fixed point with 2**-10 nats per unit; softmax weights
  come from an exp table over integer differences, built with Python integers only;
- output rows: integer weights summing to exactly 2**30 (the coder rescales them to 24 bits).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

WEIGHT_LIMIT = 127  # int8, symmetric
ACTIVATION_LIMIT = 32767  # every matrix-product input except the ReLU² output fits in int16
NORM_OUTPUT_LIMIT = 32000  # below ACTIVATION_LIMIT to leave room for rounding
NORM_INPUT_BITS = 20  # RMSNorm rescales each row so its largest entry has this many bits
NORM_FRACTION_BITS = 10  # extra precision of the RMSNorm multiplier
GAIN_BITS = 15  # RMSNorm gains as integers of up to 2**15
RESIDUAL_BITS = 20  # the largest embedding entry is 2**20 residual units
LOGIT_FRACTION_BITS = 10  # scores and logits in units of 2**-10 nats
ATTENTION_EXP_BITS = 16  # softmax weight of the best key inside attention
OUTPUT_EXP_BITS = 24  # softmax weight of the best token before normalising the row
ROW_TOTAL_BITS = 30  # every output row sums to exactly 2**30
ATTENTION_QUERY_BLOCK = 256  # queries per block of a long full pass

# The largest integer up to which every integer is exact in each float format.
EXACT_INTEGER_LIMIT = {torch.float32: 2**24, torch.float64: 2**53}




def quantise_weight_per_channel(weight: torch.Tensor, limit: int = WEIGHT_LIMIT) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integers per output channel (row): weight ≈ values * scale[:, None], |values| <= limit.

    int8 by default (limit 127), int16 for limits up to 32767. scale = max|row| / limit in float32,
    values = round-half-even(weight / scale). Both divisions are true IEEE divisions on every device
    (the limit is passed as a tensor because some kernels turn division by a Python scalar into a
    multiplication by its reciprocal), so training code that fake-quantises with this function sees
    the grid the exact engine uses.
    """
    weight = weight.detach().to(torch.float32)
    peak = weight.abs().amax(dim=1)
    divisor = torch.tensor(float(limit), dtype=torch.float32, device=weight.device)
    scale = torch.where(peak > 0, peak / divisor, torch.ones_like(peak))  # an all-zero row: any scale works
    values = torch.round(weight / scale[:, None]).clamp(-limit, limit)
    values = values.to(torch.int8 if limit <= 127 else torch.int16)
    return values, scale


def exact_matmul(
    a: torch.Tensor, b: torch.Tensor, a_bound: int, b_bound: int, compute_dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Exact a @ b of integer tensors with |a| <= a_bound and |b| <= b_bound, as int64.

    BLAS adds products in an order that depends on the library, device and thread count; with
    integer operands that does not matter as long as every partial sum is an exactly
    representable integer, so the reduction is cut into parts short enough to guarantee that and
    the parts are added in int64.
    """
    limit = EXACT_INTEGER_LIMIT[compute_dtype]
    if a_bound > limit or b_bound > limit:
        raise ValueError(f"operands up to {a_bound} and {b_bound} are not exact in {compute_dtype}")
    if compute_dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        raise RuntimeError("exact float32 products need torch.set_float32_matmul_precision('highest')")
    if compute_dtype == torch.float32 and a.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        raise RuntimeError("exact float32 products need torch.backends.cuda.matmul.allow_tf32 = False")
    part = max(1, limit // max(1, a_bound * b_bound))
    a = a.to(compute_dtype)
    b = b.to(compute_dtype)
    length = a.shape[-1]
    if length <= part:
        return _to_int64(torch.matmul(a, b))
    total = None
    for start in range(0, length, part):
        piece = _to_int64(torch.matmul(a[..., start : start + part], b[..., start : start + part, :]))
        total = piece if total is None else total + piece
    return total


def _to_int64(product: torch.Tensor) -> torch.Tensor:
    """A fresh float product of integers as int64, converted over its own memory when the sizes match.

    Each entry is read before the same bytes are written, so the conversion is exact and saves
    allocating (and on CPU faulting in) a second tensor as large as the product.
    """
    if product.element_size() == 8 and product.is_contiguous():
        return product.view(torch.int64).copy_(product)
    return product.to(torch.int64)


@dataclass
class FixedPoint:
    """Multiplication by a real ratio as (x * multiplier + half) >> shift, rounding half up."""

    multiplier: torch.Tensor  # int64, broadcasts against the last axis of x (or a scalar)
    shift: torch.Tensor  # int64, same shape, 1..62
    half: torch.Tensor  # 2 ** (shift - 1)

    def view(self, *shape) -> "FixedPoint":
        return FixedPoint(self.multiplier.view(*shape), self.shift.view(*shape), self.half.view(*shape))


def fixed_point(ratios, input_bound: int, device="cpu") -> FixedPoint:
    """Integer multiplier and shift for each ratio, as precise as x * multiplier < 2**62 allows.

    Only frexp, ldexp and rounding touch the floats, all exact, so the integers are the same on
    every platform.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    if (ratios < 0).any() or not np.isfinite(ratios).all():
        raise ValueError("fixed-point ratios must be finite and non-negative")
    multiplier_bits = min(31, 62 - int(input_bound).bit_length())
    _, exponents = np.frexp(ratios)  # ratio = fraction * 2**exponent, fraction in [0.5, 1)
    shifts = np.clip(multiplier_bits - exponents, 1, 62).astype(np.int64)
    multipliers = np.rint(np.ldexp(ratios, shifts.astype(np.int32))).astype(np.int64)
    if int(multipliers.max(initial=0)) * int(input_bound) >= 2**62:
        raise ValueError("a scale ratio is too large for fixed-point requantisation")
    return FixedPoint(
        torch.from_numpy(multipliers).to(device),
        torch.from_numpy(shifts).to(device),
        torch.from_numpy(np.left_shift(np.int64(1), shifts - 1)).to(device),
    )


def requantise(
    x: torch.Tensor, scale: FixedPoint, low: int | None = None, high: int | None = None, *, in_place: bool = False
) -> torch.Tensor:
    """x times the fixed-point ratio, rounded half up and clamped to [low, high] when given.

    With `in_place` the result overwrites x, which must be an int64 temporary at least as large as
    the scale's shape: the same integers without allocating a new tensor per step.
    """
    if in_place:  # x * multiplier + half in one pass over x
        y = torch.addcmul(scale.half, x, scale.multiplier, out=x).bitwise_right_shift_(scale.shift)
        return y if low is None and high is None else y.clamp_(low, high)
    y = (x * scale.multiplier + scale.half) >> scale.shift
    return y if low is None and high is None else y.clamp(low, high)


def round_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator rounded half up, for positive denominators."""
    return torch.div(2 * numerator + denominator, 2 * denominator, rounding_mode="floor")


@functools.lru_cache(maxsize=None)
def _powers_of_two(device: torch.device) -> torch.Tensor:
    return torch.ones(63, dtype=torch.int64, device=device) << torch.arange(63, device=device)


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Number of bits of each non-negative int64, like int.bit_length()."""
    return (x.unsqueeze(-1) >= _powers_of_two(x.device)).sum(-1)


def shift_signed(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """x * 2**amount for amounts of either sign; a right shift rounds towards minus infinity."""
    left = x << amount.clamp(0, 62)
    right = x >> (-amount).clamp(0, 62)
    return torch.where(amount >= 0, left, right)


def integer_sqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 0 <= n < 2**62.

    The float square root is only a first guess; the corrections make the result exact even if
    that guess were a few units off on some device.
    """
    root = torch.sqrt(n.to(torch.float64)).floor().to(torch.int64)
    for _ in range(2):
        root = torch.where(root * root > n, root - 1, root)
        root = torch.where((root + 1) * (root + 1) <= n, root + 1, root)
    return root


class IntegerRMSNorm:
    """RMSNorm from an int64 residual row to int16-range outputs: y = x / rms(x) * gain.

    Each row is rescaled by a power of two so its largest entry has NORM_INPUT_BITS bits, which
    keeps the integer sum of squares in range and its square root precise whatever the residual
    magnitude. The output unit is fixed: U units per RMS times the largest gain, so a linear layer
    after the norm can bound its outputs in advance (`output_bounds`).
    """

    def __init__(self, gain: torch.Tensor, eps: float, input_scale: float, device):
        gain = gain.detach().to(torch.float32).cpu().numpy().astype(np.float64)
        self.dim = len(gain)
        peak = float(np.abs(gain).max(initial=0.0)) or 1.0
        self.gain = np.rint(gain * 2**GAIN_BITS / peak).astype(np.int64)  # |gain| <= 2**15
        # U units per RMS: a normalised entry is at most sqrt(dim) RMS, so dim * U**2 <= limit**2.
        self.unit = math.isqrt(NORM_OUTPUT_LIMIT**2 // self.dim)
        self.numerator = math.isqrt(self.dim * self.unit**2 * 4**NORM_FRACTION_BITS)  # sqrt(dim) * U * 2**F
        self.output_scale = peak / self.unit
        # eps in units of the squared row: eps * dim / input_scale**2, scaled by 4**k when the row
        # is scaled by 2**k. Kept as a 40-bit integer times 2**-eps_fraction_bits.
        eps_units = eps * self.dim / (input_scale * input_scale)
        self.eps_fraction_bits = 40 - int(np.frexp(eps_units)[1]) if eps_units > 0 else 0
        eps_fixed = int(np.rint(np.ldexp(eps_units, self.eps_fraction_bits)))
        self.eps_fixed = torch.tensor(eps_fixed, dtype=torch.int64, device=device)
        self.eps_bits = eps_fixed.bit_length()
        self.gain_tensor = torch.from_numpy(self.gain).to(device)
        self.output_limit = ACTIVATION_LIMIT

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rescaled, root = self.rescaled_root(x)
        numerator = rescaled * (self.numerator * self.gain_tensor)  # < 2**20 * 2**25 * 2**15
        y = round_divide(numerator, root << (NORM_FRACTION_BITS + GAIN_BITS))
        return y.clamp(-self.output_limit, self.output_limit)

    def rescaled_root(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row shifted so its peak has NORM_INPUT_BITS bits, and floor(sqrt(sum of squares + eps))."""
        peak = x.abs().amax(-1, keepdim=True)
        exponent = NORM_INPUT_BITS - bit_length(peak)
        rescaled = shift_signed(x, exponent)  # |rescaled| < 2**20
        eps_shift = 2 * exponent - self.eps_fraction_bits
        eps = torch.where(
            self.eps_bits + eps_shift > 61,
            torch.full_like(eps_shift, 2**61),
            shift_signed(self.eps_fixed.expand_as(eps_shift), eps_shift),
        )
        root = integer_sqrt((rescaled * rescaled).sum(-1, keepdim=True) + eps).clamp(min=1)
        return rescaled, root

    def output_bounds(self, weight: np.ndarray) -> np.ndarray:
        """Largest |y @ weight.T| per output row for any input row (weight: int8 (out, dim)).

        Cauchy–Schwarz: the normalised row has norm <= sqrt(dim) RMS, so
        |sum_c y_c w_c| <= U/2**15 * sqrt(dim * sum_c (gain_c w_c)**2), plus one unit of rounding
        per entry. Computed with Python integers, so the bound is the same everywhere.
        """
        weight = weight.astype(np.int64)
        squares = ((self.gain[None, :] * weight) ** 2).sum(axis=1)  # exact: < dim * 2**44
        l1 = np.abs(weight).sum(axis=1)
        bounds = []
        for square, absolute in zip(squares.tolist(), l1.tolist()):
            inner = self.dim * square
            root = math.isqrt(inner - 1) + 1 if inner > 0 else 0  # ceil(sqrt(inner))
            bounds.append(-(-self.unit * root // 2**GAIN_BITS) + absolute + 1)
        return np.array(bounds, dtype=np.int64)


def exp_table(fraction_bits: int, value_bits: int) -> list[int]:
    """round(2**value_bits * exp(-i / 2**fraction_bits)) for i = 0, 1, ... while non-zero, then a 0.

    Built with Python integers in 192-bit fixed point (a Taylor series for one step, then
    repeated multiplication), so the table is defined by integer arithmetic alone and is the same
    on every machine.
    """
    guard = 192
    one = 1 << guard
    # exp(1 / 2**fraction_bits) by its Taylor series, then its reciprocal.
    term, total, n = one, one, 1
    while term:
        term = term // (n << fraction_bits)
        total += term
        n += 1
    step = (one * one) // total
    table, value = [], one
    while True:
        entry = (value * (1 << value_bits) + one // 2) >> guard
        if entry == 0:
            break
        table.append(entry)
        value = (value * step) >> guard
    table.append(0)
    return table


def softmax_weights(logits: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Integer softmax numerators table[max - logit] along the last axis; disallowed entries get 0.

    Overwrites `logits` (an int64 temporary) with the gaps: at (B, H, T, T) every fresh tensor costs
    a pass over memory.
    """
    if allowed is not None:
        # Far below any real logit, so its gap lands on the table's final 0.
        logits.masked_fill_(~allowed, -(2**61))
    gaps = torch.sub(logits.amax(-1, keepdim=True), logits, out=logits).clamp_(max=len(table) - 1)
    return lookup(table, gaps)


def lookup(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """table[indices] for a 1-D table; index_select on the flat indices is much faster on CPU."""
    return torch.index_select(table, 0, indices.reshape(-1)).view(indices.shape)


def integer_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_scale: FixedPoint,
    table: torch.Tensor,
    allowed: torch.Tensor | None,
    qk_bound: int = ACTIVATION_LIMIT,
    v_bound: int = ACTIVATION_LIMIT,
) -> torch.Tensor:
    """Softmax attention on integers: q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D).

    Scores are exact dot products turned into 2**-LOGIT_FRACTION_BITS nat units; the output is the
    softmax-weighted mean of v rounded to v's own units, so |output| <= max |v|. |q|, |k| <= qk_bound
    and |v| <= v_bound. With a mask, every query must be allowed at least one key (a causal mask is).
    """
    queries = q.shape[-2]
    if allowed is not None and queries > ATTENTION_QUERY_BLOCK:
        # A long full pass in blocks of queries, each against the keys up to the last one it may
        # see: a causal mask makes the rest 0 anyway, so the integers are the same for half the work.
        outputs = []
        for start in range(0, queries, ATTENTION_QUERY_BLOCK):
            mask = allowed[..., start : start + ATTENTION_QUERY_BLOCK, :]
            seen = int(mask.reshape(-1, mask.shape[-1]).any(0).nonzero().max()) + 1 if mask.any() else 1
            outputs.append(integer_attention(q[..., start : start + ATTENTION_QUERY_BLOCK, :], k[..., :seen, :],
                                             v[..., :seen, :], score_scale, table, mask[..., :seen], qk_bound, v_bound))
        return torch.cat(outputs, dim=-2)
    scores = exact_matmul(q, k.transpose(-1, -2), qk_bound, qk_bound)  # (B, H, Tq, Tk)
    logits = requantise(scores, score_scale, in_place=True)  # the scale was sized for the bound: no clamp
    weights = softmax_weights(logits, table, allowed)
    mixed = exact_matmul(weights, v, int(table[0]), v_bound)  # (B, H, Tq, D)
    return round_divide(mixed, weights.sum(-1, keepdim=True))


def integer_rows(logits: torch.Tensor, output_table: torch.Tensor) -> torch.Tensor:
    """Integer logits (N, V) in 2**-LOGIT_FRACTION_BITS nats -> integer weights (N, V) summing to 2**30.

    Works in place on `logits`: at (N, V) every pass over a fresh tensor costs as much as the head
    product itself.
    """
    # argmax returns the first maximal index: the first token whose weight is 2**24.
    first_best = logits.argmax(-1, keepdim=True)  # (N, 1)
    gaps = logits.sub_(logits.gather(-1, first_best)).neg_().clamp_(max=len(output_table) - 1)
    raw = lookup(output_table, gaps)  # best token: 2**24
    # weights = floor(raw * 2**30 / total), through a 62-bit reciprocal instead of a division
    # per entry: raw < 2**25 and reciprocal < 2**38, so the product fits in int64.
    reciprocal = torch.div(torch.full_like(raw[:, :1], 2**62), raw.sum(-1, keepdim=True), rounding_mode="floor")
    weights = raw.mul_(reciprocal).bitwise_right_shift_(62 - ROW_TOTAL_BITS)
    # Each entry loses less than one unit; the first best token takes the remainder.
    remainder = (1 << ROW_TOTAL_BITS) - weights.sum(-1, keepdim=True)
    weights.scatter_add_(-1, first_best, remainder)
    return weights


def positive_bounds(bounds):
    """Bounds of all-zero weights are 0: their outputs are 0 and any positive scale will do."""
    return np.where(bounds > 0, bounds, 1.0)


def residual_units(table: torch.Tensor, residual_scale: float, device) -> torch.Tensor:
    values = np.rint(table.numpy().astype(np.float64) / residual_scale).astype(np.int64)
    return torch.from_numpy(values).to(device)


class QuantisedLinear:
    """An int8 (or int16) weight (out, in) stored transposed as float64 for `exact_matmul`, with its scales."""

    def __init__(self, weight: torch.Tensor, device, limit: int = WEIGHT_LIMIT, keep_values: bool = True):
        values, scales = quantise_weight_per_channel(weight.cpu(), limit)
        self.limit = limit
        self.scales = scales.numpy().astype(np.float64)  # real value of one unit, per output row
        self.transposed = torch.from_numpy(values.numpy().T.astype(np.float64)).to(device)  # (in, out)
        # int8 or int16 (out, in), for bounds; large models drop it and read `transposed` instead.
        self.values = values.numpy() if keep_values else None
        self.inputs, self.outputs = weight.shape[1], weight.shape[0]

    def __call__(self, x: torch.Tensor, x_bound: int) -> torch.Tensor:
        return exact_matmul(x, self.transposed, x_bound, self.limit)
