"""The ``newsletter`` command: thin wrappers that parse arguments, call the library and print.

Library code raises ``PipelineError``; here it becomes one clean error message and exit status 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click
from rich.logging import RichHandler
from rich.text import Text

from pipeline import __version__
from pipeline.cli.bounces import bounces
from pipeline.cli.context import CliContext, console_err
from pipeline.cli.dns import dns
from pipeline.cli.issues import check, new, render
from pipeline.cli.schedule import run, status
from pipeline.cli.sending import campaigns_group, send
from pipeline.cli.subscribers import db, segments, subscribers
from pipeline.cli.web import report, serve
from pipeline.errors import PipelineError


class _Group(click.Group):
    """Turns the library's errors into a clean exit instead of a traceback."""

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

    Start with `newsletter new "Title"` to draft an issue, `newsletter check` before committing it,
    and `newsletter render ISSUE` to see exactly what subscribers will get.
    """
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console_err, show_time=False, show_path=verbose > 1)],
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    ctx.obj = CliContext(settings_path)


for command in (check, render, new, send, subscribers, segments, db):
    cli.add_command(command)
cli.add_command(campaigns_group, "campaigns")
cli.add_command(run)
cli.add_command(status)
cli.add_command(serve)
cli.add_command(report)
cli.add_command(bounces)
cli.add_command(dns)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=argv, prog_name="newsletter")
