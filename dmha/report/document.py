"""The report's two documents: ``summary.md`` (figures embedded by file name, a
finding under each) and ``report.html`` (one self-contained file, images inline)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from dmha.report.style import Section

__all__ = ["write_html", "write_summary"]

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _header(title: str, facts: Sequence[tuple[str, str]]) -> list[str]:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    return [*lines, ""]


def write_summary(sections: Sequence[Section], out_dir: Path, title: str, facts: Sequence[tuple[str, str]]) -> Path:
    """Write ``summary.md``.

    Args:
        sections: in report order.
        out_dir: the report folder (images and data are linked relative to it).
        title: the document title.
        facts: ``(label, value)`` lines under the title (source, user, period, seed).

    Returns:
        The file written.
    """
    lines = _header(title, facts)
    lines += ["## Contents", ""]
    lines += [f"{i}. [{s.title}](#{i}-{_anchor(s.title)})" for i, s in enumerate(sections, 1)]
    lines.append("")
    for i, s in enumerate(sections, 1):
        lines += [f"## {i}. {s.title}", ""]
        if s.empty_reason:
            lines += [f"*No figure: {s.empty_reason}*", ""]
            continue
        lines += [f"![{s.title}]({img})" for img in s.images]
        lines += ["", s.finding, ""]
        if s.data:
            lines += ["Data: " + ", ".join(f"[{d}]({d})" for d in s.data), ""]
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    return _CODE.sub(r"<code>\1</code>", out)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.empty { color: #555; font-style: italic; }
.data { font-size: .9em; color: #444; }
code { background: #f2f2f2; padding: 0 .2em; }
"""


def write_html(sections: Sequence[Section], out_dir: Path, title: str, facts: Sequence[tuple[str, str]]) -> Path:
    """Write ``report.html``: one file, every image inline (base64), no outside resources.

    Args:
        sections: in report order.
        out_dir: the report folder (images are read from it).
        title: the document title.
        facts: ``(label, value)`` lines under the title.

    Returns:
        The file written.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><ul>",
        *(f"<li><strong>{html.escape(k)}</strong>: {_inline(v)}</li>" for k, v in facts),
        "</ul><nav><ol>",
        *(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, 1)),
        "</ol></nav>",
    ]
    for i, s in enumerate(sections, 1):
        parts.append(f'<section id="s{i}"><h2>{i}. {html.escape(s.title)}</h2>')
        if s.empty_reason:
            parts.append(f'<p class="empty">No figure: {_inline(s.empty_reason)}</p></section>')
            continue
        for img in s.images:
            data = base64.b64encode((out_dir / img).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(s.title)}: {img}"></figure>'
            )
        parts.append(f"<p>{_inline(s.finding)}</p>")
        if s.data:
            parts.append(f'<p class="data">Data beside this file: {", ".join(html.escape(d) for d in s.data)}</p>')
        parts.append("</section>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
