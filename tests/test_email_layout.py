"""The rendered HTML of every sample in real Chromium: phone and desktop widths, light and dark.

Checks what readers rely on: no sideways scrolling on a phone, a visible call to action, readable type,
accessible structure (lang, presentation tables, headings, alt text) and WCAG AA contrast (4.5:1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route

from pipeline.content.issue import load_issue
from pipeline.render.links import Links
from pipeline.render.renderer import personalise, render
from pipeline.settings import Settings, load_settings
from pipeline.tokens import Signer
from tests import golden
from tests.paths import REPO

SLUGS = sorted(path.stem for path in (REPO / "issues").glob("*.yaml"))
PHONE, DESKTOP = 375, 800
MIN_CONTRAST = 4.5

# Colour maths and the set of elements that hold the issue's running text, shared by the checks below.
_JS_HELPERS = """
const parse = (s) => {
  const m = s.match(/rgba?\\(([^)]+)\\)/);
  if (!m) return null;
  const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number);
  return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
};
const luminance = (c) => {
  const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
};
const background = (el) => {
  for (let e = el; e; e = e.parentElement) {
    const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0) return c;
  }
  return parse(getComputedStyle(document.documentElement).backgroundColor) || {r: 255, g: 255, b: 255, a: 1};
};
const contrast = (el) => {
  const fg = luminance(parse(getComputedStyle(el).color));
  const bg = luminance(background(el));
  return (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
};
const describe = (el) => ({
  text: el.textContent.trim().slice(0, 50),
  fontSize: parseFloat(getComputedStyle(el).fontSize),
  color: getComputedStyle(el).color,
  contrast: contrast(el),
  backgroundLuminance: luminance(background(el)),
});
// Running text of the issue: paragraphs and list items in the card, not the small print above and below
// it (.nl-outer, 14px by design) and not the all-caps labels; empty spacer paragraphs are skipped.
const content = () => Array.from(document.querySelectorAll('.nl-copy p, .nl-copy li'))
  .filter((e) => !e.closest('.nl-outer'))
  .filter((e) => getComputedStyle(e).textTransform !== 'uppercase')
  .filter((e) => e.textContent.trim().length > 0);
"""


def js(body: str) -> str:
    return f"() => {{ {_JS_HELPERS}\n {body} }}"


@pytest.fixture(scope="module")
def settings_for_pages() -> Settings:
    return load_settings(REPO / "settings.toml")


@pytest.fixture(scope="module")
def sample_html(settings_for_pages: Settings) -> dict[str, str]:
    files = golden.render_samples(settings_for_pages)
    return {slug: files[f"{slug}.html"] for slug in SLUGS}


def _offline(route: Route) -> None:
    """Pages are loaded from memory; anything they would fetch (images, fonts) is refused, not waited for."""
    route.abort()


@pytest.fixture(scope="module")
def open_page(chromium: Browser) -> Iterator[Callable[..., Page]]:
    """``open_page(html, width, colour_scheme="light")``: a loaded page, cached for the module."""
    contexts: dict[tuple[int, str], BrowserContext] = {}
    pages: dict[tuple[str, int, str], Page] = {}

    def opener(html: str, width: int, scheme: Literal["light", "dark"] = "light") -> Page:
        if (width, scheme) not in contexts:
            context = chromium.new_context(viewport={"width": width, "height": 900}, color_scheme=scheme)
            context.route("http*://**/*", _offline)
            contexts[(width, scheme)] = context
        if (html, width, scheme) not in pages:
            page = contexts[(width, scheme)].new_page()
            page.set_content(html, wait_until="load")
            pages[(html, width, scheme)] = page
        return pages[(html, width, scheme)]

    yield opener
    for context in contexts.values():
        context.close()


def elements(page: Page, body: str) -> list[dict[str, Any]]:
    result = page.evaluate(js(body))
    assert isinstance(result, list)
    return result


def report(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {item}" for item in items)


# Layout


@pytest.mark.parametrize("slug", SLUGS)
def test_no_horizontal_scrolling_on_a_phone(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], PHONE)

    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    assert page.evaluate("document.body.scrollWidth") <= PHONE


@pytest.mark.parametrize("slug", SLUGS)
def test_desktop_layout_is_centred_and_at_most_600px(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], DESKTOP)

    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP
    box = page.locator("h1").bounding_box()
    assert box is not None
    assert box["x"] >= (DESKTOP - 600) / 2
    assert box["x"] + box["width"] <= (DESKTOP + 600) / 2


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
@pytest.mark.parametrize("slug", SLUGS)
def test_call_to_action_button_is_visible_inside_the_viewport(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str, width: int
) -> None:
    page = open_page(sample_html[slug], width)
    issue = load_issue(REPO / "issues" / f"{slug}.yaml").issue
    steps_with_links = [step for step in issue.next_steps if step.link]

    buttons = page.locator(".nl-button a")

    assert steps_with_links, "every sample has a call to action"
    assert buttons.count() == len(steps_with_links)
    for index, step in enumerate(steps_with_links):
        button = buttons.nth(index)
        assert button.is_visible()
        assert button.get_attribute("href") == step.link
        assert button.inner_text().strip() == (step.link_text or "Take this step")
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width
        assert box["height"] >= 40, "a comfortable tap target"


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
@pytest.mark.parametrize("slug", SLUGS)
def test_body_text_is_at_least_16px(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str, width: int
) -> None:
    page = open_page(sample_html[slug], width)

    texts = elements(page, "return content().map(describe);")

    assert len(texts) >= 10, report(texts)
    assert any(t["text"].startswith("Hi Sam,") for t in texts)
    small = [t for t in texts if t["fontSize"] < 16]
    assert small == [], f"body text under 16px:\n{report(small)}"


@pytest.mark.parametrize("slug", SLUGS)
def test_small_print_is_still_at_least_14px(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], PHONE)

    sizes = page.evaluate(
        "() => Array.from(document.querySelectorAll('.nl-outer p, .nl-outer a'))"
        ".map((e) => parseFloat(getComputedStyle(e).fontSize))"
    )

    assert sizes and min(sizes) >= 14


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("slug", SLUGS)
def test_preheader_is_the_first_text_yet_never_shows_nor_takes_space(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str, scheme: str
) -> None:
    """Inbox previews read the body's first text, whatever CSS hides: the preheader must be it, and
    be hidden in the message itself (display:none, no colour trick that spam filters score)."""
    page = open_page(sample_html[slug], PHONE, scheme)
    issue = load_issue(REPO / "issues" / f"{slug}.yaml").issue

    first_text = page.evaluate(
        """() => {
          const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT,
            {acceptNode: (n) => n.textContent.trim() ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP});
          return walker.nextNode().textContent;
        }"""
    )
    preheader = page.locator(".nl-preheader")

    assert first_text.startswith(issue.preheader)
    assert preheader.count() == 1 and not preheader.is_visible()
    assert preheader.bounding_box() is None, "no box: it takes no space"
    layout = "() => [document.body.scrollHeight, document.querySelector('h1').getBoundingClientRect().top]"
    before = page.evaluate(layout)
    page.evaluate(
        "() => { window._preheader = document.querySelector('.nl-preheader'); window._preheader.remove(); }"
    )
    try:
        assert page.evaluate(layout) == before, "removing it moves nothing"
    finally:
        page.evaluate("() => document.querySelector('.nl-page').prepend(window._preheader)")


# Structure


@pytest.mark.parametrize("slug", SLUGS)
def test_document_language_is_set(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], DESKTOP)

    assert page.evaluate("document.documentElement.getAttribute('lang')") == "en"


@pytest.mark.parametrize("slug", SLUGS)
def test_every_layout_table_is_presentational(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], DESKTOP)

    tables = page.evaluate(
        "() => Array.from(document.querySelectorAll('table')).map((t) => t.getAttribute('role'))"
    )

    assert tables, "the email layout is made of tables"
    assert set(tables) == {"presentation"}


@pytest.mark.parametrize("slug", SLUGS)
def test_headings_exist(open_page: Callable[..., Page], sample_html: dict[str, str], slug: str) -> None:
    page = open_page(sample_html[slug], DESKTOP)
    issue = load_issue(REPO / "issues" / f"{slug}.yaml").issue

    h1 = page.locator("h1")
    h2 = [text.strip() for text in page.locator("h2").all_inner_texts()]

    assert h1.count() == 1
    assert h1.inner_text().strip() == issue.subject
    assert "Your next steps" in h2
    assert len(h2) >= 3
    assert page.title() == issue.subject


@pytest.mark.parametrize("slug", SLUGS)
def test_every_image_has_alt_text(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], DESKTOP)

    alts = page.evaluate("() => Array.from(document.images).map((i) => i.getAttribute('alt'))")

    assert all(alt and alt.strip() for alt in alts), alts


def test_hero_image_keeps_its_alt_text_and_fits_a_phone(
    open_page: Callable[..., Page], project: Path, settings: Settings
) -> None:
    path = project / "issues" / f"{SLUGS[0]}.yaml"
    alt = "A parent at a kitchen table, laptop open, a toddler on her knee"
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "intro: |",
            f'hero:\n  src: "https://news.example.org/images/guilt.jpg"\n  alt: "{alt}"\nintro: |',
        ),
        encoding="utf-8",
    )
    fields = Links(settings, Signer(golden.SIGNING_KEY)).personal_fields(golden.RECIPIENT)
    html = personalise(render(load_issue(path), settings), fields).html

    page = open_page(html, PHONE)

    images = page.evaluate(
        "() => Array.from(document.images).map((i) => [i.getAttribute('alt'), i.getAttribute('src')])"
    )
    assert images == [[alt, "https://news.example.org/images/guilt.jpg"]]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE


# Contrast, light and dark


@pytest.mark.parametrize("slug", SLUGS)
def test_content_text_contrast_is_at_least_4_5(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    page = open_page(sample_html[slug], DESKTOP, "light")

    texts = elements(page, "return content().map(describe);")

    low = [t for t in texts if t["contrast"] < MIN_CONTRAST]
    assert texts and low == [], f"contrast under {MIN_CONTRAST}:1\n{report(low)}"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_small_print_and_button_contrast_is_at_least_4_5(
    open_page: Callable[..., Page], sample_html: dict[str, str], scheme: str
) -> None:
    page = open_page(sample_html[SLUGS[0]], PHONE, scheme)

    texts = elements(
        page,
        "return Array.from(document.querySelectorAll('.nl-outer p, .nl-outer a, .nl-button a')).map(describe);",
    )

    low = [t for t in texts if t["contrast"] < MIN_CONTRAST]
    assert len(texts) >= 5 and low == [], f"contrast under {MIN_CONTRAST}:1 ({scheme})\n{report(low)}"


@pytest.mark.parametrize("slug", SLUGS)
def test_dark_mode_turns_the_card_dark_and_keeps_text_readable(
    open_page: Callable[..., Page], sample_html: dict[str, str], slug: str
) -> None:
    light = open_page(sample_html[slug], PHONE, "light")
    dark = open_page(sample_html[slug], PHONE, "dark")

    light_texts = elements(light, "return content().map(describe);")
    dark_texts = elements(dark, "return content().map(describe);")

    assert len(dark_texts) == len(light_texts) >= 10
    assert all(t["backgroundLuminance"] > 0.8 for t in light_texts), "light mode has a light card"
    bright = [t for t in dark_texts if t["backgroundLuminance"] >= 0.1]
    assert bright == [], f"card background not dark behind:\n{report(bright)}"
    low = [t for t in dark_texts if t["contrast"] < MIN_CONTRAST]
    assert low == [], f"dark-mode contrast under {MIN_CONTRAST}:1\n{report(low)}"
    card = dark.evaluate(js("return luminance(background(document.querySelector('.nl-card td')));"))
    assert card < 0.1
