"""The ``newsletter`` command: thin wrappers that parse arguments, call the library and print.

Library code raises ``PipelineError``; here it becomes one clean error message and exit status 1.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import click
from rich.text import Text

from pipeline import __version__
from pipeline.cli.context import CliContext, console_err
from pipeline.errors import PipelineError


class Entry(NamedTuple):
    """Where a command lives and its one-line help, so `newsletter --help` lists every command without
    importing any of them (a test keeps ``summary`` equal to the command's own first docstring line)."""

    target: str
    summary: str


COMMANDS = {
    "bounces": Entry(
        "pipeline.cli.bounces:bounces",
        "Read the bounce mailbox: bounces and spam complaints sent back by mailbox providers.",
    ),
    "campaigns": Entry(
        "pipeline.cli.sending:campaigns_group",
        "List campaigns with their counts; subcommands show, pause, resume, cancel and resolve one.",
    ),
    "check": Entry(
        "pipeline.cli.issues:check",
        "Check issue files before they are sent: schema, links, alt text, size, footer.",
    ),
    "db": Entry(
        "pipeline.cli.subscribers:db",
        "The store's schema: see its migration revision, or bring it up to date.",
    ),
    "dns": Entry(
        "pipeline.cli.dns:dns",
        "Print the DNS records (SPF, DKIM, DMARC) the sender's domain must publish, from the settings.",
    ),
    "init": Entry(
        "pipeline.cli.init:init",
        "Start a newsletter in DIR: settings, a sample issue, segments, and checks for git and CI.",
    ),
    "new": Entry(
        "pipeline.cli.issues:new",
        "Start a new issue called TITLE: writes issues/DATE-slug.yaml with every section.",
    ),
    "preview": Entry(
        "pipeline.cli.preview:preview",
        "Preview issues live in the browser: desktop, phone, dark mode, text part and check's problems.",
    ),
    "render": Entry(
        "pipeline.cli.issues:render",
        "Render ISSUE as a subscriber gets it: HTML, plain text and a complete .eml.",
    ),
    "report": Entry(
        "pipeline.cli.web:report",
        "What became of CAMPAIGN: sent, delivered, bounced, complained, unsubscribed, opened, clicked.",
    ),
    "run": Entry(
        "pipeline.cli.schedule:run",
        "Send each issue on its date at schedule.time, exactly once; keep running until stopped.",
    ),
    "segments": Entry(
        "pipeline.cli.subscribers:segments",
        "List the segments of subscribers/segments.toml with how many people each matches.",
    ),
    "send": Entry(
        "pipeline.cli.sending:send", "Send ISSUE to its segments, in rate-limited, resumable batches."
    ),
    "serve": Entry(
        "pipeline.cli.web:serve",
        "Run the subscriber-facing web service: unsubscribe, preferences, signup, archive, SendGrid webhook.",
    ),
    "status": Entry(
        "pipeline.cli.schedule:status",
        "The scheduler at a glance: next and last issue, due and missed ones, lease, campaigns in flight.",
    ),
    "subscribers": Entry(
        "pipeline.cli.subscribers:subscribers",
        "Manage the subscriber list: import, export, add, unsubscribe and erase people.",
    ),
    "templates": Entry(
        "pipeline.cli.templates:templates",
        "The packaged templates: see which the project overrides, copy one into it to edit.",
    ),
    "welcome": Entry(
        "pipeline.cli.welcome:welcome",
        "The welcome series: each step with what it sent, who is at which step, and what is due next.",
    ),
}
"""Every command by name. A command's module (and the libraries it needs) is imported only when that
command runs or shows its own help: `newsletter check` never loads the database or the web stack."""


def load_command(name: str) -> click.Command:
    module, _, attribute = COMMANDS[name].target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command), f"{COMMANDS[name].target} is not a click command"
    return command


class _Group(click.Group):
    """Loads commands from ``COMMANDS`` on demand; turns the library's errors into a clean exit
    instead of a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from ``COMMANDS``' summaries: listing them imports none."""
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name].summary) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            for line in str(exc).splitlines():
                located = ": error: " in line or ": warning: " in line  # already FILE:LINE: error: …
                text = Text(line) if located else Text.assemble(("error:", "bold red"), " ", line)
                console_err.print(text, soft_wrap=True)
            raise SystemExit(1) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(dir_okay=False),
    envvar="NEWSLETTER_SETTINGS",
    help="Settings file to use.  [default: ./settings.toml; env: NEWSLETTER_SETTINGS]",
)
@click.option("-v", "--verbose", count=True, help="Log more (-vv for debug output).")
@click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors.")
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, settings_path: str | None, verbose: int, quiet: bool) -> None:
    """Validate, render and send a newsletter whose issues are YAML files kept in git.

    New here? `newsletter init DIR` starts a newsletter. Then `newsletter new "Title"` drafts an issue,
    `newsletter preview` shows it live as you edit it, `newsletter check` checks it before you commit,
    and `newsletter render ISSUE` writes exactly what subscribers will get.
    """
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console_err, show_time=False, show_path=verbose > 1)],
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    ctx.obj = CliContext(settings_path)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=argv, prog_name="newsletter")
