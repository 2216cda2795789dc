"""The shared exact engine: full passes in length groups, incremental sessions and their caches.

An architecture's engine (gpt.py, llama.py, gguf_llama.py) subclasses ExactEngine with the
model's own integer layers; everything here is common to all of them and implements the Engine
protocol (engine/__init__.py).
"""

from __future__ import annotations

import numpy as np
import torch

HEAD_ROWS_PER_PASS = 256  # positions per output-head product, to bound memory


def step_major_starts(lengths: dict[int, int], positions: int):
    """(sequence, start) of every piece of `positions` positions of sequences of these lengths:
    every sequence's piece at one start, in sequence order, before any piece at the next start."""
    for start in range(0, max(lengths.values(), default=0), positions):
        for index in sorted(lengths):
            if start < lengths[index]:
                yield index, start


class ExactEngine:
    """What every exact engine shares: full passes in length groups, sessions, the Engine protocol.

    A subclass sets vocab_size, start_token, context_length, device, settings, cache_heads and
    cache_head_dim, and provides `_hidden` (token inputs -> final residual rows) and `_rows`
    (residual rows -> integer weights).
    """

    batch_invariant = True
    cache_dtype = torch.float64

    def _hidden(self, inputs: torch.Tensor, start_position: int, caches=None, allowed=None) -> torch.Tensor:
        raise NotImplementedError

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _piece_rows(self, x: torch.Tensor) -> torch.Tensor:
        """One piece of a full pass's rows; an engine may reuse their memory for the next piece."""
        return self._rows(x)

    def set_threads(self, threads: int | None) -> None:
        """Threads for engines with their own kernels (gguf_llama.py); torch products use torch's."""

    def _check_tokens(self, tokens: np.ndarray) -> None:
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")

    # -- Engine protocol ----------------------------------------------------------------------

    def start(self, batch_size: int) -> "ExactSession":
        return ExactSession(self, batch_size)

    def new_caches(self, batch_size: int) -> tuple:
        """One layer's key and value caches for a session."""
        return tuple(_Cache(batch_size, self.cache_heads, self.context_length, self.cache_head_dim, self.device,
                            self.cache_dtype) for _ in range(2))

    def cache_bytes(self, positions: int) -> int:
        """Memory of one sequence's keys and values over `positions` positions in a session."""
        return len(self.blocks) * 2 * self.cache_heads * self.cache_head_dim * positions * self.cache_dtype.itemsize

    def sequence_weights(self, token_lists: list[np.ndarray]) -> list[np.ndarray]:
        """Rows for every position of each sequence: row t predicts tokens[t] from [start] + tokens[:t]."""
        pieces: list[list[np.ndarray]] = [[] for _ in token_lists]
        for index, _, rows in self.sequence_pieces(token_lists):
            pieces[index].append(rows.copy())  # a piece's memory may serve the next one
        return [np.concatenate(parts) if len(parts) > 1 else parts[0] if parts
                else np.zeros((0, self.vocab_size), dtype=np.int64) for parts in pieces]

    @torch.no_grad()
    def sequence_pieces(self, token_lists: list[np.ndarray], positions: int = HEAD_ROWS_PER_PASS,
                        step_major: bool = False):
        """The same rows in pieces of at most `positions` positions, as (sequence, start, rows):
        a 1,023-token chunk of a 49,152-token vocabulary is 400 MB of rows at once. Each sequence's
        pieces come in order; a piece is valid until the next one is asked for. `step_major`:
        every sequence's piece at a start before any piece at the next start (in sequence order),
        which holds every sequence's final residual rows at once."""
        token_lists = [np.asarray(tokens, dtype=np.int64) for tokens in token_lists]
        for tokens in token_lists:
            if len(tokens) > self.context_length:
                raise ValueError(f"a sequence of {len(tokens)} tokens exceeds the context of {self.context_length}")
            self._check_tokens(tokens)
        hidden = {}
        for group in self._length_groups(token_lists):
            for index, x in self._group_hidden(token_lists, group):
                if step_major:
                    hidden[index] = x
                    continue
                for start in range(0, len(x), positions):
                    yield index, start, self._piece_rows(x[start : start + positions]).cpu().numpy()
        # Pieces shorter than HEAD_ROWS_PER_PASS (a fold's few steps) share one product: a product
        # per piece costs more, and longer products than that no less.
        limit = max(positions, HEAD_ROWS_PER_PASS)
        batch: list[tuple[int, int, torch.Tensor]] = []
        starts = step_major_starts({index: len(x) for index, x in hidden.items()}, positions)
        for index, start in [*starts, (None, None)]:
            x = None if index is None else hidden[index][start : start + positions]
            if batch and (x is None or sum(len(part) for _, _, part in batch) + len(x) > limit):
                rows = self._piece_rows(torch.cat([part for _, _, part in batch])).cpu().numpy()
                offset = 0
                for piece_index, piece_start, part in batch:
                    yield piece_index, piece_start, rows[offset : offset + len(part)]
                    offset += len(part)
                batch = []
            if x is not None:
                batch.append((index, start, x))

    @staticmethod
    def _length_groups(token_lists):
        """Sequences of similar length together, to bound padding and the (B, H, T, T) score memory."""
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        budget = 2**21  # score entries per group and head
        group: list[int] = []
        for index in order + [None]:
            length = 0 if index is None else len(token_lists[index])
            if group and (index is None or (len(group) + 1) * max(length, 1) ** 2 > budget):
                yield group
                group = []
            if index is not None:
                group.append(index)

    def _group_hidden(self, token_lists, group):
        """(sequence, its final residual rows) for each sequence of a length group."""
        longest = max(len(token_lists[i]) for i in group)
        if longest == 0:
            return
        # Inputs are [start] + tokens[:-1]; padding after a sequence's end is never attended to.
        inputs = np.full((len(group), longest), self.start_token, dtype=np.int64)
        for row, i in enumerate(group):
            inputs[row, 1 : len(token_lists[i])] = token_lists[i][:-1]
        causal = torch.ones(longest, longest, dtype=torch.bool, device=self.device).tril()
        x = self._hidden(torch.from_numpy(inputs).to(self.device), 0, allowed=causal)
        for row, i in enumerate(group):
            yield i, x[row, : len(token_lists[i])]


class _Cache:
    """Keys or values of one layer for every position so far: (B, H, positions, D), grown as needed.

    Every k and v is an integer that a float type holds exactly (float64 for the native engine,
    float32 for the Llama engine's values below 2**21), so the cache is kept in the float type of
    the products: an integer type would have to be converted in full at every step, which cost
    more than the rest of the step at long prefixes.
    """

    def __init__(self, batch_size, heads, length, head_dim, device, dtype=torch.float64):
        self.length = length
        self.store = torch.zeros(batch_size, heads, min(length, 64), head_dim, dtype=dtype, device=device)
        self.position = 0

    def __call__(self, new: torch.Tensor) -> torch.Tensor:
        if self.position >= self.store.shape[2]:  # grow by doubling, up to the context
            grown = self.store.new_zeros(*self.store.shape[:2], min(self.length, 2 * self.store.shape[2]),
                                         self.store.shape[3])
            grown[:, :, : self.store.shape[2]] = self.store
            self.store = grown
        self.store[:, :, self.position : self.position + 1] = new
        return self.store[:, :, : self.position + 1]


class ExactSession:
    """Incremental decoding: each `advance` feeds one token per row (the first call feeds start tokens)."""

    def __init__(self, engine: ExactEngine, batch_size: int):
        self.engine = engine
        self.batch_size = batch_size
        self.position = 0
        self.caches = [engine.new_caches(batch_size) for _ in engine.blocks]

    @torch.no_grad()
    def advance(self, tokens: np.ndarray) -> np.ndarray:
        engine = self.engine
        tokens = np.asarray(tokens, dtype=np.int64).reshape(self.batch_size)
        engine._check_tokens(tokens)
        if self.position >= engine.context_length:
            raise ValueError(f"the session is full: the context holds {engine.context_length} positions")
        for keys, values in self.caches:
            keys.position = values.position = self.position
        x = engine._hidden(torch.from_numpy(tokens).to(engine.device)[:, None], self.position, caches=self.caches)
        self.position += 1
        return engine._rows(x[:, 0]).cpu().numpy()
