"""Issue → RenderedIssue (Jinja2 → MJML → HTML, plus text), once per issue; then cheap personalisation.

Per-recipient values are rendered as placeholders (``[[nl:first_name]]``); the finished HTML and text
are split at them once, so each copy is a join of fixed chunks and a few escaped values: microseconds,
not a template render. The same split lets SendGrid substitute the values on its side.
"""

from __future__ import annotations

import dataclasses
import html
import re
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from pipeline.content.issue import IssueFile
from pipeline.errors import ContentError, Problem
from pipeline.recipient import PersonalFields
from pipeline.render import markup
from pipeline.render.links import archive_url
from pipeline.render.overrides import PACKAGED_TEMPLATES
from pipeline.settings import Settings

PERSONAL_FIELDS = PersonalFields._fields
_PLACEHOLDER = re.compile(r"\[\[nl:(\w+)\]\]")
# Zero-width characters after the preheader keep clients from pulling body text into the inbox preview.
_PREVIEW_SPACER = Markup("&#847;&zwnj;&nbsp;" * 60)

LIGHT = {
    "page": "#f4efe9",
    "card": "#ffffff",
    "text": "#1f2328",
    "muted": "#57606a",
    "accent": "#8a3b12",
    "story": "#fbf6f1",
    "quote": "#c9865a",
    "rule": "#e6ded5",
}
DARK = {
    "page": "#18181a",
    "card": "#242427",
    "text": "#ececec",
    "muted": "#b9b9b9",
    "accent": "#f2a977",
    "story": "#2f2b28",
    "rule": "#3a3a3e",
}


@dataclass(frozen=True, slots=True)
class SplitTemplate:
    """Text cut at its placeholders: ``chunks[0] field[0] chunks[1] … field[n-1] chunks[n]``."""

    chunks: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SplitTemplate:
        parts = _PLACEHOLDER.split(text)
        return cls(tuple(parts[0::2]), tuple(parts[1::2]))

    def fill(self, values: Mapping[str, str]) -> str:
        out = [self.chunks[0]]
        for name, chunk in zip(self.fields, self.chunks[1:], strict=True):
            out.append(values[name])
            out.append(chunk)
        return "".join(out)

    def with_tags(self, tag: Callable[[str], str]) -> str:
        """The text with each placeholder replaced by ``tag(field)`` (e.g. SendGrid substitution keys)."""
        return self.fill({name: tag(name) for name in set(self.fields)})

    @property
    def static_size(self) -> int:
        return sum(len(chunk.encode("utf-8")) for chunk in self.chunks)


@dataclass(frozen=True, slots=True)
class RenderedIssue:
    slug: str
    subject: str
    preheader: str
    html: SplitTemplate
    text: SplitTemplate
    web: str | None = None
    """The issue's content as its archive page shows it (``WEB_CONTENT``: no greeting, no footer for
    one reader); None for a mail that is no issue, and for an issue loaded back to be sent."""
    subject_variants: tuple[str, ...] = ()
    """Other subjects to test against ``subject`` (the issue's ``subject_variants``)."""

    @property
    def subjects(self) -> tuple[str, ...]:
        """Every subject of the issue: ``subject`` first, then those it is tested against."""
        return (self.subject, *self.subject_variants)


@dataclass(frozen=True, slots=True)
class PersonalisedMessage:
    subject: str
    html: str
    text: str


def _md_text(source: str, indent: int = 0) -> str:
    """Markdown as plain text, with continuation lines indented to hang under a list marker."""
    text = markup.to_text(source, width=markup.WIDTH - indent)
    return textwrap.indent(text, " " * indent).lstrip(" ") if indent else text


def _wrap(text: str, indent: int = 0) -> str:
    """Plain text (not Markdown: a name, a title) wrapped like the Markdown fields, continuation lines
    hanging ``indent`` spaces in; words and URLs are never broken."""
    pad = " " * indent
    wrapped = textwrap.fill(
        text,
        markup.WIDTH,
        initial_indent=pad,
        subsequent_indent=pad,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return wrapped[indent:]


def _on_text(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that first turns its value into text, so an undefined value raises UndefinedError."""

    def text_filter(value: object, *args: Any, **kwargs: Any) -> Any:
        return function(str(value), *args, **kwargs)

    return text_filter


WEB_CONTENT = "web/issue_content.html.j2"
"""An issue's content for the web (its archive page, its feed entry), rendered with the email from
the same context: a campaign stores it, so the archive shows the issue as it was sent."""


def template_loader(templates_dir: Path, subfolder: str = "") -> jinja2.BaseLoader:
    """The project's own ``templates_dir`` first, then the packaged templates: a newsletter overrides
    them file by file (one partial, say) and never has to copy the rest."""
    return jinja2.FileSystemLoader([templates_dir / subfolder, PACKAGED_TEMPLATES / subfolder])


def environment(templates_dir: Path) -> jinja2.Environment:
    """Jinja2 with StrictUndefined; HTML templates autoescaped, text templates not. Compiled templates
    are kept in Jinja's per-user bytecode cache (a private folder in the temp directory, checked
    against each template's source), so `check` and `render` on every save skip compiling them."""
    env = jinja2.Environment(
        loader=template_loader(templates_dir),
        bytecode_cache=jinja2.FileSystemBytecodeCache(),
        undefined=jinja2.StrictUndefined,
        autoescape=lambda name: bool(name and name.endswith((".mjml.j2", ".html.j2"))),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = _on_text(markup.to_html)
    env.filters["md_inline"] = _on_text(markup.to_inline_html)
    env.filters["md_text"] = _on_text(_md_text)
    env.filters["wrap"] = _on_text(_wrap)
    return env


def placeholder(name: str) -> str:
    """Where a recipient's value ``name`` goes in rendered text."""
    return f"[[nl:{name}]]"


def _context(settings: Settings, **specific: Any) -> dict[str, Any]:
    """What every template sees (the newsletter, the sender, the colours, placeholders for the
    recipient's own values), plus what this one mail adds (``issue``, links…)."""
    return {
        "newsletter": settings.newsletter,
        "sender": settings.sender,
        "recipient": {name: Markup(placeholder(name)) for name in PERSONAL_FIELDS},
        "colors": LIGHT,
        "dark": DARK,
        "preview_spacer": _PREVIEW_SPACER,
        **specific,
    }


def _render_template(env: jinja2.Environment, name: str, context: dict[str, Any], source: Path) -> str:
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateNotFound as exc:
        message = f"template '{exc.name}' is neither in the templates folder nor a packaged one"
        raise ContentError([Problem(str(source), message, field="template")]) from None
    except jinja2.TemplateSyntaxError as exc:
        raise ContentError(
            [Problem(exc.filename or name, f"template syntax: {exc.message}", exc.lineno)]
        ) from None
    except jinja2.UndefinedError as exc:
        where, line = _template_frame(exc) or (name, None)
        raise ContentError(
            [Problem(where, f"template uses an undefined value: {exc.message}", line)]
        ) from None
    except (
        ArithmeticError,
        LookupError,
        TypeError,
        ValueError,
    ) as exc:  # e.g. {{ 1 // 0 }}, a bad filter argument
        where, line = _template_frame(exc) or (name, None)
        raise ContentError([Problem(where, f"template failed: {type(exc).__name__}: {exc}", line)]) from None


def _template_frame(exc: BaseException) -> tuple[str, int] | None:
    """The innermost template file and line in a traceback (Jinja maps frames back to template lines)."""
    found = None
    traceback = exc.__traceback__
    while traceback is not None:
        filename = traceback.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = (filename, traceback.tb_lineno)
        traceback = traceback.tb_next
    return found


class Renderer:
    """Renders issues with one template environment, so checking many files compiles templates once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = environment(settings.path(settings.newsletter.templates_dir))

    def render(self, issue_file: IssueFile) -> RenderedIssue:
        """Render an issue once: MJML compiled to HTML, the text part, both split at their placeholders."""
        issue = issue_file.issue
        template, context = self._issue_template(issue_file)
        rendered = self._render_mail(
            template, issue_file.slug, issue.subject, issue.preheader, context, issue_file.path
        )
        web = _render_template(self.env, WEB_CONTENT, context, issue_file.path)
        return dataclasses.replace(rendered, web=web, subject_variants=tuple(issue.subject_variants))

    def mjml(self, issue_file: IssueFile) -> str:
        """The issue's MJML before it is compiled: what another MJML engine (the JavaScript CLI that
        bench/startup.py compares with) would be given."""
        template, context = self._issue_template(issue_file)
        return _render_template(self.env, f"{template}.mjml.j2", context, issue_file.path)

    def _issue_template(self, issue_file: IssueFile) -> tuple[str, dict[str, Any]]:
        """The template an issue is rendered with, and what it sees."""
        # A welcome step is not in the archive: nothing to view in a browser.
        links = {"archive": None if issue_file.welcome else archive_url(self.settings, issue_file.slug)}
        context = _context(self.settings, issue=issue_file.issue, links=links)
        return issue_file.issue.template or self.settings.newsletter.default_template, context

    def render_single(self, template: str, subject: str, preheader: str, **specific: Any) -> RenderedIssue:
        """A mail that is not an issue (the signup confirmation): the same context, MJML step and checks."""
        context = _context(self.settings, issue={"subject": subject, "preheader": preheader}, **specific)
        source = self.settings.path(self.settings.newsletter.templates_dir) / f"{template}.mjml.j2"
        return self._render_mail(template, template, subject, preheader, context, source)

    def _render_mail(
        self, template: str, slug: str, subject: str, preheader: str, context: dict[str, Any], source: Path
    ) -> RenderedIssue:
        """``template``'s MJML and text parts rendered with ``context``; errors name ``source``."""
        mjml_source = _render_template(self.env, f"{template}.mjml.j2", context, source)
        text = _render_template(self.env, f"{template}.txt.j2", context, source)
        where = f"templates/{template}.mjml.j2"
        try:
            # No web fonts: MJML would link Google Fonts for Roboto in the font stack, a third-party
            # request on every open (which Gmail strips anyway); the stack falls back to system fonts.
            html_out = mjml2html(mjml_source, fonts={})
        except ValueError as exc:
            raise ContentError([Problem(where, f"MJML: {exc}")]) from None
        if len(_PLACEHOLDER.findall(html_out)) != len(_PLACEHOLDER.findall(mjml_source)):
            raise ContentError([Problem(where, "MJML dropped a personalisation placeholder")])
        return RenderedIssue(
            slug=slug,
            subject=subject,
            preheader=preheader,
            html=SplitTemplate.parse(html_out),
            text=SplitTemplate.parse(_tidy_text(text)),
        )


def render(issue_file: IssueFile, settings: Settings) -> RenderedIssue:
    """Render one issue (see ``Renderer`` to render several with one environment)."""
    return Renderer(settings).render(issue_file)


def _tidy_text(text: str) -> str:
    """At most one blank line in a row and no trailing spaces: templates needn't fuss over whitespace."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


def personalise(rendered: RenderedIssue, fields: PersonalFields) -> PersonalisedMessage:
    """One recipient's copy: the rendered issue with their few values substituted (HTML-escaped in HTML)."""
    raw = fields._asdict()
    escaped = {name: html.escape(value) for name, value in raw.items()}
    return PersonalisedMessage(rendered.subject, rendered.html.fill(escaped), rendered.text.fill(raw))
