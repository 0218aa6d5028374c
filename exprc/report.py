"""A compiled function as one self-contained HTML page (``f.report(path)``, ``exprc report``).

The page needs nothing from the network: the graph before and after optimization as SVG
diagrams (graphviz's ``dot`` when it is installed, else a layered layout drawn here), the rewrite
trace (rule, before -> after), the fused kernels and the generated source with its keywords
marked, the profile table with a bar chart of time per kernel when the function was profiled,
and the accuracy report when the search ran.  Every text from the graph is HTML-escaped.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from exprc.graph import Node, toposort

#: Graphs with more nodes are summarized instead of drawn (a diagram of thousands is unreadable).
MAX_DRAWN = 400
_C_WORDS = re.compile(r"\b(static|inline|const|void|int|int64_t|double|float|char|for|if|else|return|"
                      r"restrict|__global__|extern)\b")
_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:2em}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;vertical-align:top}
pre{background:#f7f7f7;padding:1em;overflow:auto;max-height:40em;font-size:12px}
.kw{color:#0550ae;font-weight:600}.cm{color:#6e7781}.num{text-align:right}
svg text{font:11px monospace}"""


def _label(n: Node) -> str:
    if n.op == "input":
        return str(n.arg("name") or "input")
    if n.op == "constant":
        v = n.value
        return f"{v.reshape(-1)[0]:.4g}" if v.size == 1 else f"const{v.shape}"
    return n.op


def graph_svg(outputs: Sequence[Node]) -> str:
    """The graph of ``outputs`` as SVG: ``dot`` when installed, else layers by depth."""
    order = toposort(list(outputs))
    if len(order) > MAX_DRAWN:
        return f"<p>{len(order)} nodes: more than {MAX_DRAWN}, not drawn.</p>"
    dot = shutil.which("dot")
    if dot:
        from exprc.printing import to_dot

        try:
            out = subprocess.run([dot, "-Tsvg"], input=to_dot(list(outputs)), capture_output=True, text=True,
                                 timeout=30, check=True).stdout
            return out[out.index("<svg"):] if "<svg" in out else _layered(order, outputs)
        except (subprocess.SubprocessError, OSError, ValueError):
            pass
    return _layered(order, outputs)


def _layered(order: list[Node], outputs: Sequence[Node]) -> str:
    depth: dict[Node, int] = {}
    for n in order:
        depth[n] = 1 + max((depth[i] for i in n.inputs), default=-1)
    layers: dict[int, list[Node]] = {}
    for n in order:
        layers.setdefault(depth[n], []).append(n)
    w, h, gap_x, gap_y = 110, 26, 20, 44
    pos = {n: (20 + k * (w + gap_x), 20 + d * (h + gap_y)) for d, row in layers.items() for k, n in enumerate(row)}
    width = 40 + max(len(r) for r in layers.values()) * (w + gap_x)
    height = 40 + len(layers) * (h + gap_y)
    outs = set(outputs)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}">')]
    for n in order:
        x1, y1 = pos[n]
        for i in n.inputs:
            x0, y0 = pos[i]
            parts.append(f'<line x1="{x0 + w / 2}" y1="{y0 + h}" x2="{x1 + w / 2}" y2="{y1}" stroke="#999"/>')
    for n in order:
        x, y = pos[n]
        fill = "#e8f0fe" if n.op == "input" else "#fff4e5" if n in outs else "#ffffff"
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="5" fill="{fill}" stroke="#555"/>'
                     f'<text x="{x + w / 2}" y="{y + 17}" text-anchor="middle">{html.escape(_label(n)[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def highlight(source: str) -> str:
    """``source`` escaped, with C keywords and comments marked."""
    out = []
    for line in html.escape(source).split("\n"):
        if line.lstrip().startswith(("/*", "*", "//")):
            out.append(f'<span class="cm">{line}</span>')
        else:
            out.append(_C_WORDS.sub(r'<span class="kw">\1</span>', line))
    return "\n".join(out)


def _profile_html(profile: Any) -> str:
    d = profile.to_dict()
    rows = d["kernels"]
    if not rows:
        return "<p>Profiled, but not called yet.</p>"
    top = max(r["total_s"] for r in rows) or 1.0
    bars = [f'<svg xmlns="http://www.w3.org/2000/svg" width="720" height="{22 * len(rows) + 10}">']
    for k, r in enumerate(rows):
        y, bw = 5 + 22 * k, 400 * r["total_s"] / top
        bars.append(f'<text x="0" y="{y + 14}">{html.escape(r["name"][:38])}</text>'
                    f'<rect x="300" y="{y}" width="{bw:.1f}" height="16" fill="#4c8bf5"/>'
                    f'<text x="{305 + bw:.1f}" y="{y + 14}">{r["total_s"] * 1e3:.3f} ms</text>')
    bars.append("</svg>")
    body = "".join(f"<tr><td>{html.escape(r['name'])}</td><td>{r['kind']}</td><td class=num>{r['calls']}</td>"
                   f"<td class=num>{r['total_s'] * 1e3:.3f}</td><td class=num>{r['mean_s'] * 1e6:.1f}</td>"
                   f"<td class=num>{r['elements']}</td><td class=num>{r['gb_per_s']:.2f}</td>"
                   f"<td class=num>{r['bandwidth_fraction']:.0%}</td></tr>" for r in rows)
    stages = ", ".join(f"{html.escape(k)} {v * 1e3:.1f} ms" for k, v in d["compile"].items())
    return (f"{''.join(bars)}<table><tr><th>kernel / step</th><th>kind</th><th>calls</th><th>total ms</th>"
            f"<th>mean us</th><th>elements</th><th>GB/s</th><th>of {d['bandwidth_gb_per_s']:.1f} GB/s</th></tr>"
            f"{body}</table><p>Compile: {stages or '-'}</p>")


def render(f: Any) -> str:
    """The report of compiled function ``f`` (an :class:`exprc.Function`) as HTML text."""
    from exprc.printing import pprint

    e = html.escape
    sig = ", ".join(str(v.arg("name") or f"<position {i}>") for i, v in enumerate(f.inputs))
    trace = "".join(f"<tr><td>{e(t.pass_name)}</td><td>{e(t.rule)}</td><td>{e(pprint(t.before, max_nodes=30)[:300])}"
                    f"</td><td>{e(pprint(t.after, max_nodes=30)[:300])}</td></tr>" for t in f.graph.trace)
    kernels = "".join(f"<tr><td>{e(str(k.get('name')))}</td><td>{e(str(k.get('kind')))}</td>"
                      f"<td>{e(' '.join(map(str, k.get('ops', []))))}</td></tr>" for k in f.kernels)
    sections = [
        f"<h1>exprc function ({e(sig)})</h1>",
        (f"<p>Backend <b>{e(str(f.backend))}</b>; cache entry {e(str(f.cache_path))}; "
         f"outputs: <code>{e(pprint(list(f.outputs), max_nodes=60)[:600])}</code></p>"),
        "<h2>Graph as written</h2>", graph_svg(f.outputs),
        "<h2>Graph after optimization</h2>", graph_svg(list(f.graph.outputs)),
        f"<h2>Rewrites ({len(f.graph.trace)})</h2>",
        f"<table><tr><th>pass</th><th>rule</th><th>before</th><th>after</th></tr>{trace}</table>" if trace
        else "<p>No rule fired.</p>",
        f"<h2>Fused kernels ({len(f.kernels)})</h2>",
        f"<table><tr><th>name</th><th>kind</th><th>ops</th></tr>{kernels}</table>",
        "<h2>Generated source</h2>", f"<pre>{highlight(f.source)}</pre>",
    ]
    if f.profile is not None:
        sections += ["<h2>Profile</h2>", _profile_html(f.profile)]
    if getattr(f, "accuracy_report", None) is not None:
        sections += ["<h2>Accuracy search</h2>", f"<pre>{e(str(f.accuracy_report))}</pre>"]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>exprc report</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")


def entry_page(fields: Sequence[tuple[str, Any]], source: str | None) -> str:
    """A cache entry (``exprc cache show KEY --html``): its metadata and its source, highlighted."""
    e = html.escape
    rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in fields)
    body = f"<pre>{highlight(source)}</pre>" if source is not None else "<p>No source kept.</p>"
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>exprc cache entry</title>"
            f"<style>{_CSS}</style></head><body><h1>exprc cache entry</h1><table>{rows}</table>"
            f"<h2>Generated source</h2>{body}</body></html>")


__all__ = ["MAX_DRAWN", "entry_page", "graph_svg", "highlight", "render"]
