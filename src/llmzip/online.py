"""The online model: what the file itself has taught so far, mixed exactly into the model's rows.

Two parts, both in integers only, so a decoder reproduces every row bit for bit:

- a **match model** over tokens: the most recent earlier place where the last `match_order`
  tokens occurred (a hash table of positions, checked token by token), and the token that
  followed there is the *candidate* for the next token; while the candidate keeps coming true
  the match runs on and grows longer;
- a **secondary estimate** of "the next token is the candidate": an adaptive table indexed by
  the match length and the model's own probability of the candidate (in log-odds, interpolated
  between nodes one bit apart), whose cells count hits and trials.

The mixed row gives the candidate that estimated probability and scales every other entry of
the model's row by one common integer factor (`mix_row`); rows without a candidate are the
model's rows unchanged.

The file's rule for parallel decoding (docs/FORMAT.md, "The online model"): model chunks are
decoded in *units* (a coded group's model chunks, cut into runs of at most `unit_chunks`), all
chunks of a unit in lockstep. At step t of a unit, every chunk's match model has seen every
token that any chunk of the unit holds at positions < t, plus every model-coded token of
earlier units; its secondary estimate has seen the table as left by earlier units plus its own
chunk's positions < t, and (version 2) every chunk's positions before the last multiple of
`fold_steps` up to t: every `fold_steps` steps the chunks' observations join the shared table. Encoder
and decoder both walk a unit step by step through `predict` and `observe`, and fold through
`begin_step`, so they apply the very same rule.
"""

from __future__ import annotations

from array import array
from fractions import Fraction

import numpy as np

from .errors import FormatError

ONLINE_VERSION = 2  # written; 1: a unit's chunks share their secondary estimates only at its end
VERSIONS = (1, 2)
FOLD_STEPS = 128  # version 2: a unit's chunks join their secondary estimates' counts every so many steps
ROW_TOTAL_BITS = 30  # exact engines' rows sum to 2**30
PROBABILITY_BITS = 16  # the secondary estimate's resolution
MATCH_ORDERS = (4, 2, 1)  # tokens of context a match must share before it predicts, longest tried first
MATCH_CHECK = 32  # tokens compared backwards when a match is found (its starting length)
HASH_BITS = 22  # match-table slots: 4 M positions remembered
POSITION_LIMIT = 2**31 - 1  # the last token position a table remembers (int32)
LENGTH_CONTEXTS = 24  # match-length buckets of the secondary estimate
STRETCH_FRACTION = 256  # log-odds in 1/256 bit
STRETCH_NODES = 25  # nodes at -12 .. +12 bits of the model's log-odds for the candidate
PRIOR_WEIGHT = 4 * STRETCH_FRACTION  # a node starts as four observations of the identity mapping
COUNT_LIMIT = 1024 * STRETCH_FRACTION  # older observations fade past this many trials per node

TOKEN_BITS = 20  # a token id's field in a context key (vocabularies up to 2**20)
_MASK64 = (1 << 64) - 1
_HASH_MULTIPLIER = 0x9E3779B97F4A7C15
_LONGEST = max(MATCH_ORDERS)


def online_settings(unit_chunks: int, fold_steps: int | None = None, version: int = ONLINE_VERSION) -> dict:
    """The model record's "online" key: the rule's version, which fixes every constant above
    (docs/FORMAT.md lists them; tests pin the bits they give), the unit size and (version 2) the
    steps between folds."""
    if version == 1:
        return {"version": 1, "unit_chunks": unit_chunks}
    return {"version": version, "unit_chunks": unit_chunks, "fold_steps": fold_steps}


def fold_steps_for(chunk_tokens: int) -> int:
    """The encoder's fold period: FOLD_STEPS, or a quarter of a chunk where chunks are short."""
    return max(1, min(FOLD_STEPS, chunk_tokens // 4))


def check_settings(settings) -> int:
    """The unit size of a recorded online model; refuses settings this llmzip does not have."""
    def count(key):
        value = settings.get(key) if isinstance(settings, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    unit_chunks, fold_steps = count("unit_chunks"), count("fold_steps")
    version = settings.get("version") if isinstance(settings, dict) else None
    if unit_chunks is None or version not in VERSIONS or (version >= 2 and fold_steps is None) \
            or settings != online_settings(unit_chunks, fold_steps, version):
        raise FormatError(f"the file uses an online model this llmzip does not have ({settings}; this llmzip has "
                          f"versions {', '.join(map(str, VERSIONS))}); use the llmzip version that made it")
    return unit_chunks


# -- integer log-odds -----------------------------------------------------------------------------

def _log2_table(bits: int = 10) -> list[int]:
    """floor(256 · log2(1 + i / 2**bits)) for every i, found with integers only."""
    table = []
    one = 1 << bits
    for i in range(one):
        power = (one + i) ** STRETCH_FRACTION  # 2**(k/256) <= (1 + i/one)  <=>  2**k · one**256 <= (one + i)**256
        k = table[-1] if table else 0
        while (1 << (k + 1)) * one**STRETCH_FRACTION <= power:
            k += 1
        table.append(k)
    return table


_LOG2_MANTISSA = _log2_table()


def log2_fixed(n: int) -> int:
    """log2(n) in 1/256 bit, rounded down through a 10-bit mantissa table (n >= 1)."""
    exponent = n.bit_length() - 1
    mantissa = (n << 10 >> exponent) - 1024 if exponent < 10 else (n >> (exponent - 10)) - 1024
    return exponent * STRETCH_FRACTION + _LOG2_MANTISSA[mantissa]


def _node_prior(node: int) -> int:
    """The identity mapping at a node: probability 2**s / (1 + 2**s) for s = node − 12 bits."""
    odds = Fraction(2) ** (node - STRETCH_NODES // 2)
    return int(odds / (1 + odds) * (1 << PROBABILITY_BITS))


_PRIORS = [_node_prior(node) for node in range(STRETCH_NODES)]


def length_context(length: int) -> int:
    """Match lengths in buckets: one per token up to 15, then four tokens per bucket."""
    return length if length < 16 else min(LENGTH_CONTEXTS - 1, 12 + length // 4)


# -- the mixed row --------------------------------------------------------------------------------

def mix_row(row: np.ndarray, candidate: int, probability: int) -> None:
    """The row handed to the coder, in place: row (V,) sums to 2**30, `candidate` (−1: none) gets
    `probability` in 2**-16 (0: leave the row). Encoder and decoder both come through here.

    The candidate gets p and every other entry is scaled by f = floor((2**30 − p·2**30) · 2**30
    / rest), rest being what the model gave the others; entries stay below 2**60, and the
    candidate takes what the floors leave, so the row sums to exactly 2**30 with no entry
    negative. Views only: a decoding step mixes one row at a time.
    """
    if candidate < 0 or probability <= 0:
        return
    total = 1 << ROW_TOTAL_BITS
    rest = total - int(row[candidate])  # > 0: online.target leaves rows where the candidate has it all
    target = int(probability) << (ROW_TOTAL_BITS - PROBABILITY_BITS)
    row *= ((total - target) << ROW_TOTAL_BITS) // rest
    row >>= ROW_TOTAL_BITS
    row[candidate] = 0
    row[candidate] = total - int(row.sum())


def mix_rows(weights: np.ndarray, candidates: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """mix_row on each row of weights (N, V), in place; returns `weights`."""
    for row, candidate, probability in zip(weights, candidates.tolist(), probabilities.tolist()):
        mix_row(row, candidate, probability)
    return weights


# -- the online model -----------------------------------------------------------------------------

class OnlineModel:
    """One stream's online state. A unit is walked step by step: `predict` for every chunk of
    the step, the rows are mixed and coded, then `learn` and `observe` for every chunk.

    `checkpoint` / `rollback` let the encoder take back units that end up not model-coded (a
    group replaced by xz), since the decoder never sees those.
    """

    def __init__(self, settings: dict):
        check_settings(settings)
        self.unit_chunks = settings["unit_chunks"]
        self.fold_steps = settings.get("fold_steps")  # None: version 1
        # every model-coded token so far, chunk after chunk; UNKNOWN where not yet observed. Two bytes
        # a token while ids fit (the history is what grows with the file), widened when one does not.
        self.tokens = array("H")
        self.unknown = 0xFFFF
        # per order: context hash -> position of the token that followed that context; int32 arrays,
        # a fixed 16 MiB each however many slots fill (a list would hold an int object per slot)
        self.tables = [array("i", [-1]) * (1 << HASH_BITS) for _ in MATCH_ORDERS]
        self.hits = [0] * (LENGTH_CONTEXTS * STRETCH_NODES)  # per cell, in 1/256 observations
        self.trials = [0] * (LENGTH_CONTEXTS * STRETCH_NODES)
        # (table, slot, old position) of the writes since the first checkpoint not yet committed; a
        # decoder takes no checkpoints, so it keeps no log that would grow with the file
        self._undo: list[tuple[array, int, int]] | None = None
        self._begin_unit([])

    # -- checkpoints (encoder only) --

    def checkpoint(self) -> tuple:
        if self._undo is None:
            self._undo = []
        return len(self.tokens), len(self._undo), list(self.hits), list(self.trials)

    def rollback(self, mark: tuple) -> None:
        size, undo_size, self.hits, self.trials = mark[0], mark[1], list(mark[2]), list(mark[3])
        del self.tokens[size:]
        while len(self._undo) > undo_size:
            table, slot, old = self._undo.pop()
            table[slot] = old
        self._begin_unit([])

    def commit(self) -> None:
        """Nothing before now will be rolled back."""
        self._undo = None

    # -- a unit --

    def _begin_unit(self, lengths: list[int]) -> None:
        self.bases = []
        for length in lengths:
            self.bases.append(len(self.tokens))
            self.tokens.extend(array(self.tokens.typecode, [self.unknown]) * length)
        self.pointer = [-1] * len(lengths)  # position of each chunk's candidate, −1: no match
        self.length = [0] * len(lengths)
        self._cached_slots = [(-1, [])] * len(lengths)  # predict and observe of one step share the slots
        cells = len(self.hits)
        self.own_hits = [[0] * cells for _ in lengths]  # each chunk's observations not yet folded in
        self.own_trials = [[0] * cells for _ in lengths]
        self._folded_at = 0  # the step of the last fold

    def begin_unit(self, lengths: list[int]) -> None:
        if len(lengths) > self.unit_chunks:
            raise ValueError("a unit holds at most unit_chunks chunks")
        self._begin_unit(lengths)

    def begin_step(self, step: int) -> None:
        """Before the unit's step `step` is mixed: fold at every `fold_steps`-th step (version 2). The
        encoder calls it per piece of rows, the decoder per step; a step folds once."""
        if self.fold_steps and step > self._folded_at and step % self.fold_steps == 0:
            self._fold()
            self._folded_at = step

    def end_unit(self) -> None:
        self._fold()
        self._begin_unit([])

    def _fold(self) -> None:
        """Every chunk's observations join the shared table; old counts fade past the limit."""
        hits, trials = self.hits, self.trials
        for own_hits, own_trials in zip(self.own_hits, self.own_trials):
            for cell, count in enumerate(own_trials):
                if count:
                    hits[cell] += own_hits[cell]
                    trials[cell] += count
                    own_hits[cell] = own_trials[cell] = 0
        for cell, count in enumerate(trials):
            if count > COUNT_LIMIT:
                hits[cell] = hits[cell] * COUNT_LIMIT // count
                trials[cell] = COUNT_LIMIT

    def _slots(self, chunk: int, step: int) -> list[int]:
        """The table slot of each order for the tokens before position `step` of `chunk` (−1 where
        the chunk holds fewer): the key of n tokens is their ids in 20-bit fields, the nearest lowest."""
        cached = self._cached_slots[chunk]
        if cached[0] == step:
            return cached[1]
        tokens, end = self.tokens, self.bases[chunk] + step
        keys, key = [], 0
        for n in range(1, min(step, _LONGEST) + 1):
            key |= tokens[end - n] << (TOKEN_BITS * (n - 1))
            keys.append(key)
        slots = [((keys[order - 1] * _HASH_MULTIPLIER) & _MASK64) >> (64 - HASH_BITS) if order <= step else -1
                 for order in MATCH_ORDERS]
        self._cached_slots[chunk] = (step, slots)
        return slots

    def predict(self, chunk: int, step: int) -> tuple[int, int]:
        """(candidate token or −1, its match length) for position `step` of `chunk`."""
        pointer = self.pointer[chunk]
        if pointer >= 0:
            return self.tokens[pointer], self.length[chunk]
        here = self.bases[chunk] + step
        tokens = self.tokens
        for order, table, slot in zip(MATCH_ORDERS, self.tables, self._slots(chunk, step)):
            if slot < 0:
                continue
            found = table[slot]
            if found < 0:
                continue
            length = 0
            while (length < MATCH_CHECK and length < step and length < found
                   and tokens[found - 1 - length] == tokens[here - 1 - length]):  # the latter are known
                length += 1
            if length >= order:  # else another context in the same slot
                self.pointer[chunk], self.length[chunk] = found, length
                return tokens[found], length
        return -1, 0

    def observe(self, chunk: int, step: int, token: int) -> None:
        """Token `token` is position `step` of `chunk`: store it, run the match on, remember the context."""
        here = self.bases[chunk] + step
        if token >= self.unknown >= 0:  # an id past 16 bits: widen the history to int32, −1 for unknown
            self.tokens = array("i", (-1 if t == self.unknown else t for t in self.tokens))
            self.unknown = -1
        self.tokens[here] = token
        pointer = self.pointer[chunk]
        if pointer >= 0:
            tokens, following = self.tokens, pointer + 1
            if tokens[pointer] == token and following < len(tokens) and tokens[following] != self.unknown:
                self.pointer[chunk] = following
                self.length[chunk] += 1
            else:
                self.pointer[chunk], self.length[chunk] = -1, 0
        if here > POSITION_LIMIT:  # the tables hold int32 positions: later contexts are not remembered
            return
        for table, slot in zip(self.tables, self._slots(chunk, step)):
            if slot >= 0:
                if self._undo is not None:
                    self._undo.append((table, slot, table[slot]))
                table[slot] = here

    def target(self, chunk: int, length: int, weight: int) -> tuple[int, int, int]:
        """The candidate's probability in 2**-16 (0: leave the row as the model made it), and the
        cell and interpolation weight to learn from, given the model's weight for the candidate."""
        rest = (1 << ROW_TOTAL_BITS) - weight
        if weight <= 0 or rest <= 0:
            return 0, 0, 0
        stretch = log2_fixed(weight) - log2_fixed(rest) + (STRETCH_NODES // 2) * STRETCH_FRACTION
        if stretch >= (STRETCH_NODES - 1) * STRETCH_FRACTION:
            return 0, 0, 0  # the model is surer than the table can say
        stretch = max(stretch, 0)
        node, fraction = divmod(stretch, STRETCH_FRACTION)
        cell = length_context(length) * STRETCH_NODES + node
        low = self._estimate(chunk, cell, node)
        high = self._estimate(chunk, cell + 1, node + 1)
        probability = (low * (STRETCH_FRACTION - fraction) + high * fraction) // STRETCH_FRACTION
        return min(max(probability, 1), (1 << PROBABILITY_BITS) - 1), cell, fraction

    def _estimate(self, chunk: int, cell: int, node: int) -> int:
        hits = self.hits[cell] + self.own_hits[chunk][cell]
        trials = self.trials[cell] + self.own_trials[chunk][cell]
        return ((hits << PROBABILITY_BITS) + _PRIORS[node] * PRIOR_WEIGHT) // (trials + PRIOR_WEIGHT)

    def learn(self, chunk: int, cell: int, fraction: int, hit: bool) -> None:
        """Count one observation at the two nodes around the model's log-odds, by nearness."""
        own_hits, own_trials = self.own_hits[chunk], self.own_trials[chunk]
        low, high = STRETCH_FRACTION - fraction, fraction
        own_trials[cell] += low
        own_trials[cell + 1] += high
        if hit:
            own_hits[cell] += low
            own_hits[cell + 1] += high
