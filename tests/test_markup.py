"""Markdown fields → email-safe HTML and readable plain text."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline.render.markup import LINK_STYLE, WIDTH, to_html, to_inline_html, to_text

URL = "https://www.pewresearch.org/"


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.anchors.append(dict(attrs))


def parse(markup: str) -> _Anchors:
    parser = _Anchors()
    parser.feed(markup)
    return parser


# HTML


def test_links_get_the_inline_style_mail_clients_keep() -> None:
    out = to_html(f"Browse [the research]({URL}) and [more](https://example.org/a?b=1&c=2).")

    anchors = parse(out).anchors
    assert [a["href"] for a in anchors] == [URL, "https://example.org/a?b=1&c=2"]
    assert all(a["style"] == LINK_STYLE for a in anchors)
    assert ">the research</a>" in out


def test_emphasis_lists_and_paragraphs_become_html() -> None:
    out = to_html("**57% of working mothers** feel *not enough*.\n\n- one\n- two\n\n1. first\n2. second")

    assert "<strong>57% of working mothers</strong>" in out
    assert "<em>not enough</em>" in out
    assert parse(out).tags == ["p", "strong", "em", "ul", "li", "li", "ol", "li", "li"]


def test_raw_html_is_escaped_not_passed_through() -> None:
    out = to_html('Hello <script>alert("x")</script> <b onclick="steal()">bold</b>\n\n<div>block</div>')

    assert "<script" not in out
    assert "<b " not in out
    assert "<div>" not in out
    assert "&lt;script&gt;" in out
    assert "&lt;div&gt;block&lt;/div&gt;" in out
    assert parse(out).tags == ["p", "p"]


def test_javascript_links_never_become_anchors() -> None:
    out = to_html("[click](javascript:alert(1)) and <javascript:alert(1)>")

    assert parse(out).anchors == []


def test_typography_is_smartened() -> None:
    assert (
        str(to_html('"quick" -- it\'s fine...')) == "<p>\u201cquick\u201d \u2013 it\u2019s fine\u2026</p>\n"
    )


def test_inline_html_drops_the_single_wrapping_paragraph() -> None:
    assert str(to_inline_html("Name it **to tame it**")) == "Name it <strong>to tame it</strong>"
    assert str(to_inline_html("one\n\ntwo")).count("<p>") == 2


# Plain text


def test_links_in_text_read_label_then_url() -> None:
    assert to_text(f"Browse [the research]({URL}) today.") == f"Browse the research ({URL}) today."


def test_autolinks_and_links_labelled_with_their_url_are_not_doubled() -> None:
    assert to_text(f"See <{URL}> or [{URL}]({URL}).") == f"See {URL} or {URL}."


def test_emphasis_markers_and_html_escapes_are_removed_in_text() -> None:
    assert to_text("**Bold**, *soft*, `code` & more") == "Bold, soft, code & more"


def test_bullet_and_numbered_lists_in_text() -> None:
    source = "Try this:\n\n- one\n- two\n\n3. three\n4. four\n"

    assert to_text(source) == "Try this:\n\n- one\n- two\n\n3. three\n4. four"


def test_long_list_items_hang_under_their_marker() -> None:
    item = "word " * 30
    lines = to_text(f"- {item}\n- short").splitlines()

    assert lines[0].startswith("- word")
    assert all(line.startswith("  word") for line in lines[1:-1])
    assert lines[-1] == "- short"
    assert all(len(line) <= WIDTH for line in lines)


def test_paragraphs_are_separated_by_one_blank_line() -> None:
    assert to_text("First para\ncontinues.\n\nSecond.") == "First para continues.\n\nSecond."


def test_hard_break_is_kept() -> None:
    assert to_text("line one  \nline two") == "line one\nline two"


def test_text_wraps_at_72_columns_without_breaking_urls() -> None:
    long_url = "https://example.org/" + "a-very-long-path-segment/" * 5
    source = ("Guilt loves to stay vague. " * 8) + f"Read [the study]({long_url}) when you can. " * 2

    text = to_text(source)

    lines = text.splitlines()
    assert len(lines) > 3
    for line in lines:
        assert len(line) <= WIDTH or long_url in line, f"line too long: {line!r}"
    assert text.count(long_url) == 2
    assert " ".join(text.split()) == " ".join(
        (("Guilt loves to stay vague. " * 8) + f"Read the study ({long_url}) when you can. " * 2).split()
    )


def test_text_width_is_configurable() -> None:
    text = to_text("word " * 40, width=30)

    assert max(len(line) for line in text.splitlines()) <= 30


def test_text_keeps_the_words_of_code_blocks() -> None:
    """An indented paragraph is a code block in Markdown; its words must not vanish from the text part."""
    source = "Try this script:\n\n    I feel guilty because I missed bath time.\n\nThen breathe.\n\n```\nbreathe in\n```"

    text = to_text(source)

    assert "I feel guilty because I missed bath time." in text
    assert "breathe in" in text
    assert "I feel guilty because" in str(to_html(source)), "the HTML part shows it"


# Properties

_MARKDOWN_PIECES = st.sampled_from(
    [
        "word",
        " ",
        "\n",
        "\n\n",
        "*",
        "**",
        "_",
        "`",
        "[",
        "]",
        "(",
        ")",
        "<",
        ">",
        "/",
        "!",
        "#",
        "- ",
        "1. ",
        "> ",
        "    ",
        "&",
        "&amp;",
        "https://example.org/x",
        "<b>",
        "</p>",
        '<a href="x">',
        "<script>",
        "```",
        "\t",
        "\\",
        "é",
        "\u200b",
    ]
)
MARKDOWN = st.one_of(st.text(max_size=200), st.lists(_MARKDOWN_PIECES, max_size=60).map("".join))


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(MARKDOWN)
def test_to_text_never_crashes_and_never_adds_tags(source: str) -> None:
    """Every ``<`` in the text part was typed by the editor (literally or as an entity): no markup leaks."""
    text = to_text(source)

    assert isinstance(text, str)
    assert text.count("<") <= html.unescape(source).count("<")
    for tag in ("<p>", "<strong>", "<em>", "<code>", "<li>", "<ul>", "<ol>", "<br", "<a href", "<img"):
        if tag not in html.unescape(source):
            assert tag not in text


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(MARKDOWN)
def test_to_html_never_passes_raw_tags_through(source: str) -> None:
    out = str(to_html(source))

    assert not re.search(r"<(script|div|b|img)\b", out)
    assert not re.search(r"<a\s+href=\"x\"", out)
