"""Variants of the online model's secondary estimate, tried on what the real one saw.

    python benchmarks/online_variants.py record FILE --out RECORD [--level 5] [--max-bytes N]
    python benchmarks/online_variants.py replay RECORD [--variants NAME ...] [--markdown FILE]

`record` compresses FILE through the API, writing online model version 2 (the secondary estimate
without version 3's follower counts), with the online model's methods wrapped, so that it can
keep what each mixed row held: per position, the chunk, the match model's candidate and match
length, the symbol, the model's weights for the candidate and the symbol, and the model's 16
heaviest tokens with their weights. The unit, step and fold events come in the encoder's order.
The rows are not kept (a row is 49,152 weights). `replay` runs the secondary estimate again over
that record, under each variant, with the fold rule of online.py (version 2), and prints the code
length against the model alone. The variant "as built" is online.py's rule: its total should be
the encoder's own code length of the mixed rows, which the record also holds (the symbols' mixed
weights), so the replay checks itself. A replay
codes a mixed row by its weights: the symbol's share after the candidate (and, in the top-token
variants, the model's top token) are given their estimates and the rest scaled to the remainder.
It leaves out the floors of the exact mix, which move a code length by a few bits in a file.
A second table gives the model's own cost by position in the chunk.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from llmzip import api, online

TOP_TOKENS = 16
TOTAL = 1 << online.ROW_TOTAL_BITS
SMALLEST = TOTAL >> 24  # the coder gives no symbol less than about this


# -- recording ----------------------------------------------------------------------------------

def record(path: Path, level: int, max_bytes: int | None) -> dict:
    events: list[tuple] = []
    model = online.OnlineModel
    originals = {name: getattr(model, name) for name in ("mix", "begin_unit", "begin_step", "end_unit")}

    def mix(self, rows, chunks, candidates, lengths, symbols=None, plain=False, **position):
        index = np.arange(len(rows))
        candidates, symbols = np.asarray(candidates, dtype=np.int64), np.asarray(symbols, dtype=np.int64)
        top = np.argpartition(-rows, TOP_TOKENS, axis=1)[:, :TOP_TOKENS]
        seen = (np.asarray(chunks).copy(), candidates.copy(), np.asarray(lengths).copy(), symbols.copy(),
                np.where(candidates >= 0, rows[index, np.maximum(candidates, 0)], 0).astype(np.int64),
                rows[index, symbols].astype(np.int64), top.astype(np.int32),
                np.take_along_axis(rows, top, axis=1).astype(np.int64))
        result = originals["mix"](self, rows, chunks, candidates, lengths, symbols, plain, **position)
        events.append(("mix", *seen, rows[index, symbols].astype(np.int64)))  # and the symbols' mixed weights
        return result

    def begin_unit(self, lengths):
        events.append(("begin_unit", len(lengths), self.fold_steps))
        return originals["begin_unit"](self, lengths)

    def begin_step(self, step):
        events.append(("begin_step", step))
        return originals["begin_step"](self, step)

    def end_unit(self):
        events.append(("end_unit",))
        return originals["end_unit"](self)

    for name, function in (("mix", mix), ("begin_unit", begin_unit), ("begin_step", begin_step),
                           ("end_unit", end_unit)):
        setattr(model, name, function)
    counts_parameters = online.FOLLOWER_COUNTS_PARAMETERS
    online.FOLLOWER_COUNTS_PARAMETERS = 1 << 62  # version 2, the rule `replay` runs again
    try:
        data = path.read_bytes()[:max_bytes]
        started = time.perf_counter()
        packed = api.compress(data, level=level)
        seconds = time.perf_counter() - started
    finally:
        online.FOLLOWER_COUNTS_PARAMETERS = counts_parameters
        for name, function in originals.items():
            setattr(model, name, function)
    return {"file": path.name, "bytes": len(data), "level": level, "compressed": len(packed), "seconds": seconds,
            "events": events}


# -- the secondary estimate, with its constants as parameters -----------------------------------

class Estimate:
    """online.py's table of hits and trials (shared, plus each chunk's own until a fold) over
    `contexts` × `nodes` cells; nodes `spacing`/256 bit of the model's log-odds apart."""

    def __init__(self, contexts: int, nodes: int = online.STRETCH_NODES, spacing: int = online.STRETCH_FRACTION,
                 prior_weight: int = online.PRIOR_WEIGHT, limit: int = online.COUNT_LIMIT):
        self.nodes, self.spacing, self.prior_weight, self.limit = nodes, spacing, prior_weight, limit
        self.hits, self.trials = np.zeros(contexts * nodes, np.int64), np.zeros(contexts * nodes, np.int64)
        if (nodes, spacing) == (online.STRETCH_NODES, online.STRETCH_FRACTION):
            self.priors = [online._node_prior(node) for node in range(nodes)]  # exactly online.py's
        else:  # the identity mapping at each node
            odds = [2 ** ((node - nodes // 2) * spacing / 256) for node in range(nodes)]
            self.priors = [int(o / (1 + o) * (1 << online.PROBABILITY_BITS)) for o in odds]
        self.own: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def begin_unit(self, chunks: int) -> None:
        self.own = {chunk: (np.zeros_like(self.hits), np.zeros_like(self.trials)) for chunk in range(chunks)}

    def fold(self) -> None:
        for hits, trials in self.own.values():
            self.hits += hits
            self.trials += trials
            hits[:] = trials[:] = 0
        faded = self.trials > self.limit
        self.hits[faded] = self.hits[faded] * self.limit // self.trials[faded]
        self.trials[faded] = self.limit

    def _node(self, chunk: int, cell: int, node: int) -> int:
        own_hits, own_trials = self.own[chunk]
        hits, trials = int(self.hits[cell] + own_hits[cell]), int(self.trials[cell] + own_trials[cell])
        prior = self.priors[node] * self.prior_weight
        return ((hits << online.PROBABILITY_BITS) + prior) // (trials + self.prior_weight)

    def target(self, chunk: int, context: int, weight: int) -> tuple[int, int, int]:
        """online.OnlineModel.target with this table's constants."""
        rest = TOTAL - weight
        if weight <= 0 or rest <= 0:
            return 0, 0, 0
        middle = self.nodes // 2
        stretch = (online.log2_fixed(weight) - online.log2_fixed(rest)) * 256 // self.spacing + middle * 256
        if stretch >= (self.nodes - 1) * 256:
            return 0, 0, 0
        node, fraction = divmod(max(stretch, 0), 256)
        cell = context * self.nodes + node
        low, high = self._node(chunk, cell, node), self._node(chunk, cell + 1, node + 1)
        probability = (low * (256 - fraction) + high * fraction) // 256
        return min(max(probability, 1), (1 << online.PROBABILITY_BITS) - 1), cell, fraction

    def learn(self, chunk: int, cell: int, fraction: int, hit: bool) -> None:
        own_hits, own_trials = self.own[chunk]
        own_trials[cell] += 256 - fraction
        own_trials[cell + 1] += fraction
        if hit:
            own_hits[cell] += 256 - fraction
            own_hits[cell + 1] += fraction


def bits(weight: int) -> float:
    return -math.log2(max(weight, SMALLEST) / TOTAL)


def mixed_bits(symbol: int, symbol_weight: int, targets: list[tuple[int, int, int]]) -> float:
    """The symbol's code length in a row whose tokens in `targets` (token, model weight, estimate in
    2**-16) take their estimates and whose other entries share what is left in proportion."""
    for token, _, probability in targets:
        if token == symbol:
            return bits(probability << (online.ROW_TOTAL_BITS - online.PROBABILITY_BITS))
    model_rest = TOTAL - sum(weight for _, weight, _ in targets)
    target_rest = TOTAL - sum(p << (online.ROW_TOTAL_BITS - online.PROBABILITY_BITS) for _, _, p in targets)
    return bits(symbol_weight * target_rest // model_rest) if targets else bits(symbol_weight)


def top_token(top: np.ndarray, weights: np.ndarray) -> tuple[int, int]:
    heaviest = int(np.argmax(weights))
    return int(top[heaviest]), int(weights[heaviest])


class Variant:
    """A secondary estimate on the candidate (context: match length, optionally × "the candidate is
    the model's top token"), and optionally a second one on the model's top token where it is not
    the candidate (context: no candidate / a match of up to 3 tokens / longer). `position_limits`
    split the candidate's context further by the position in the chunk."""

    def __init__(self, top_estimate: bool = False, candidate_is_top: bool = False, position_limits: tuple = (),
                 **constants):
        self.top_estimate, self.candidate_is_top, self.constants = top_estimate, candidate_is_top, constants
        self.position_limits = position_limits

    def tables(self) -> list[Estimate]:
        contexts = online.LENGTH_CONTEXTS * (2 if self.candidate_is_top else 1) * (len(self.position_limits) + 1)
        return [Estimate(contexts, **self.constants)] + ([Estimate(3, **self.constants)] if self.top_estimate else [])

    def code(self, tables, chunk, position, candidate, length, symbol, candidate_weight, symbol_weight, top,
             weights) -> float:
        targets = []
        best, best_weight = top_token(top, weights)
        if candidate >= 0:
            context = online.length_context(length)
            if self.candidate_is_top:
                context = 2 * context + (best == candidate)
            if self.position_limits:
                bucket = sum(position >= limit for limit in self.position_limits)
                context = context * (len(self.position_limits) + 1) + bucket
            probability, cell, fraction = tables[0].target(chunk, context, candidate_weight)
            if probability:
                tables[0].learn(chunk, cell, fraction, symbol == candidate)
                targets.append((candidate, candidate_weight, probability))
        if self.top_estimate and best != candidate:
            context = 0 if candidate < 0 else 1 + (length > 3)
            probability, cell, fraction = tables[1].target(chunk, context, best_weight)
            if probability:
                tables[1].learn(chunk, cell, fraction, symbol == best)
                used = sum(p for _, _, p in targets)
                targets.append((best, best_weight, min(probability, (1 << online.PROBABILITY_BITS) - 2 - used)))
        return mixed_bits(symbol, symbol_weight, targets)


VARIANTS = {
    "as built": Variant(),
    "count limit 256": Variant(limit=256 * 256),
    "count limit 4096": Variant(limit=4096 * 256),
    "prior weight 1": Variant(prior_weight=256),
    "prior weight 16": Variant(prior_weight=16 * 256),
    "nodes half a bit apart": Variant(nodes=49, spacing=128),
    "context x candidate is the top token": Variant(candidate_is_top=True),
    "and an estimate on the top token": Variant(top_estimate=True),
    "top-token estimate, prior weight 16": Variant(top_estimate=True, prior_weight=16 * 256),
    "context x position below 64": Variant(position_limits=(64,)),
    "context x position below 16 / 64 / 256": Variant(position_limits=(16, 64, 256)),
    "context x position below 32 / 256, prior weight 16": Variant(position_limits=(32, 256), prior_weight=16 * 256),
}


def encoder_bits(recorded: dict) -> float:
    """The encoder's own code length of the mixed rows, from the mixed weights the record kept."""
    return sum(bits(int(weight)) for event in recorded["events"] if event[0] == "mix" for weight in event[9])


def replay(recorded: dict, variant: Variant) -> tuple[float, float]:
    """(mixed, alone) code lengths in bits over the record."""
    tables, folded, fold_steps, mixed, alone, start = variant.tables(), 0, None, 0.0, 0.0, 0
    for event in recorded["events"]:
        if event[0] == "begin_unit":
            for table in tables:
                table.begin_unit(event[1])
            folded, fold_steps = 0, event[2]  # fold_steps None: version 1, no folds within a unit
        elif event[0] == "begin_step":
            start = event[1]
            if fold_steps and event[1] > folded and event[1] % fold_steps == 0:
                for table in tables:
                    table.fold()
                folded = event[1]
        elif event[0] == "end_unit":
            for table in tables:
                table.fold()
        else:
            _, chunks, candidates, lengths, symbols, candidate_weights, symbol_weights, top, weights, _ = event
            for i in range(len(chunks)):
                alone += bits(int(symbol_weights[i]))
                mixed += variant.code(tables, int(chunks[i]), start + i, int(candidates[i]), int(lengths[i]),
                                      int(symbols[i]), int(candidate_weights[i]), int(symbol_weights[i]), top[i],
                                      weights[i])
    return mixed, alone


POSITION_RANGES = ((0, 16), (16, 64), (64, 128), (128, 256), (256, 512), (512, None))


def position_costs(recorded: dict) -> list[tuple[str, int, float]]:
    """(positions, tokens, model-alone bits per token) by position in the chunk: what a chunk's
    fresh context costs. A piece's rows follow its begin_step event, from that step on."""
    totals: dict[int, list[float]] = {}
    start = 0
    for event in recorded["events"]:
        if event[0] == "begin_step":
            start = event[1]
        elif event[0] == "mix":
            for i, weight in enumerate(event[6].tolist()):
                totals.setdefault(start + i, []).append(bits(weight))
    rows = []
    for low, high in POSITION_RANGES:
        costs = [c for position, cs in totals.items() if position >= low and (high is None or position < high)
                 for c in cs]
        if costs:
            rows.append((f"{low}-{high - 1}" if high else f"{low}-", len(costs), sum(costs) / len(costs)))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    recording = commands.add_parser("record")
    recording.add_argument("file", type=Path)
    recording.add_argument("--out", type=Path, required=True)
    recording.add_argument("--level", type=int, default=5)
    recording.add_argument("--max-bytes", type=int)
    replaying = commands.add_parser("replay")
    replaying.add_argument("record", type=Path)
    replaying.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    replaying.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    if args.command == "record":
        recorded = record(args.file, args.level, args.max_bytes)
        with open(args.out, "wb") as out:
            pickle.dump(recorded, out)
        print(f"{args.file.name}: {recorded['bytes']:,} bytes -> {recorded['compressed']:,} in "
              f"{recorded['seconds']:.0f} s; {sum(e[0] == 'mix' for e in recorded['events'])} pieces recorded")
        return 0
    with open(args.record, "rb") as source:
        recorded = pickle.load(source)
    lines = [f"Secondary-estimate variants replayed on {recorded['file']} ({recorded['bytes']:,} bytes, level "
             f"{recorded['level']}, a {recorded['compressed']:,}-byte file), `benchmarks/online_variants.py`. "
             f"The encoder's own code length of its mixed rows: {encoder_bits(recorded) / 8:,.1f} bytes.", "",
             "| variant | model alone (bytes) | mixed (bytes) | saved |", "|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for name in args.variants:
        mixed, alone = replay(recorded, VARIANTS[name])
        lines.append(f"| {name} | {alone / 8:,.1f} | {mixed / 8:,.1f} | {100 * (1 - mixed / alone):.3f} % |")
        print(lines[-1], flush=True)
    lines += ["", "The model alone by position in the chunk:", "",
              "| positions | tokens | bits per token |", "|---|---:|---:|"]
    lines += [f"| {positions} | {tokens:,} | {cost:.3f} |" for positions, tokens, cost in position_costs(recorded)]
    print("\n".join(lines[-len(POSITION_RANGES) - 4:]))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
