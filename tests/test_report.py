"""The HTML report (``f.report``, ``exprc report``): one self-contained, well-formed page."""

from __future__ import annotations

import html.parser
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

import exprc
from exprc import report

ROOT = Path(__file__).resolve().parents[1]


class _Tags(html.parser.HTMLParser):
    """Checks that the tags the report writes are balanced."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "line", "rect"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _check_page(text: str) -> str:
    p = _Tags()
    p.feed(text)
    p.close()
    assert p.stack == []
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.DOTALL):
        ET.fromstring(svg)  # each diagram is well-formed XML
    assert not re.search(r"<script|<link|\ssrc=|\shref=", text)  # nothing to fetch, nothing run
    return "".join(p.text)


def test_report_has_every_section_escaped_and_self_contained(tmp_path):
    x, m = exprc.vector("a<b&c"), exprc.matrix("m")
    f = exprc.function([x, m], [exprc.log(1 + exprc.exp(x)) * 2.0, exprc.sum(m * x, axis=1)], profile=True,
                       backend="c")
    f(np.ones(4), np.ones((3, 4)))
    path = tmp_path / "r.html"
    text = f.report(path)
    assert path.read_text(encoding="utf-8") == text
    shown = _check_page(text)
    assert "a<b&c" in shown and "a<b&c" not in text  # the name, escaped in the markup
    for part in ("Graph as written", "Graph after optimization", "Rewrites", "Fused kernels", "Generated source",
                 "Profile"):
        assert part in shown
    assert "softplus" in shown  # a rule that fired: log(1 + exp(x)) -> softplus(x)
    for k in f.kernels:
        assert k["name"] in shown
    assert "exprc_run" in shown and 'class="kw"' in text  # the source, keywords marked
    assert text.count("<svg") >= 3  # two graphs and the profile's bar chart
    plain = exprc.function([x], exprc.exp(x), backend="c")
    assert "Profile" not in _check_page(plain.report())


def test_big_graphs_are_summarized_not_drawn():
    x = exprc.vector("x")
    e = x
    for i in range(report.MAX_DRAWN + 10):
        e = exprc.sin(e) + float(i)
    svg = report.graph_svg([e])
    assert "not drawn" in svg and "<svg" not in svg


def test_cli_report_of_a_saved_function(tmp_path):
    x = exprc.vector("x")
    f = exprc.function([x], exprc.expm1(x) * 3.0)
    exprc.save(f, tmp_path / "f.json")
    out = tmp_path / "out.html"
    r = subprocess.run([sys.executable, "-m", "exprc", "report", str(tmp_path / "f.json"), "-o", str(out),
                        "--profile", "2"], capture_output=True, text=True, cwd=ROOT, check=False,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    shown = _check_page(out.read_text(encoding="utf-8"))
    assert "Profile" in shown and "expm1" in shown
    (tmp_path / "bad.json").write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "exprc", "report", str(tmp_path / "bad.json")], capture_output=True,
                       text=True, cwd=ROOT, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                 "HOME": str(tmp_path)})
    assert r.returncode == 1 and "bad.json" in r.stderr


def _browser() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_loads_in_a_headless_browser_without_console_errors(tmp_path):
    """Chromium opens the page, logs no error, and the screenshot is not blank (the diagram and
    the tables are drawn).  Skips where no Chromium is installed."""
    import pytest

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt install chromium)")
    x = exprc.vector("x")
    f = exprc.function([x], exprc.log(1 + exprc.exp(x)) * 2.0, profile=True)
    f(np.ones(8))
    page, shot = tmp_path / "r.html", tmp_path / "shot.png"
    f.report(page)
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                       capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 10_000, r.stderr[-2000:]
    assert "Uncaught" not in r.stderr and "CONSOLE(" not in r.stderr, r.stderr[-2000:]
