"""Commands for editors: check, render and scaffold issue files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from rich.text import Text

from pipeline.cli.context import CliContext, console, pass_context, shown
from pipeline.content.issue import issue_paths, load_issue
from pipeline.content.scaffold import new_issue
from pipeline.errors import Severity
from pipeline.recipient import Recipient
from pipeline.render.links import Links
from pipeline.render.lint import SAMPLE_RECIPIENT, check_paths
from pipeline.render.renderer import render as render_issue
from pipeline.render.single import preview
from pipeline.tokens import PREVIEW_ID, Signer, load_secret_key


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option(
    "--spam",
    is_flag=True,
    help="Also score each issue's message with SpamAssassin's local rules (about a second more).",
)
@pass_context
def check(ctx: CliContext, paths: tuple[Path, ...], strict: bool, spam: bool) -> None:
    """Check issue files before they are sent: schema, links, alt text, size, footer.

    PATHS are files or folders (default: every file in issues/). Prints one line per problem as
    FILE:LINE:COL: severity: FIELD: message, then a summary. Exits 1 on errors (or warnings with
    --strict), so it can guard commits and CI.

    With --spam, each issue's message as a campaign sends it goes through SpamAssassin
    (`spamassassin -L -t`, no network): every rule that adds points is a warning at the field
    holding the text it matched. SpamAssassin takes about a second to start, so it is opt-in;
    one run scores every file. Without SpamAssassin installed, a note says so and how to install it.
    """
    settings = ctx.settings
    issues = issue_paths(paths, settings.path(settings.newsletter.issues_dir))
    report = check_paths(issues, settings, spam=spam)
    for problem in report.problems:
        colour = "red" if problem.severity is Severity.ERROR else "yellow"
        console.print(Text(str(problem), style=colour), soft_wrap=True)
    for note in report.notes:
        console.print(Text(note, style="dim"), soft_wrap=True)
    summary = f"{report.files} file{'s' * (report.files != 1)} checked: {report.errors} error(s), {report.warnings} warning(s)"
    console.print(f"[bold {'red' if report.failed(strict) else 'green'}]{summary}[/]")
    if report.failed(strict):
        raise SystemExit(1)


@click.command()
@click.argument("issue", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("rendered"),
    show_default=True,
    help="Folder for the .html, .txt and .eml files.",
)
@click.option(
    "--to", "email", default=SAMPLE_RECIPIENT.email, show_default=True, help="Sample recipient's address."
)
@click.option("--name", default=SAMPLE_RECIPIENT.name, show_default=True, help="Sample recipient's name.")
@pass_context
def render(ctx: CliContext, issue: Path, out_dir: Path, email: str, name: str) -> None:
    """Render ISSUE as a subscriber gets it: HTML, plain text and a complete .eml.

    The copy is personalised for a sample recipient (--to, --name), with preview links that change
    nothing for anybody. Open the .html in a browser, or the .eml in a mail client, to review the
    issue before it is sent.
    """
    settings = ctx.settings
    issue_file = load_issue(issue)
    rendered = render_issue(issue_file, settings)
    recipient = Recipient(PREVIEW_ID, email, name or None)
    copy = preview(settings, rendered, recipient, Links(settings, Signer(load_secret_key(settings))))
    # A welcome step's slug is welcome/NN-slug: its files go to a welcome/ folder, as its source is.
    (out_dir / issue_file.slug).parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, content in ((".html", copy.html), (".txt", copy.text), (".eml", copy.eml)):
        path = out_dir / f"{issue_file.slug}{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        written.append(path)
    console.print(f"Rendered [bold]{issue_file.issue.subject}[/] for {email}:")
    for path in written:
        console.print(f"  {shown(path)}  ({path.stat().st_size / 1024:.1f} KB)", soft_wrap=True)


@click.command()
@click.argument("title")
@click.option(
    "--date",
    "date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Send date, YYYY-MM-DD.  [default: a week after the newest issue]",
)
@pass_context
def new(ctx: CliContext, title: str, date: dt.datetime | None) -> None:
    """Start a new issue called TITLE: writes issues/DATE-slug.yaml with every section.

    Each section has a comment saying what goes there. Never overwrites an existing file.
    """
    settings = ctx.settings
    path = new_issue(title, settings.path(settings.newsletter.issues_dir), date.date() if date else None)
    console.print(f"Created {shown(path)}")
    console.print(f"Fill in the TODOs, then run: newsletter check {shown(path)}", soft_wrap=True)
