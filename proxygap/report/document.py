"""A tiny document model rendered both as Markdown and as a self-contained HTML page.

A report is a list of blocks (headings, paragraphs, bullet lists, tables, images, code, and
folded groups of blocks); images are PNG files in the run folder, linked from the Markdown and
embedded (base64) in the HTML so the page can be mailed or archived as one file. The page fits
its width: tables wrap their text and scroll sideways inside their own box when they are still
wider than the page, images shrink to it, and folded groups (``<details>``) stay closed until
opened.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # may hold **bold** and `code`, rendered in both outputs


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    path: str  # relative to the run folder
    caption: str = ""


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]  # each may hold **bold** and `code`


@dataclass
class Details:
    """Blocks folded away under a one-line ``summary`` (closed until the reader opens it)."""

    summary: str
    blocks: list[Block] = field(default_factory=list)


Block = Heading | Paragraph | Bullets | Table | Image | Code | Details


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def markdown(self) -> str:
        return "\n".join([f"# {self.title}", "", *_markdown(self.blocks)])

    def html(self, root: Path) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>", *_html(self.blocks, root)]
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


def _markdown(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in b.rows]
            out.append("")
        elif isinstance(b, Image):
            out += [f"![{b.caption}]({b.path})", ""]
            if b.caption:
                out += [f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += ["```", b.text, "```", ""]
        elif isinstance(b, Details):  # GitHub and most Markdown viewers fold it too
            out += ["<details>", f"<summary>{_inline(b.summary)}</summary>", ""]
            out += _markdown(b.blocks) + ["</details>", ""]
    return out


def _html(blocks: list[Block], root: Path) -> list[str]:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            cap = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows
            )
            body.append(
                f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        elif isinstance(b, Image):
            data = base64.b64encode((root / b.path).read_bytes()).decode()
            alt = html.escape(b.caption)
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
                f"<figcaption>{_inline(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            body.append(f"<pre>{html.escape(b.text)}</pre>")
        elif isinstance(b, Details):
            inner = "\n".join(_html(b.blocks, root))
            body.append(f"<details><summary>{_inline(b.summary)}</summary>\n{inner}\n</details>")
    return body


def _inline(text: str) -> str:
    """Escape, then render **bold** and `code` spans."""
    out = html.escape(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
div.table {{ max-width: 100%; overflow-x: auto; margin: 1em 0; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td:first-child {{ white-space: nowrap; }}
caption {{ caption-side: top; text-align: left; font-style: italic; padding-bottom: 4px; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ font-style: italic; color: #555; }}
code, pre {{ background: #f6f6f6; padding: 1px 4px; }}
pre {{ overflow-x: auto; }}
details {{ margin: 1em 0; }} summary {{ cursor: pointer; color: #245; }}
ul {{ padding-left: 1.4em; }} li {{ margin: 0.25em 0; }}
</style></head><body>
{body}
</body></html>
"""
