"""Markdown fields of an issue → email-safe HTML and readable plain text (CommonMark, markdown-it-py).

Raw HTML in Markdown is disabled: editors write words, templates own the layout. Links get an inline
colour because some mail clients drop ``<style>`` blocks.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

LINK_STYLE = "color:#8a3b12;text-decoration:underline;"
WIDTH = 72


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "typographer": True}).enable(
        ["replacements", "smartquotes"]
    )


@lru_cache(maxsize=1)
def _permissive_parser() -> MarkdownIt:
    """A parser that keeps every link, whatever its scheme, so a check can see the ones we refuse."""
    parser = MarkdownIt("commonmark", {"html": False})
    parser.validateLink = lambda url: True  # type: ignore[method-assign]
    return parser


def link_targets(source: str) -> list[str]:
    """Every link and image target written in Markdown, including ones rendering would drop."""
    targets = []
    for token in _permissive_parser().parse(source):
        for child in token.children or ():
            target = child.attrGet("href") if child.type == "link_open" else child.attrGet("src")
            if child.type in {"link_open", "image"} and target is not None:
                targets.append(str(target))
    return targets


def to_html(source: str, link_style: str | None = LINK_STYLE) -> Markup:
    """Markdown → HTML for the email body (already escaped, so templates print it as is); a web page,
    styled by its stylesheet, passes ``link_style=None``."""
    parser = _parser()
    tokens = parser.parse(source)
    for token in tokens:
        for child in token.children or ():
            if child.type == "link_open" and link_style:
                child.attrSet("style", link_style)
    return Markup(parser.renderer.render(tokens, parser.options, {}))


def to_inline_html(source: str, link_style: str | None = LINK_STYLE) -> Markup:
    """Markdown → HTML without the wrapping paragraph, for titles and list items."""
    html = str(to_html(source, link_style)).strip()
    if html.startswith("<p>") and html.endswith("</p>") and html.count("<p>") == 1:
        html = html[3:-4]
    return Markup(html)


def _inline_text(token: Token) -> str:
    out: list[str] = []
    href: str | None = None
    link_start = 0
    for child in token.children or ():
        if child.type in {"text", "code_inline"}:
            out.append(child.content)
        elif child.type == "softbreak":
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "link_open":
            href = str(child.attrGet("href") or "")
            link_start = len(out)
        elif child.type == "link_close" and href:
            label = "".join(out[link_start:])
            if label.strip() != href:
                out.append(f" ({href})")
            href = None
        elif child.type == "image":
            out.append(f"[{child.content}]")
    return "".join(out)


def to_text(source: str, width: int = WIDTH) -> str:
    """Markdown → plain text for the text/plain part: links as ``label (url)``, lists as ``-``/``1.``."""
    blocks: list[tuple[str, int | None]] = []  # (text, the tight list it is an item of)
    prefixes: list[str] = []
    counters: list[int] = []
    tight = False
    lists_seen = 0
    for token in _parser().parse(source):
        if token.type in {"bullet_list_open", "ordered_list_open"}:
            lists_seen += 1
            counters.append(int(token.attrGet("start") or 1) if token.type == "ordered_list_open" else 0)
        elif token.type in {"bullet_list_close", "ordered_list_close"}:
            counters.pop()
        elif token.type == "list_item_open":
            prefixes.append(f"{counters[-1]}. " if counters and counters[-1] else "- ")
            if counters and counters[-1]:
                counters[-1] += 1
        elif token.type == "list_item_close":
            prefixes.pop()
        elif token.type == "paragraph_open":
            tight = token.hidden
        elif token.type in {"code_block", "fence"}:
            blocks.append((textwrap.indent(token.content.rstrip("\n"), "    "), None))
        elif token.type == "inline":
            blocks.append((_wrap(_inline_text(token), prefixes, width), lists_seen if tight else None))
            if prefixes:
                prefixes[-1] = " " * len(prefixes[-1])
    out = ""
    for index, (text, tight_list) in enumerate(blocks):
        if index:
            out += "\n" if tight_list is not None and tight_list == blocks[index - 1][1] else "\n\n"
        out += text
    return out


def _wrap(text: str, prefixes: list[str], width: int) -> str:
    """Wrap one block, hanging list-item text under its marker; never break URLs."""
    indent = "   " * max(len(prefixes) - 1, 0)
    first = indent + (prefixes[-1] if prefixes else "")
    rest = " " * len(first)
    lines = [
        textwrap.fill(
            part,
            width,
            initial_indent=first if i == 0 else rest,
            subsequent_indent=rest,
            break_long_words=False,
            break_on_hyphens=False,
        )
        for i, part in enumerate(text.split("\n"))
    ]
    return "\n".join(lines)
