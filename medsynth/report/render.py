"""Rendering: a :class:`Document` (headings, paragraphs, tables, figures) to Markdown and HTML.

The HTML is self-contained (figures as ``data:`` URIs, no scripts, links or styles from
elsewhere) and every string in it is escaped: run names, config values and table cells from
result files cannot inject markup. Paragraphs may use ``**bold**`` and ```code``` and nothing else.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Preformatted:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    name: str  # file name of the PNG in the report folder
    caption: str


Block = Heading | Paragraph | Preformatted | Table | Image


@dataclass
class Document:
    """Blocks in reading order and the PNG bytes of the figures they show (by file name)."""

    blocks: list[Block] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(level, text))

    def p(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def pre(self, text: str) -> None:
        self.blocks.append(Preformatted(text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(Table(list(header), [[str(c) for c in r] for r in rows]))

    def img(self, name: str, data: bytes, caption: str) -> None:
        self.images[name] = data
        self.blocks.append(Image(name, caption))

    def extend(self, other: "Document") -> None:
        self.blocks.extend(other.blocks)
        self.images.update(other.images)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(doc: Document) -> str:
    """The document as Markdown; figures link to their PNG files beside it."""
    out = []
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(b.text)
        elif isinstance(b, Preformatted):
            out.append("```\n" + b.text.rstrip("\n") + "\n```")
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(c) for c in b.header) + " |",
                     "| " + " | ".join("---" for _ in b.header) + " |"]
            lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.caption}]({b.name})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;"
    "max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{margin-top:1.6em;color:#345}"
    "table{border-collapse:collapse;margin:.8em 0;font-size:.92em}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "th{background:#eef2f6}tr:nth-child(even) td{background:#fafafa}"
    "pre{background:#f5f5f5;padding:.8em;overflow-x:auto;font-size:.85em}"
    "figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}"
    "figcaption{font-size:.88em;color:#555}"
)


def html_page(doc: Document, title: str) -> str:
    """The document as one self-contained HTML page (figures embedded as ``data:`` URIs)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", e(b.text))
            out.append("<p>" + re.sub(r"`(.+?)`", r"<code>\1</code>", text) + "</p>")
        elif isinstance(b, Preformatted):
            out.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Table):
            rows = ["<tr>" + "".join(f"<th>{e(c)}</th>" for c in b.header) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows]
            out.append("<table>" + "".join(rows) + "</table>")
        elif isinstance(b, Image):
            data = base64.b64encode(doc.images[b.name]).decode("ascii")
            out.append(f'<figure><img alt="{e(b.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
