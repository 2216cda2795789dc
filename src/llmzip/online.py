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
model's rows unchanged. Version 3 adds a third part, mixed in after the candidate:

- **follower counts** (`FollowerCounts`): how often each token followed the previous token in
  the file so far; the row gives them a share λ, learnt online per context cell (position in
  the chunk × how often the previous token was seen) as the mean posterior of "the counts
  predicted this token" (`mix_counts`). It gives back much of what a chunk's fresh context
  loses at its start, and a file's own vocabulary.

The file's rule for parallel decoding (docs/FORMAT.md, "The online model"): model chunks are
decoded in *units* (a coded group's model chunks, cut into runs of at most `unit_chunks`), all
chunks of a unit in lockstep. At step t of a unit, every chunk's match model has seen every
token that any chunk of the unit holds at positions < t, plus every model-coded token of
earlier units; its secondary estimate (and, version 3, its follower counts and their weights)
has seen the tables as left by earlier units plus its own chunk's positions < t, and (version 2)
every chunk's positions before the last multiple of `fold_steps` up to t: every `fold_steps`
steps the chunks' observations join the shared tables. Encoder
and decoder both walk a unit step by step through `predict` and `observe`, and fold through
`begin_step`, so they apply the very same rule.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .errors import FormatError

try:  # the per-token work compiled (_online.c); the Python below is its definition and the fallback
    from . import _online
except ImportError:  # pragma: no cover - a build without the extension
    _online = None

ONLINE_VERSION = 3  # written; 2: without follower counts; 1: a unit's chunks share only at its end
VERSIONS = (1, 2, 3)
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

# version 3: the follower counts and their weight λ (in 2**-16) per context cell
COUNT_POSITION_LIMITS = (16, 64, 256)  # position-in-chunk buckets: 0-15, 16-63, 64-255, 256-
COUNT_TOTAL_LIMITS = (2, 4, 16, 64)  # how often the previous token was seen: 1, 2-3, 4-15, 16-63, 64-
COUNT_CELLS = (len(COUNT_POSITION_LIMITS) + 1) * (len(COUNT_TOTAL_LIMITS) + 1)
WEIGHT_BITS = 16
WEIGHT_PRIOR_TRIALS = 16  # a cell starts as 16 observations of the starting weight
WEIGHT_START = 3277  # 0.05
WEIGHT_MOST = 58982  # 0.9: the engine's row keeps at least a tenth
WEIGHT_TRIAL_LIMIT = 1024  # older observations of a cell fade past this many
START_KEY = -1  # the "previous token" of a chunk's first position
FOLLOWER_COUNTS_PARAMETERS = 10_000_000  # the smallest model the encoder gives version 3

TOKEN_BITS = 20  # a token id's field in a context key (vocabularies up to 2**20)
_MASK64 = (1 << 64) - 1
_HASH_MULTIPLIER = 0x9E3779B97F4A7C15
_LONGEST = max(MATCH_ORDERS)
_ORDERS_ARRAY = np.array(MATCH_ORDERS, dtype=np.int64)
UNKNOWN = -1  # a history position not yet observed


def online_settings(unit_chunks: int, fold_steps: int | None = None, version: int = ONLINE_VERSION) -> dict:
    """The model record's "online" key: the rule's version, which fixes every constant above
    (docs/FORMAT.md lists them; tests pin the bits they give), the unit size and (version 2) the
    steps between folds."""
    if version == 1:
        return {"version": 1, "unit_chunks": unit_chunks}
    return {"version": version, "unit_chunks": unit_chunks, "fold_steps": fold_steps}


def version_for(parameters: int) -> int:
    """The version the encoder writes for a model of so many parameters: version 3's follower
    counts cost about 0.1 ms a token in Python, a few percent of a large model's step but more
    than a third of a small one's, which keeps version 2."""
    return ONLINE_VERSION if parameters >= FOLLOWER_COUNTS_PARAMETERS else 2


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
CELLS = LENGTH_CONTEXTS * STRETCH_NODES  # cells of the secondary estimate
_LOG2_ARRAY, _PRIORS_ARRAY = np.array(_LOG2_MANTISSA, dtype=np.int64), np.array(_PRIORS, dtype=np.int64)


def length_context(length: int) -> int:
    """Match lengths in buckets: one per token up to 15, then four tokens per bucket."""
    return length if length < 16 else min(LENGTH_CONTEXTS - 1, 12 + length // 4)


# -- the mixed row --------------------------------------------------------------------------------

def mix_row(row: np.ndarray, candidate: int, probability: int) -> None:
    """The row handed to the coder, in place: row (V,) of int64 sums to 2**30, `candidate` (−1: none)
    gets `probability` in 2**-16 (0: leave the row). Encoder and decoder both come through here
    (OnlineModel.mix, or its compiled twin).

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


def mix_counts(row: np.ndarray, tokens: np.ndarray, counts: np.ndarray, weight: int) -> None:
    """Version 3's second mix, in place: row (V,) sums to 2**30 (int64, or float64 holding exact
    integers), `tokens` (ascending, distinct) followed the previous token `counts` times, and
    they get the share `weight` in 2**-16 (0 < weight < 2**16).

    Every entry becomes floor(entry · (2**16 − weight) / 2**16); what that frees, L = 2**30 minus
    their sum, goes to the tokens in proportion, floor(L · count / total) each, and what those
    floors leave to the most counted (the lowest id among equals): the row sums to exactly 2**30.
    In float64 every step is exact: products stay below 2**47, and scaling by 2**-16 and floors
    lose nothing.
    """
    keep = (1 << WEIGHT_BITS) - weight
    if row.dtype == np.float64:
        row *= keep
        row *= 2.0**-WEIGHT_BITS
        np.floor(row, out=row)
    else:
        row *= keep
        row >>= WEIGHT_BITS
    left = (1 << ROW_TOTAL_BITS) - int(row.sum())
    shares = left * counts // int(counts.sum())
    shares[int(np.argmax(counts))] += left - int(shares.sum())
    row[tokens] += shares


def _fade(counts: np.ndarray, trials: np.ndarray, limit: int) -> None:
    """Cells past `limit` trials scaled down to it, in place: older observations fade."""
    faded = trials > limit
    counts[faded] = counts[faded] * limit // trials[faded]
    trials[faded] = limit


def _sorted_counts(counts: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens ascending, their counts) of a {token: count} table."""
    tokens = np.array(sorted(counts), dtype=np.int64)
    return tokens, np.array([counts[token] for token in tokens.tolist()], dtype=np.int64)


def count_cell(step: int, total: int) -> int:
    """The weight's context: the position in the chunk and how often the previous token was seen."""
    position = sum(step >= limit for limit in COUNT_POSITION_LIMITS)
    seen = sum(total >= limit for limit in COUNT_TOTAL_LIMITS)
    return position * (len(COUNT_TOTAL_LIMITS) + 1) + seen


class FollowerCounts:
    """Version 3: which token followed which in the file so far, and the weight λ each context
    cell gives those counts, learnt as the mean posterior probability that the counts, not the
    row they were mixed into, predicted the token: λ·b / p, b being the counts' probability for
    the token and p its mixed one. Shared counts (everything folded in) plus each chunk's own,
    as the secondary estimate keeps its tables."""

    def __init__(self):
        self.shared: dict[int, dict[int, int]] = {}  # previous token -> {token: times it followed}
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # shared, as sorted arrays, when asked
        self.posteriors = np.zeros(COUNT_CELLS, dtype=np.int64)  # per cell: posteriors summed, in 2**-16
        self.trials = np.zeros(COUNT_CELLS, dtype=np.int64)
        self.begin_unit(0)

    def begin_unit(self, chunks: int) -> None:
        self.own: list[dict[int, dict[int, int]]] = [{} for _ in range(chunks)]
        self.own_posteriors = np.zeros((chunks, COUNT_CELLS), dtype=np.int64)
        self.own_trials = np.zeros((chunks, COUNT_CELLS), dtype=np.int64)

    def fold(self) -> None:
        """Every chunk's counts and posteriors, in chunk order, join the shared ones."""
        for own in self.own:
            for previous, followers in own.items():
                shared = self.shared.setdefault(previous, {})
                for token, count in followers.items():
                    shared[token] = shared.get(token, 0) + count
                self._arrays.pop(previous, None)
            own.clear()
        self.posteriors += self.own_posteriors.sum(axis=0)
        self.trials += self.own_trials.sum(axis=0)
        self.own_posteriors[:] = self.own_trials[:] = 0
        _fade(self.posteriors, self.trials, WEIGHT_TRIAL_LIMIT)

    def state(self) -> tuple:
        return ({previous: dict(followers) for previous, followers in self.shared.items()},
                self.posteriors.copy(), self.trials.copy())

    def restore(self, state: tuple) -> None:
        shared, posteriors, trials = state
        self.shared = {previous: dict(followers) for previous, followers in shared.items()}
        self._arrays.clear()
        self.posteriors, self.trials = posteriors.copy(), trials.copy()
        self.begin_unit(0)

    def followers(self, chunk: int, previous: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens ascending, counts) that followed `previous` as chunk `chunk` sees them now."""
        arrays = self._arrays.get(previous)
        if arrays is None:
            arrays = self._arrays[previous] = _sorted_counts(self.shared.get(previous, {}))
        own = self.own[chunk].get(previous)
        if not own:
            return arrays
        own_tokens, own_counts = _sorted_counts(own)
        tokens, counts = arrays
        if not len(tokens):
            return own_tokens, own_counts
        at = np.searchsorted(tokens, own_tokens)
        present = tokens[np.minimum(at, len(tokens) - 1)] == own_tokens
        counts = counts.copy()
        counts[at[present]] += own_counts[present]
        if present.all():
            return tokens, counts
        tokens = np.concatenate([tokens, own_tokens[~present]])
        order = np.argsort(tokens, kind="stable")
        return tokens[order], np.concatenate([counts, own_counts[~present]])[order]

    def count(self, chunk: int, previous: int, token: int) -> int:
        return self.shared.get(previous, {}).get(token, 0) + self.own[chunk].get(previous, {}).get(token, 0)

    def weight(self, chunk: int, cell: int) -> int:
        posteriors = int(self.posteriors[cell] + self.own_posteriors[chunk, cell])
        trials = int(self.trials[cell] + self.own_trials[chunk, cell])
        weight = (posteriors + WEIGHT_START * WEIGHT_PRIOR_TRIALS) // (trials + WEIGHT_PRIOR_TRIALS)
        return min(weight, WEIGHT_MOST)

    def mix(self, row: np.ndarray, chunk: int, step: int, previous: int) -> tuple[int, int, int]:
        """The row mixed in place; (cell, weight, times `previous` was seen) to learn from, or
        (−1, 0, 0) where the counts know nothing of `previous` (the row stays as it is)."""
        tokens, counts = self.followers(chunk, previous)
        total = int(counts.sum())
        if not total:
            return -1, 0, 0
        cell = count_cell(step, total)
        weight = self.weight(chunk, cell)
        if weight:
            mix_counts(row, tokens, counts, weight)
        return cell, weight, total

    def learn(self, chunk: int, previous: int, token: int, cell: int, weight: int, total: int,
              mixed_weight: int) -> None:
        """After position coded `token` under a mixed row that gave it `mixed_weight` (of 2**30):
        the cell's posterior floor(λ · floor(count · 2**30 / total) / mixed) (at most 2**16) and
        one trial, then the count."""
        if cell >= 0:
            following = (self.count(chunk, previous, token) << ROW_TOTAL_BITS) // total
            posterior = min(weight * following // max(int(mixed_weight), 1), 1 << WEIGHT_BITS)
            self.own_posteriors[chunk, cell] += posterior
            self.own_trials[chunk, cell] += 1
        followers = self.own[chunk].setdefault(previous, {})
        followers[token] = followers.get(token, 0) + 1


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
        self.counts = FollowerCounts() if settings["version"] >= 3 else None
        # every model-coded token so far, chunk after chunk, in the first `size` entries of a buffer
        # that doubles as it fills; UNKNOWN where not yet observed
        self.tokens = np.full(1 << 12, UNKNOWN, dtype=np.int32)
        self.size = 0
        # per order: context hash -> position of the token that followed that context (int32, a fixed
        # 16 MiB an order however many slots fill)
        self.tables = np.full((len(MATCH_ORDERS), 1 << HASH_BITS), -1, dtype=np.int32)
        self.hits = np.zeros(CELLS, dtype=np.int64)  # per cell, in 1/256 observations
        self.trials = np.zeros(CELLS, dtype=np.int64)
        # (flat table indices, old positions) of the writes since the first checkpoint not yet
        # committed; a decoder takes no checkpoints, so it keeps no log that would grow with the file
        self._undo: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._begin_unit([])

    def history(self) -> np.ndarray:
        """The tokens so far (a view)."""
        return self.tokens[: self.size]

    # -- checkpoints (encoder only) --

    def checkpoint(self) -> tuple:
        if self._undo is None:
            self._undo = []
        counts = self.counts.state() if self.counts is not None else None
        return self.size, len(self._undo), self.hits.copy(), self.trials.copy(), counts

    def rollback(self, mark: tuple) -> None:
        size, undo_size, self.hits, self.trials = mark[0], mark[1], mark[2].copy(), mark[3].copy()
        if self.counts is not None:
            self.counts.restore(mark[4])
        self.tokens[size : self.size] = UNKNOWN
        self.size = size
        if len(self._undo) > undo_size:
            indices = np.concatenate([indices for indices, _ in self._undo[undo_size:]])
            old = np.concatenate([old for _, old in self._undo[undo_size:]])
            written, first = np.unique(indices, return_index=True)  # a slot's first write saw what was there before
            self.tables.reshape(-1)[written] = old[first]
            del self._undo[undo_size:]
        self._begin_unit([])

    def commit(self) -> None:
        """Nothing before now will be rolled back."""
        self._undo = None

    # -- a unit --

    def _begin_unit(self, lengths: list[int]) -> None:
        self.bases = np.array([self.size + sum(lengths[:i]) for i in range(len(lengths))], dtype=np.int64)
        end = self.size + sum(lengths)
        if end > len(self.tokens):
            grown = np.full(max(end, 2 * len(self.tokens)), UNKNOWN, dtype=np.int32)
            grown[: self.size] = self.tokens[: self.size]
            self.tokens = grown
        self.size = end
        self.pointer = np.full(len(lengths), -1, dtype=np.int64)  # position of each chunk's candidate, −1: none
        self.length = np.zeros(len(lengths), dtype=np.int64)
        self.own_hits = np.zeros((len(lengths), CELLS), dtype=np.int64)  # each chunk's observations not yet
        self.own_trials = np.zeros((len(lengths), CELLS), dtype=np.int64)  # folded in
        self._folded_at = 0  # the step of the last fold
        if self.counts is not None:
            self.counts.begin_unit(len(lengths))

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
        hits += self.own_hits.sum(axis=0)
        trials += self.own_trials.sum(axis=0)
        self.own_hits[:] = self.own_trials[:] = 0
        _fade(hits, trials, COUNT_LIMIT)
        if self.counts is not None:
            self.counts.fold()

    # -- the match model: a step of a unit, compiled where built --

    def _match_state(self) -> tuple:
        return self.tokens, self.size, self.tables, _ORDERS_ARRAY, self.bases, self.pointer, self.length

    def predict_step(self, chunks: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(candidates, match lengths) of position `step` of each of `chunks` (−1 and 0: none), in order."""
        chunks = np.ascontiguousarray(chunks, dtype=np.int64)
        candidates, lengths = np.empty(len(chunks), dtype=np.int64), np.empty(len(chunks), dtype=np.int64)
        if _online is not None:
            _online.predict(*self._match_state(), chunks, step, candidates, lengths)
        else:
            for i, chunk in enumerate(chunks.tolist()):
                candidates[i], lengths[i] = self.predict(chunk, step)
        return candidates, lengths

    def observe_step(self, chunks: np.ndarray, step: int, symbols: np.ndarray) -> None:
        """Position `step` of each of `chunks` holds that symbol: observe them, in order."""
        chunks = np.ascontiguousarray(chunks, dtype=np.int64)
        symbols = np.ascontiguousarray(symbols, dtype=np.int64)
        if _online is None:
            for chunk, symbol in zip(chunks.tolist(), symbols.tolist()):
                self.observe(chunk, step, symbol)
            return
        undo = None if self._undo is None else np.empty(2 * len(MATCH_ORDERS) * len(chunks), dtype=np.int64)
        writes = _online.observe(*self._match_state(), chunks, step, symbols, undo)
        if undo is not None:
            self._undo.append((undo[0 : 2 * writes : 2], undo[1 : 2 * writes : 2]))

    # -- the match model, one chunk at a time: the definition --

    def _slots(self, chunk: int, step: int) -> list[int]:
        """The table slot of each order for the tokens before position `step` of `chunk` (−1 where
        the chunk holds fewer): the key of n tokens is their ids in 20-bit fields, the nearest lowest."""
        tokens, end = self.tokens, int(self.bases[chunk]) + step
        keys, key = [], 0
        for n in range(1, min(step, _LONGEST) + 1):
            key |= int(tokens[end - n]) << (TOKEN_BITS * (n - 1))
            keys.append(key)
        return [((keys[order - 1] * _HASH_MULTIPLIER) & _MASK64) >> (64 - HASH_BITS) if order <= step else -1
                for order in MATCH_ORDERS]

    def predict(self, chunk: int, step: int) -> tuple[int, int]:
        """(candidate token or −1, its match length) for position `step` of `chunk`."""
        pointer = int(self.pointer[chunk])
        if pointer >= 0:
            return int(self.tokens[pointer]), int(self.length[chunk])
        here = int(self.bases[chunk]) + step
        tokens = self.tokens
        for table, slot, order in zip(self.tables, self._slots(chunk, step), MATCH_ORDERS):
            if slot < 0:
                continue
            found = int(table[slot])
            if found < 0:
                continue
            length = 0
            while (length < MATCH_CHECK and length < step and length < found
                   and tokens[found - 1 - length] == tokens[here - 1 - length]):  # the latter are known
                length += 1
            if length >= order:  # else another context in the same slot
                self.pointer[chunk], self.length[chunk] = found, length
                return int(tokens[found]), length
        return -1, 0

    def observe(self, chunk: int, step: int, token: int) -> None:
        """Token `token` is position `step` of `chunk`: store it, run the match on, remember the context."""
        here = int(self.bases[chunk]) + step
        self.tokens[here] = token
        pointer = int(self.pointer[chunk])
        if pointer >= 0:
            tokens, following = self.tokens, pointer + 1
            if tokens[pointer] == token and following < self.size and tokens[following] != UNKNOWN:
                self.pointer[chunk] = following
                self.length[chunk] += 1
            else:
                self.pointer[chunk], self.length[chunk] = -1, 0
        if here > POSITION_LIMIT:  # the tables hold int32 positions: later contexts are not remembered
            return
        for index, slot in enumerate(self._slots(chunk, step)):
            if slot >= 0:
                if self._undo is not None:
                    flat = (index << HASH_BITS) + slot
                    self._undo.append((np.array([flat]), np.array([self.tables[index, slot]])))
                self.tables[index, slot] = here

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
        hits = int(self.hits[cell] + self.own_hits[chunk, cell])
        trials = int(self.trials[cell] + self.own_trials[chunk, cell])
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

    # -- rows: the secondary estimate mixed in, compiled where built --

    def mix(self, rows: np.ndarray, chunks: np.ndarray, candidates: np.ndarray, lengths: np.ndarray,
            symbols: np.ndarray | None = None, plain: bool = False, steps: np.ndarray | None = None,
            previous: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Rows (N, V) of float64 exact integers mixed in place, row i being of chunk `chunks[i]`
        with that candidate and match length (version 3: at position `steps[i]` of its chunk, after
        the token `previous[i]`, START_KEY at a chunk's start). With `symbols` (the encoder's rows
        of one chunk, in order), what row i codes is learnt before row i + 1 is mixed; without (the
        decoder's rows of distinct chunks), the returned arrays go to `learn_rows` once the symbols
        are decoded. The same integers either way, compiled or not (`plain`: the compiled plain-C
        path even where AVX2 runs, for tests). The candidate is mixed first, then the counts: they
        learn from separate tables, so either may learn first."""
        N, V = rows.shape
        chunks, candidates, lengths = (np.ascontiguousarray(a, dtype=np.int64) for a in (chunks, candidates, lengths))
        if symbols is not None:
            symbols = np.ascontiguousarray(symbols, dtype=np.int64)
        probabilities, cells, fractions = (np.zeros(N, dtype=np.int64) for _ in range(3))
        if _online is not None and rows.dtype == np.float64 and rows.flags.c_contiguous:
            _online.mix(rows, N, V, chunks, candidates, lengths, symbols, self.hits, self.trials, self.own_hits,
                        self.own_trials, _LOG2_ARRAY, _PRIORS_ARRAY, probabilities, cells, fractions, plain)
        else:
            for i in range(N):
                candidate = int(candidates[i])
                if candidate < 0:
                    continue
                probabilities[i], cells[i], fractions[i] = self.target(int(chunks[i]), int(lengths[i]),
                                                                       int(rows[i, candidate]))
                if probabilities[i]:
                    mixed = rows[i].astype(np.int64)
                    mix_row(mixed, candidate, int(probabilities[i]))
                    rows[i] = mixed
                    if symbols is not None:
                        self.learn(int(chunks[i]), int(cells[i]), int(fractions[i]), int(symbols[i]) == candidate)
        counted = np.full(N, -1, dtype=np.int64), np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64)
        if self.counts is not None:
            if steps is None or previous is None:
                raise ValueError("version 3 mixes rows knowing their positions and previous tokens")
            for i, (chunk, step, before) in enumerate(zip(chunks.tolist(), np.asarray(steps).tolist(),
                                                          np.asarray(previous).tolist())):
                row = rows[i]
                cell, weight, total = self.counts.mix(row, chunk, step, before)
                counted[0][i], counted[1][i], counted[2][i] = cell, weight, total
                if symbols is not None:
                    symbol = int(symbols[i])
                    self.counts.learn(chunk, before, symbol, cell, weight, total, int(row[symbol]))
        return probabilities, cells, fractions, *counted

    def learn_rows(self, chunks: np.ndarray, probabilities: np.ndarray, cells: np.ndarray, fractions: np.ndarray,
                   count_cells: np.ndarray, count_weights: np.ndarray, count_totals: np.ndarray,
                   candidates: np.ndarray, symbols: np.ndarray, previous: np.ndarray | None = None,
                   rows: np.ndarray | None = None) -> None:
        """What `mix` without symbols left to learn, now that the rows' symbols are known (version
        3: with the previous tokens and the mixed rows the symbols were decoded under)."""
        arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (chunks, cells, fractions, probabilities,
                                                                     candidates, symbols)]
        if _online is not None:
            _online.learn_rows(*arrays, self.own_hits, self.own_trials)
        else:
            for chunk, cell, fraction, probability, candidate, symbol in zip(*(a.tolist() for a in arrays)):
                if probability:
                    self.learn(chunk, cell, fraction, symbol == candidate)
        if self.counts is not None:
            if previous is None or rows is None:
                raise ValueError("version 3 learns knowing the previous tokens and the mixed rows")
            for i, (chunk, symbol, before) in enumerate(zip(arrays[0].tolist(), arrays[5].tolist(),
                                                            np.asarray(previous).tolist())):
                self.counts.learn(chunk, before, symbol, int(count_cells[i]), int(count_weights[i]),
                                  int(count_totals[i]), int(rows[i, symbol]))
