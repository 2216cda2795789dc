"""`llmzip explain`: one HTML page that shows what every token of a file costs.

Each token is coloured by its code length, −log2 p under the model: what the range coder
spends on it, within a few bytes per chunk. The tokens are cut into chunks exactly as the
compressor cuts them (each chunk coded from a fresh context), so the page shows the costs the
compressor sees. Where a token's bytes end inside a UTF-8 character (common in Chinese, where
one character can span two tokens), consecutive tokens are shown together until their bytes
form whole characters; their costs add up.

The page is self-contained (no scripts, no external files): text, legend, totals and the most
surprising spans of the file. Hovering a token shows its cost in bits.
"""

from __future__ import annotations

import bisect
import html
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LLMZipError
from .online import OnlineModel
from .stream import encode_chunks, split_chunks, split_groups

SCALE_BITS = 16  # top of the colour scale; costlier tokens get the darkest colour
# Colour stops from cheap (pale green) through yellow and orange to costly (dark red).
_STOPS = [(0.0, (240, 249, 232)), (2.0, (204, 235, 197)), (4.0, (255, 247, 188)), (6.0, (254, 227, 145)),
          (8.0, (254, 196, 79)), (10.0, (254, 153, 41)), (12.0, (236, 112, 20)), (14.0, (204, 76, 2)),
          (16.0, (140, 45, 4))]
# With --colour online: bits the online model saved on a token, from costlier (red) to saved (blue).
SAVED_LOW, SAVED_HIGH = -4, 8
_SAVED_STOPS = [(-4.0, (215, 48, 39)), (-1.0, (252, 174, 145)), (0.0, (250, 250, 250)), (1.0, (198, 219, 239)),
                (4.0, (107, 174, 214)), (8.0, (8, 69, 148))]


@dataclass
class TokenCosts:
    tokens: np.ndarray  # (T,) token ids
    bits: np.ndarray  # (T,) −log2 p of each token
    token_bytes: list[bytes]  # the bytes each token stands for
    chunks: int
    chunk_tokens: int  # the compressor's chunk length
    alone_bits: np.ndarray | None = None  # (T,) under the model's rows alone, when the online model is on


def token_costs(compressor, data: bytes) -> TokenCosts:
    """Tokenise as the compressor does, cut into its chunks, and cost every token under the model."""
    tokenizer = compressor.model.tokenizer
    tokens = tokenizer.tokenize(data)
    chunks = split_chunks(tokens, compressor.chunk_tokens)
    token_bytes = [tokenizer.token_bytes[t] for t in tokens]
    bits, alone_bits = chunk_costs(compressor, chunks)
    return TokenCosts(tokens, bits, token_bytes, len(chunks), compressor.chunk_tokens,
                      alone_bits if compressor.online else None)


def chunk_costs(compressor, chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every token's cost, and its cost under the model alone (the same without the online model),
    through the encoder's own path: the chunks in the compressor's groups (and units), with its
    online model if it has one, as when all of them are model-coded. A float engine sees the batch
    shapes it codes with. The compressor keeps the online model for a file only when the file
    comes out smaller with it (StreamEncoder); the page shows its costs with it and alone either way."""
    online = OnlineModel(compressor.model_settings()["online"]) if compressor.online else None
    bits = [np.zeros(len(chunk)) for chunk in chunks]
    alone_bits = [np.zeros(len(chunk)) for chunk in chunks]
    first = 0
    for group in split_groups(chunks, compressor.batch_size):
        costs: list = []
        encode_chunks(compressor.engine, group, online, token_bits=costs)
        for index, start, chunk_bits, chunk_alone in costs:
            bits[first + index][start : start + len(chunk_bits)] = chunk_bits
            alone_bits[first + index][start : start + len(chunk_alone)] = chunk_alone
        first += len(group)
    empty = np.zeros(0)
    return (np.concatenate(bits) if bits else empty), (np.concatenate(alone_bits) if alone_bits else empty)


# -- tokens shown as whole characters -------------------------------------------------------------


def character_boundaries(data: bytes) -> set[int]:
    """Byte offsets between whole UTF-8 characters (an invalid byte counts as one character)."""
    boundaries = {0}
    position = 0
    for character in data.decode("utf-8", errors="surrogateescape"):
        position += 1 if "\udc80" <= character <= "\udcff" else len(character.encode("utf-8"))
        boundaries.add(position)
    return boundaries


def group_tokens(token_bytes: list[bytes]) -> list[tuple[int, int]]:
    """Runs of consecutive tokens [start, end) whose bytes together are whole characters."""
    boundaries = character_boundaries(b"".join(token_bytes))
    groups, start, position = [], 0, 0
    for index, token in enumerate(token_bytes):
        position += len(token)
        if position in boundaries:
            groups.append((start, index + 1))
            start = index + 1
    if start < len(token_bytes):
        groups.append((start, len(token_bytes)))
    return groups


def visible_html(data: bytes, *, line_breaks: bool = True) -> str:
    """Escaped HTML for bytes: text as itself, invalid UTF-8 and control bytes as \\xNN escapes."""
    parts = []
    for character in data.decode("utf-8", errors="surrogateescape"):
        if "\udc80" <= character <= "\udcff":
            parts.append(f'<span class="esc">\\x{ord(character) - 0xDC00:02x}</span>')
        elif character == "\n":
            parts.append('<span class="nl">↵</span>' + ("\n" if line_breaks else ""))
        elif character == "\t":
            parts.append("\t")
        elif character == "\r":
            parts.append('<span class="esc">\\r</span>')
        elif ord(character) < 0x20 or 0x7F <= ord(character) < 0xA0:
            parts.append(f'<span class="esc">\\x{ord(character):02x}</span>')
        else:
            parts.append(html.escape(character))
    return "".join(parts)


def token_repr(token: bytes) -> str:
    """A token's bytes for a tooltip, quoted: text where it decodes, escapes (\\n, \\xNN) where not."""
    text = token.decode("utf-8", errors="backslashreplace")
    shown = "".join(character if character.isprintable() else character.encode("unicode_escape").decode("ascii")
                    for character in text)
    return f"'{shown}'"


# -- the page -------------------------------------------------------------------------------------


def colour(bits: float, stops=_STOPS) -> tuple[int, int, int]:
    value = min(max(bits, stops[0][0]), stops[-1][0])
    for (low, low_colour), (high, high_colour) in zip(stops, stops[1:]):
        if value <= high:
            fraction = (value - low) / (high - low)
            return tuple(round(a + (b - a) * fraction) for a, b in zip(low_colour, high_colour))
    return stops[-1][1]


def _class(level: int) -> str:
    return f"c{level}" if level >= 0 else f"m{-level}"


def _bucket(bits: float) -> int:
    return int(min(max(round(bits), 0), SCALE_BITS))


def surprising_spans(bits: np.ndarray, *, window: int, count: int,
                     groups: list[tuple[int, int]] | None = None) -> list[tuple[int, int, float]]:
    """The `count` costliest non-overlapping windows of about `window` tokens: (start, end, bits), costliest first.

    With `groups`, a window is widened to whole groups so that it never cuts a character.
    """
    if len(bits) == 0 or count <= 0:
        return []
    window = max(1, min(window, len(bits)))
    running = np.concatenate([[0.0], np.cumsum(bits)])
    sums = running[window:] - running[:-window]
    starts = [start for start, _ in groups] if groups else None
    ends = [end for _, end in groups] if groups else None
    chosen: list[tuple[int, int, float]] = []
    taken = np.zeros(len(bits), dtype=bool)
    for start in np.argsort(-sums, kind="stable"):
        start, end = int(start), int(start) + window
        if groups:
            start = starts[bisect.bisect_right(starts, start) - 1]
            end = ends[bisect.bisect_left(ends, end)]
        if not taken[start:end].any():
            chosen.append((start, end, float(running[end] - running[start])))
            taken[start:end] = True
            if len(chosen) == count:
                break
    return sorted(chosen, key=lambda span: -span[2])


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans", "Noto Sans CJK SC", "WenQuanYi Zen Hei",
       sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.totals td { padding: 0.1em 1.2em 0.1em 0; } table.totals td:first-child { color: #555; }
.legend { display: flex; align-items: flex-end; gap: 0; margin: 0.5em 0 0.2em; }
.legend div { width: 3.2em; text-align: center; font-size: 0.8em; }
.legend span { display: block; height: 1.4em; border: 1px solid #fff; }
.text { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, "DejaVu Sans Mono", "Noto Sans Mono",
        "Noto Sans Mono CJK SC", "WenQuanYi Zen Hei Mono", monospace; line-height: 1.7; font-size: 0.95em;
        border: 1px solid #ddd; padding: 1em; }
.text span[title] { box-shadow: inset -1px 0 rgba(255, 255, 255, 0.8); }  /* marks where tokens meet */
.text .hot { text-decoration: underline 2px #5b1a00; text-underline-offset: 3px; }
.nl { color: #999; font-size: 0.8em; }
.esc { color: #555; font-size: 0.85em; font-style: italic; }
ol.spans li { margin: 0.4em 0; }
ol.spans code { white-space: pre-wrap; background: #f6f6f6; padding: 0.1em 0.3em; }
.note { color: #555; font-size: 0.9em; }
"""


def render_page(name: str, data: bytes, costs: TokenCosts, *, model, engine_kind: str, top: int = 10,
                window: int = 16, comparison: dict[str, float] | None = None, colour_by: str = "cost") -> str:
    """The whole HTML page as a string; `colour_by` "online" colours tokens by the bits the online
    model saved on them instead of by their cost."""
    by_saving = colour_by == "online" and costs.alone_bits is not None
    groups = group_tokens(costs.token_bytes)
    spans = surprising_spans(costs.bits, window=window, count=top, groups=groups)
    opening = {start: rank for rank, (start, _, _) in enumerate(spans, 1)}  # token index -> span rank
    closing = {end for _, end, _ in spans}
    total_bits = float(costs.bits.sum())
    size = len(data)

    levels = range(SAVED_LOW, SAVED_HIGH + 1) if by_saving else range(SCALE_BITS + 1)
    stops = _SAVED_STOPS if by_saving else _STOPS
    styles = [f".{_class(level)} {{ background: rgb{colour(level, stops)}; }}" for level in levels]
    styles += [f".{_class(level)} {{ color: #fff; }}" for level in levels if sum(colour(level, stops)) < 400]

    text_html = []
    for start, end in groups:
        group_bits = float(costs.bits[start:end].sum())
        shown_level, learnt = _bucket(group_bits), ""
        if costs.alone_bits is not None:
            saved = float(costs.alone_bits[start:end].sum()) - group_bits
            learnt = f"model alone {group_bits + saved:.2f}, online model saved {saved:.2f} · "
            if by_saving:
                shown_level = int(min(max(round(saved), SAVED_LOW), SAVED_HIGH))
        if end - start == 1:
            title = f"{token_repr(costs.token_bytes[start])} · {learnt}{costs.bits[start]:.2f} bits"
        else:
            parts = " + ".join(f"{bits:.2f}" for bits in costs.bits[start:end])
            title = (f"{end - start} tokens ({' | '.join(token_repr(p) for p in costs.token_bytes[start:end])}) · "
                     f"{learnt}{parts} = {group_bits:.2f} bits")
        if start in opening:
            text_html.append(f'<span class="hot" id="span{opening[start]}">')
        text = visible_html(b"".join(costs.token_bytes[start:end]))
        text_html.append(f'<span class="{_class(shown_level)}" title="{html.escape(title, quote=True)}">{text}</span>')
        if end in closing:
            text_html.append("</span>")

    legend = "".join(f'<div><span class="{_class(level)}"></span>{level}{"+" if level == levels[-1] else ""}</div>'
                     for level in levels[::2])
    rows = [
        ("file", html.escape(name)),
        ("model", f"{html.escape(model.name)} ({model.parameters:,} parameters, {engine_kind} engine)"),
        ("bytes", f"{size:,}"),
        ("tokens", f"{len(costs.bits):,} in {costs.chunks:,} chunk{'s' if costs.chunks != 1 else ''}"),
        ("bits", f"{total_bits:,.1f} ({total_bits / 8:,.0f} bytes)"),
        ("bits per byte", f"{total_bits / size:.3f}" if size else "–"),
        ("bits per token", f"{total_bits / len(costs.bits):.2f}" if len(costs.bits) else "–"),
    ]
    if costs.alone_bits is not None:
        saved_bits = float(costs.alone_bits.sum()) - total_bits
        rows.append(("online model saved", f"{saved_bits:,.1f} bits ({saved_bits / 8:,.0f} bytes, "
                                           f"{100 * saved_bits / max(float(costs.alone_bits.sum()), 1e-9):.1f}% "
                                           "of the model alone; the compressor keeps the online model only where "
                                           "the file comes out smaller with it, llmzip -v says which)"))
    for label, value in (comparison or {}).items():
        rows.append((f"{html.escape(label)}, for comparison", f"{value:.3f} bits per byte"))
    totals = "".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in rows)

    span_items = []
    for rank, (start, end, bits) in enumerate(spans, 1):
        span_bytes = b"".join(costs.token_bytes[start:end])
        span_items.append(f'<li><a href="#span{rank}">{bits:.1f} bits</a> over {end - start} tokens '
                          f'({bits / max(len(span_bytes), 1):.2f} bits per byte): '
                          f"<code>{visible_html(span_bytes, line_breaks=False)}</code></li>")

    return f"""<!DOCTYPE html>
<html lang="und">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmzip explain: {html.escape(name)}</title>
<style>{_CSS}{chr(10).join(styles)}
</style>
</head>
<body>
<h1>What each token of {html.escape(name)} costs</h1>
<p class="note">Each token is coloured by its code length, −log2 p under the model: the bits the range coder
spends on it. Chunks of up to {costs.chunk_tokens} tokens start from a fresh context, as in the compressor, which also \
keeps a chunk raw or as xz when that is smaller.
Hover over a token to see its cost.</p>
<h2>Totals</h2>
<table class="totals">{totals}</table>
<h2>Legend: {"bits the online model saved per token (negative: it cost more)" if by_saving else "bits per token"}</h2>
<div class="legend">{legend}</div>
<h2>Most surprising spans</h2>
<ol class="spans">{''.join(span_items) or '<li>(no tokens)</li>'}</ol>
<h2>Text</h2>
<div class="text">{''.join(text_html)}</div>
</body>
</html>
"""


# -- command line ---------------------------------------------------------------------------------


def add_explain_arguments(parser) -> None:
    parser.description = "Write one self-contained HTML page colouring every token of FILE by its cost in bits."
    parser.add_argument("file", metavar="FILE", help="the file to explain (- for standard input)")
    parser.add_argument("-o", "--output", metavar="PAGE.html",
                        help="where to write the page (default: FILE's name + .html)")
    parser.add_argument("-m", "--model", metavar="NAME|PATH",
                        help="built-in model name or model path (default: the default level's model)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--engine", choices=("auto", "exact", "float"), default="auto", help="inference engine")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="chunks run together (default: as compression groups them)")
    parser.add_argument("--chunk-tokens", type=int, metavar="N", help="tokens per chunk (default: the model's context)")
    parser.add_argument("--max-bytes", type=int, metavar="N", help="explain only the first N bytes")
    parser.add_argument("--top", type=int, default=10, metavar="N",
                        help="how many surprising spans to list (default 10)")
    parser.add_argument("--window", type=int, default=16, metavar="N", help="tokens per surprising span (default 16)")
    parser.add_argument("--no-online", dest="online", action="store_false", default=None,
                        help="cost tokens under the model alone (default: with the online model, as the compressor "
                             "does)")
    parser.add_argument("--colour", choices=("cost", "online"), default="cost",
                        help="colour tokens by their cost (default) or by the bits the online model saved on them")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing page")


def explain(data: bytes, compressor, *, name: str = "input", top: int = 10, window: int = 16,
            comparison: dict[str, float] | None = None, colour_by: str = "cost") -> str:
    """The HTML page for `data` under the compressor's model, engine, chunking and online model."""
    costs = token_costs(compressor, data)
    return render_page(name, data, costs, model=compressor.model,
                       engine_kind=compressor.engine.settings.get("kind", "?"),
                       top=top, window=window, comparison=comparison, colour_by=colour_by)


def run_explain(args) -> int:
    from .api import CompressOptions, Compressor
    from .bench import baseline

    if args.file == "-":
        data, name = sys.stdin.buffer.read(), "(stdin)"
    else:
        path = Path(args.file)
        if path.is_dir():
            raise LLMZipError(f"{args.file}: is a directory")
        with open(path, "rb") as stream:
            data = stream.read(-1 if args.max_bytes is None else args.max_bytes)
        name = path.name
    if args.max_bytes is not None:
        data = data[: args.max_bytes]
    output = Path(args.output or f"{Path(name).name if args.file != '-' else 'stdin'}.html")
    if output.exists() and not args.force:
        raise LLMZipError(f"{output} already exists; use -f to overwrite")
    compressor = Compressor(CompressOptions(model=args.model, engine=args.engine, device=args.device,
                                            batch_size=args.batch_size, chunk_tokens=args.chunk_tokens,
                                            online=getattr(args, "online", None)))
    xz = baseline("xz")
    comparison = {xz.label: 8 * len(xz.compress(data)) / len(data)} if data else {}
    page = explain(data, compressor, name=name, top=args.top, window=args.window, comparison=comparison,
                   colour_by=getattr(args, "colour", "cost"))
    temporary = output.with_name(output.name + ".partial")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(output)
    print(f"llmzip explain: wrote {output}", file=sys.stderr)
    return 0


__all__ = ["add_explain_arguments", "chunk_costs", "explain", "group_tokens", "render_page", "run_explain",
           "surprising_spans", "token_costs"]
