"""llmzip explain: per-token costs as the compressor sees them, and a page a person can read."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import SAMPLE_TEXT
from llmzip import stream
from llmzip.api import Compressor
from llmzip.cli import main
from llmzip.explain import group_tokens, surprising_spans, token_costs, visible_html

TEXT = ((SAMPLE_TEXT + "贾宝玉与林黛玉在大观园中读书。 <script>alert('x')</script> & \"quotes\"\n").encode()
        + b"\xff\xfe raw\x00\n")


@pytest.fixture(scope="module")
def page(tiny_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("explain")
    source = directory / "sample.txt"
    source.write_bytes(TEXT * 2)
    output = directory / "sample.html"
    assert main(["explain", str(source), "-o", str(output), "--model", tiny_model]) == 0
    return output


class _Structure(HTMLParser):
    """Checks that tags nest properly and collects what the page says."""

    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.titles, self.classes, self.text = [], [], [], []
        self.in_text_div = 0

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag not in self.VOID:
            self.stack.append(tag)
        if "title" in attributes:
            self.titles.append(attributes["title"])
        self.classes.append(attributes.get("class", ""))
        if attributes.get("class") == "text" or self.in_text_div:
            self.in_text_div += tag not in self.VOID

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> does not close the open tag"
        if self.in_text_div:
            self.in_text_div -= 1

    def handle_data(self, data):
        if self.in_text_div:
            self.text.append(data)


def test_page_structure(page):
    document = page.read_text(encoding="utf-8")
    parser = _Structure()
    parser.feed(document)
    parser.close()
    assert parser.stack == []
    for heading in ("Totals", "Legend: bits per token", "Most surprising spans", "Text"):
        assert f"<h2>{heading}</h2>" in document
    assert "bits per byte" in document and "xz -9e, for comparison" in document
    assert "<script" not in document  # the file's text is escaped
    assert "<link" not in document and "src=" not in document  # self-contained
    costs = [title for title in parser.titles if title.endswith(" bits")]
    assert len(costs) > 50
    assert "\\xff" in document and "\\x00" in document  # bytes that are not text are shown as escapes
    shown = "".join(parser.text).replace("↵", "")
    assert "贾宝玉与林黛玉在大观园中读书。 <script>alert('x')</script> & \"quotes\"" in shown
    assert shown.count("\ufffd") == 0
    assert sum(1 for name in parser.classes if name == "hot") == 10


def test_costs_match_the_compressor(tiny_model):
    compressor = Compressor(model=tiny_model, online=False)
    data = SAMPLE_TEXT.encode() * 2
    costs = token_costs(compressor, data)
    assert b"".join(costs.token_bytes) == data and len(costs.bits) == len(costs.tokens)
    chunks = [costs.tokens[start : start + compressor.chunk_tokens]
              for start in range(0, len(costs.tokens), compressor.chunk_tokens)]
    coded = stream.encode_chunks(compressor.engine, chunks)
    assert costs.chunks == len(chunks)
    assert costs.bits.sum() == pytest.approx(sum(bits for _, bits, _ in coded), rel=1e-9)


def test_session_path_gives_the_same_costs(tiny_model, monkeypatch):
    compressor = Compressor(model=tiny_model, online=False)
    data = SAMPLE_TEXT.encode()[:40]
    full_pass = token_costs(compressor, data).bits
    monkeypatch.setattr(type(compressor.engine), "batch_invariant", False)  # the encoder walks in lockstep
    stepwise = token_costs(compressor, data).bits
    np.testing.assert_allclose(stepwise, full_pass, rtol=1e-12)


def test_tokens_are_grouped_into_whole_characters():
    red = "红".encode()  # three bytes, here split over two tokens
    assert group_tokens([red[:2], red[2:], b"a", b"\xff", b"b"]) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert group_tokens([b"ab", red[:1]]) == [(0, 1), (1, 2)]  # a cut-off character at the end stands alone
    assert visible_html(b"<a>\xff\n") == '&lt;a&gt;<span class="esc">\\xff</span><span class="nl">↵</span>\n'
    assert html.unescape(visible_html("红楼梦 & co".encode())) == "红楼梦 & co"


def test_surprising_spans_do_not_overlap():
    bits = np.array([1, 1, 9, 9, 1, 1, 8, 8, 1, 1], dtype=float)
    assert surprising_spans(bits, window=2, count=2) == [(2, 4, 18.0), (6, 8, 16.0)]
    spans = surprising_spans(bits, window=3, count=5, groups=[(0, 3), (3, 6), (6, 10)])
    assert spans == [(0, 6, 22.0), (6, 10, 18.0)]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", *arguments]
    return subprocess.run(command, capture_output=True, timeout=120, check=True, cwd=tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_renders_in_a_browser(page, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout.decode("utf-8")
    assert "Legend: bits per token" in dom and "bits per byte" in dom and "Most surprising spans" in dom
    text = html.unescape(re.sub(r"<[^>]*>", "", dom))
    assert "贾宝玉与林黛玉在大观园中读书。" in text  # whole characters, however the tokens cut them

    image = pytest.importorskip("PIL.Image")
    screenshot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1200,1600", page.as_uri())
    pixels = np.asarray(image.open(screenshot).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    assert len(colours) > 50  # text, legend and tokens of many colours, not a blank page
    from llmzip.explain import colour

    palette = {colour(level) for level in range(0, 17)}
    painted = {tuple(int(v) for v in rgb) for rgb, count in zip(colours, counts) if count > 30}
    assert len(palette & painted) >= 5  # the legend and the tokens show the colour scale
