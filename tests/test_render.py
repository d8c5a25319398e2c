"""Rendering: golden files for every sample, render once / personalise many, and template errors."""

from __future__ import annotations

import difflib
import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.content.issue import load_issue
from pipeline.errors import ContentError
from pipeline.recipient import PersonalFields, Recipient
from pipeline.render.clicks import CLICK_FIELD
from pipeline.render.links import Links
from pipeline.render.renderer import (
    PERSONAL_FIELDS,
    RenderedIssue,
    Renderer,
    SplitTemplate,
    personalise,
    render,
)
from pipeline.settings import Settings, load_settings
from pipeline.tokens import Signer
from tests import golden
from tests.fixtures.project import own_template
from tests.paths import REPO

SLUGS = sorted(path.stem for path in (REPO / "issues").glob("*.yaml"))
FIRST = "2026-12-01-name-it-to-tame-it"
KEY = b"test-render: a fixed key for links in these tests"
TRICKY_NAME = '<b>Zoë & "Co"</b>'


class _Hrefs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")


def hrefs(markup: str) -> list[str]:
    parser = _Hrefs()
    parser.feed(markup)
    return parser.hrefs


def _diff_lines(text: str) -> list[str]:
    """Lines to diff: MJML's output has very long lines, so HTML is also cut between adjacent tags."""
    return [piece for line in text.splitlines() for piece in re.split(r"(?<=>)(?=<)", line)]


def short_diff(expected: str, actual: str, name: str, limit: int = 40) -> str:
    lines = list(
        difflib.unified_diff(
            _diff_lines(expected), _diff_lines(actual), f"golden/{name}", f"rendered/{name}", lineterm="", n=1
        )
    )
    shown = [line if len(line) <= 200 else line[:200] + " …" for line in lines[:limit]]
    more = f"\n… {len(lines) - limit} more diff lines" if len(lines) > limit else ""
    return "\n".join(shown) + more


def fields_for(name: str = "Sam", **overrides: str) -> PersonalFields:
    values = {
        "first_name": name,
        "email": "sam@example.com",
        "unsubscribe_url": "https://news.example.org/u/TOKEN-U",
        "preferences_url": "https://news.example.org/preferences/TOKEN-P",
        **overrides,
    }
    return PersonalFields(**values)


# Golden files


@pytest.fixture(scope="module")
def fresh_samples() -> dict[str, str]:
    return golden.render_samples(load_settings(REPO / "settings.toml"))


def test_golden_files_exist_for_exactly_the_samples() -> None:
    expected = {f"{slug}{suffix}" for slug in SLUGS for suffix in (".html", ".txt")}
    present = {path.name for path in golden.GOLDEN_DIR.iterdir()} if golden.GOLDEN_DIR.is_dir() else set()
    assert present == expected, golden.HINT


@pytest.mark.parametrize("suffix", [".html", ".txt"])
@pytest.mark.parametrize("slug", SLUGS)
def test_rendering_matches_golden_file(fresh_samples: dict[str, str], slug: str, suffix: str) -> None:
    name = f"{slug}{suffix}"
    path = golden.GOLDEN_DIR / name
    assert path.exists(), f"tests/golden/{name} is missing: {golden.HINT}"
    expected = path.read_bytes().decode("utf-8")
    actual = fresh_samples[name]
    if actual != expected:
        pytest.fail(
            f"{name} differs from its golden file; if the change is intended, {golden.HINT}.\n"
            + short_diff(expected, actual, name),
            pytrace=False,
        )


def test_golden_rendering_is_deterministic(settings: Settings) -> None:
    assert golden.render_samples(settings) == golden.render_samples(settings)


def test_golden_writer_updates_changed_files_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "old-issue.html").write_text("stale", encoding="utf-8")
    (tmp_path / "same.txt").write_text("kept", encoding="utf-8")

    changed = golden.write({"same.txt": "kept", "new.html": "<p>new</p>"}, tmp_path)

    assert sorted(changed) == ["removed old-issue.html", "wrote new.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.html", "same.txt"]


def test_short_diff_is_short_and_names_the_file() -> None:
    expected = "\n".join(f"line {i}" for i in range(200))
    actual = expected.replace("line 5\n", "line five\n").replace("line 150", "x" * 500)

    diff = short_diff(expected, actual, "a.html", limit=10)

    assert diff.startswith("--- golden/a.html\n+++ rendered/a.html")
    assert "+line five" in diff
    assert len(diff.splitlines()) <= 11
    assert all(len(line) <= 202 for line in diff.splitlines())


# What a message loads when it is opened: nothing but the issue's own images


class _Resources(HTMLParser):
    """Every URL the HTML would fetch on open: stylesheets and other links, src/srcset, background
    attributes, and url(…) or @import in style blocks and attributes. Link targets (a href) are not
    fetched, so they are not resources."""

    _URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []
        self._in_style = False

    def _css(self, text: str) -> None:
        self.urls += [a or b for a, b in self._URL.findall(text)]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        for name, value in attrs:
            if value is None:
                continue
            if (tag == "link" and name == "href") or name in {"src", "background", "poster", "data"}:
                self.urls.append(value)
            elif name == "srcset":
                self.urls += [item.split()[0] for item in value.split(",") if item.strip()]
            elif name == "style":
                self._css(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self._css(data)

    def handle_comment(self, data: str) -> None:
        """Outlook's conditional comments hold markup too: read it."""
        inner = _Resources()
        inner.feed(data)
        self.urls += inner.urls


def resources(markup: str) -> list[str]:
    parser = _Resources()
    parser.feed(markup)
    return parser.urls


@pytest.mark.parametrize("slug", SLUGS)
def test_a_sample_message_loads_no_external_resource(fresh_samples: dict[str, str], slug: str) -> None:
    """No web fonts (MJML links Google Fonts for Roboto unless told not to), no tracking pixel."""
    html_part = fresh_samples[f"{slug}.html"]

    assert resources(html_part) == []
    assert "googleapis" not in html_part and "@import" not in html_part


def test_the_only_resource_is_the_issue_s_own_image(settings: Settings, project: Path) -> None:
    path = project / "issues" / f"{FIRST}.yaml"
    hero = "https://news.example.org/images/guilt.jpg"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("intro: |", f'hero:\n  src: "{hero}"\n  alt: "A parent"\nintro: |'))

    copy = personalise(render(load_issue(path), settings), fields_for())

    assert resources(copy.html) == [hero]


def test_the_resource_finder_sees_fonts_and_backgrounds() -> None:
    """The finder above, on what MJML emitted before web fonts were turned off, and on backgrounds."""
    markup = (
        '<!--[if !mso]><!--><link href="https://fonts.googleapis.com/css?family=Roboto" rel="stylesheet">'
        "<style>@import url(https://fonts.googleapis.com/css?family=Roboto);</style><!--<![endif]-->"
        '<td background="https://x.example/bg.png" style="background:url(\'https://x.example/b2.png\')">'
        '<a href="https://example.org/">a link is no resource</a></td>'
    )

    assert resources(markup) == [
        "https://fonts.googleapis.com/css?family=Roboto",
        "https://fonts.googleapis.com/css?family=Roboto",
        "https://x.example/bg.png",
        "https://x.example/b2.png",
    ]


def test_the_preheader_is_hidden_without_a_colour(fresh_samples: dict[str, str]) -> None:
    """Text coloured like its background is what HTML_FONT_LOW_CONTRAST scores; display:none hides it."""
    for slug in SLUGS:
        html_part = fresh_samples[f"{slug}.html"]
        style = re.search(r'<span class="nl-preheader" style="([^"]*)"', html_part)
        assert style is not None, slug
        assert "display:none" in style[1] and "mso-hide:all" in style[1]
        assert "color" not in style[1]


# Render once, personalise many


RENDERED_FIELDS = [name for name in PERSONAL_FIELDS if name != CLICK_FIELD]
"""What the issue's own template places; the click token comes with tracking (``test_clicks``)."""


def test_rendered_issue_carries_every_personal_field_as_a_placeholder(rendered: RenderedIssue) -> None:
    assert set(rendered.html.fields) == set(RENDERED_FIELDS)
    assert set(rendered.text.fields) == set(RENDERED_FIELDS)
    assert rendered.slug == FIRST
    assert rendered.subject == "Guilt isn't a verdict: start by naming it"


def test_personalise_many_copies_from_one_render(rendered: RenderedIssue) -> None:
    ximena = personalise(rendered, fields_for("Ximena", email="ximena@example.com"))
    yusuf = personalise(rendered, fields_for("Yusuf", email="yusuf@example.com"))

    assert "Hi Ximena," in ximena.html and "Hi Ximena," in ximena.text
    assert "Hi Yusuf," in yusuf.html and "Hi Yusuf," in yusuf.text
    assert "Yusuf" not in ximena.html and "yusuf@example.com" not in ximena.text
    assert ximena.subject == yusuf.subject == rendered.subject
    assert ximena.html.replace("Ximena", "Yusuf").replace("ximena@", "yusuf@") == yusuf.html


def test_personalise_substitutes_email_and_signed_links(settings: Settings, rendered: RenderedIssue) -> None:
    links = Links(settings, Signer(KEY))
    recipient = Recipient(subscriber_id=31, email="sam.rivera@example.com", name="Sam Rivera")
    fields = links.personal_fields(recipient)

    copy = personalise(rendered, fields)

    assert fields.first_name == "Sam"
    assert fields.unsubscribe_url.startswith("https://news.example.org/u/")
    assert fields.preferences_url.startswith("https://news.example.org/preferences/")
    for purpose, url in (("unsubscribe", fields.unsubscribe_url), ("preferences", fields.preferences_url)):
        assert Signer(KEY).verify(purpose, url.rsplit("/", 1)[1], address=recipient.email) == 31
    assert {fields.unsubscribe_url, fields.preferences_url} <= set(hrefs(copy.html))
    assert "sam.rivera@example.com subscribed" in copy.html
    assert f"Unsubscribe:\n{fields.unsubscribe_url}\n" in copy.text
    assert f"Update your preferences:\n{fields.preferences_url}\n" in copy.text
    assert (
        "subscribed to The Juggle, a\nweekly letter for working parents:\nsam.rivera@example.com\n"
        in copy.text
    )
    assert f"https://news.example.org/archive/{FIRST}" in hrefs(copy.html)


@pytest.mark.parametrize("name", [None, "", "   "])
def test_first_name_falls_back_to_there(
    settings: Settings, rendered: RenderedIssue, name: str | None
) -> None:
    fields = Links(settings, Signer(KEY)).personal_fields(Recipient(5, "x@example.com", name))

    copy = personalise(rendered, fields)

    assert fields.first_name == "there"
    assert "Hi there," in copy.html
    assert "Hi there," in copy.text


def test_first_name_is_the_first_word_of_the_name(settings: Settings) -> None:
    fields = Links(settings, Signer(KEY)).personal_fields(Recipient(5, "x@example.com", "  Zoë  Ångström "))

    assert fields.first_name == "Zoë"


def test_values_are_escaped_in_html_but_not_in_text(rendered: RenderedIssue) -> None:
    url = "https://news.example.org/u/a?x=1&y=2"
    copy = personalise(rendered, fields_for(TRICKY_NAME, email='zoe"&<co>@example.com', unsubscribe_url=url))

    assert f"Hi {html.escape(TRICKY_NAME)}," in copy.html
    assert "Hi &lt;b&gt;Zoë &amp; &quot;Co&quot;&lt;/b&gt;," in copy.html
    assert TRICKY_NAME not in copy.html
    assert "<co>" not in copy.html
    assert url in hrefs(copy.html), "the attribute decodes back to the exact URL"
    assert f"Hi {TRICKY_NAME}," in copy.text
    assert 'zoe"&<co>@example.com' in copy.text
    assert f"Unsubscribe:\n{url}\n" in copy.text


@pytest.mark.parametrize("slug", SLUGS)
def test_no_placeholder_survives_personalisation(settings: Settings, project: Path, slug: str) -> None:
    rendered = render(load_issue(project / "issues" / f"{slug}.yaml"), settings)

    copy = personalise(rendered, fields_for("[[nl:email]]"))  # even a value that looks like one

    for part in (copy.html, copy.text):
        assert part.count("[[nl:") == 1
        assert "Hi [[nl:email]]," in part


def test_split_template_parse_fill_and_size() -> None:
    split = SplitTemplate.parse("Hi [[nl:first_name]], ([[nl:email]]) bye [[nl:first_name]]")

    assert split.chunks == ("Hi ", ", (", ") bye ", "")
    assert split.fields == ("first_name", "email", "first_name")
    assert split.fill({"first_name": "Zoë", "email": "z@e.org"}) == "Hi Zoë, (z@e.org) bye Zoë"
    assert split.static_size == len(b"Hi , () bye ")
    with pytest.raises(KeyError):
        split.fill({"first_name": "Zoë"})


def test_split_template_without_placeholders_is_one_chunk() -> None:
    split = SplitTemplate.parse("plain text")

    assert split.chunks == ("plain text",)
    assert split.fill({}) == "plain text"


def test_with_tags_produces_sendgrid_substitution_tags(rendered: RenderedIssue) -> None:
    tagged_html = rendered.html.with_tags(lambda name: f"-{name}-")
    tagged_text = rendered.text.with_tags(lambda name: f"-{name}-")

    for tagged in (tagged_html, tagged_text):
        assert "[[nl:" not in tagged
        for name in RENDERED_FIELDS:
            assert f"-{name}-" in tagged
    assert "Hi -first_name-," in tagged_text
    assert "Unsubscribe:\n-unsubscribe_url-\n" in tagged_text
    assert "-unsubscribe_url-" in hrefs(tagged_html)
    fields = fields_for("Ana")
    substituted = tagged_text
    for name in PERSONAL_FIELDS:
        substituted = substituted.replace(f"-{name}-", getattr(fields, name))
    assert substituted == personalise(rendered, fields).text, "SendGrid's substitution gives the same copy"


def test_text_part_is_tidy(rendered: RenderedIssue) -> None:
    text = personalise(rendered, fields_for()).text

    assert text.endswith("\n") and not text.endswith("\n\n")
    assert "\n\n\n" not in text
    assert not re.search(r"[ \t]+$", text, re.MULTILINE)


def test_renderer_renders_several_issues_with_one_environment(settings: Settings, project: Path) -> None:
    renderer = Renderer(settings)

    subjects = [
        renderer.render(load_issue(path)).subject for path in sorted((project / "issues").glob("*.yaml"))
    ]

    assert len(subjects) == len(SLUGS)
    assert len(set(subjects)) == len(SLUGS)


# Template errors


def break_template(project: Path, name: str, old: str, new: str) -> None:
    path = own_template(project, name)
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{name} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def render_error(settings: Settings, project: Path) -> ContentError:
    with pytest.raises(ContentError) as caught:
        render(load_issue(project / "issues" / f"{FIRST}.yaml"), settings)
    return caught.value


def test_undefined_variable_names_the_template(settings: Settings, project: Path) -> None:
    break_template(
        project, "weekly.mjml.j2", "{{ issue.strategy.title | md_inline }}", "{{ strategy_title }}"
    )

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("weekly.mjml.j2")
    assert "undefined" in problem.message
    assert "strategy_title" in problem.message


def test_undefined_attribute_in_text_template_names_it(settings: Settings, project: Path) -> None:
    break_template(project, "weekly.txt.j2", "{{ issue.subject }}", "{{ issue.subjet }}")

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("weekly.txt.j2")
    assert "subjet" in problem.message


def test_undefined_variable_through_a_filter_is_a_content_error(settings: Settings, project: Path) -> None:
    """`{{ issue.strategy.bodyy | md }}`, a typo before a filter, must not crash with a TypeError."""
    break_template(
        project, "weekly.mjml.j2", "{{ issue.strategy.body | md }}", "{{ issue.strategy.bodyy | md }}"
    )

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("weekly.mjml.j2")
    assert "bodyy" in problem.message


def test_undefined_variable_in_a_partial_names_the_partial(settings: Settings, project: Path) -> None:
    break_template(
        project, "partials/footer.mjml.j2", "{{ newsletter.postal_address }}", "{{ newsletter.postal }}"
    )

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("partials/footer.mjml.j2"), str(problem)
    assert "postal" in problem.message


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("weekly.mjml.j2", "{%- if issue.intro %}", "{%- if issue.intro %"),
        ("partials/footer.mjml.j2", "{{ newsletter.postal_address }}", "{{ newsletter.postal_address }"),
        ("weekly.txt.j2", "{% endfor %}", "{% endfro %}"),
    ],
)
def test_jinja_syntax_error_names_the_template_and_line(
    settings: Settings, project: Path, name: str, old: str, new: str
) -> None:
    break_template(project, name, old, new)
    broken_line = 1 + next(
        index
        for index, line in enumerate(own_template(project, name).read_text(encoding="utf-8").splitlines())
        if new in line
    )

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith(name)
    assert "template syntax" in problem.message
    assert problem.line is not None
    assert abs(problem.line - broken_line) <= 1


def test_issue_naming_a_missing_template_is_a_content_error(settings: Settings, project: Path) -> None:
    path = project / "issues" / f"{FIRST}.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "template: monthly\n", encoding="utf-8")

    with pytest.raises(ContentError) as caught:
        render(load_issue(path), settings)

    [problem] = caught.value.problems
    assert problem.path == str(path)
    assert problem.field == "template"
    assert "monthly.mjml.j2" in problem.message


def test_a_template_that_fails_while_rendering_is_an_error_at_its_line(
    settings: Settings, project: Path
) -> None:
    """Not a traceback: `check` and `render` name the template file and line, as for a syntax error."""
    break_template(
        project, "partials/masthead.mjml.j2", "{{ newsletter.name }}", "{{ newsletter.name }}{{ 1 // 0 }}"
    )
    path = own_template(project, "partials/masthead.mjml.j2")
    broken_line = 1 + next(
        i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if "1 // 0" in line
    )

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("masthead.mjml.j2")
    assert problem.message == "template failed: ZeroDivisionError: integer division or modulo by zero"
    assert problem.line == broken_line


def test_a_template_edited_between_runs_renders_as_edited(settings: Settings, project: Path) -> None:
    """Compiled templates are cached across runs (Jinja's bytecode cache): an edit must still show."""
    issue_file = load_issue(project / "issues" / f"{FIRST}.yaml")
    before = personalise(render(issue_file, settings), fields_for("Ana")).text
    footer = own_template(project, "partials/footer.txt.j2")
    footer.write_text(footer.read_text(encoding="utf-8") + "Edited between two runs.\n", encoding="utf-8")

    after = personalise(render(issue_file, settings), fields_for("Ana")).text

    assert "Edited between two runs." not in before
    assert "Edited between two runs." in after


def test_issue_can_choose_another_template(settings: Settings, project: Path) -> None:
    templates = project / "templates"
    shutil.copy(own_template(project, "weekly.mjml.j2"), templates / "special.mjml.j2")
    (templates / "special.txt.j2").write_text(
        "SPECIAL {{ issue.subject }} for {{ recipient.first_name }}\n"
        "{{ recipient.email }} {{ recipient.unsubscribe_url }} {{ recipient.preferences_url }}\n",
        encoding="utf-8",
    )
    path = project / "issues" / f"{FIRST}.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "template: special\n", encoding="utf-8")

    copy = personalise(render(load_issue(path), settings), fields_for("Ana"))

    assert copy.text.startswith("SPECIAL Guilt isn't a verdict: start by naming it for Ana\n")


def test_invalid_mjml_is_a_content_error_naming_the_template(settings: Settings, project: Path) -> None:
    break_template(project, "weekly.mjml.j2", "<mj-divider />", "<mj-divider>")

    [problem] = render_error(settings, project).problems

    assert problem.path.endswith("weekly.mjml.j2")
    assert "MJML" in problem.message
