"""`newsletter bounces`: read the bounce mailbox once and say what it held."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.text import Text

from pipeline.cli.context import CliContext, console, console_err, pass_context
from pipeline.feedback.bounces import BounceRun, ProgressCallback, describe, read_mailbox, summary
from pipeline.store.engine import open_store

PROGRESS_FROM = 500
"""Fewer messages than this are read too fast for a progress bar to help."""


@contextmanager
def _progress() -> Iterator[ProgressCallback]:
    """A progress bar that appears once the mailbox turns out to hold many messages (on a terminal)."""
    if not console_err.is_terminal:
        yield lambda _done, _total: None
        return
    with Progress(
        TextColumn("reading bounces"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console_err,
        transient=True,
    ) as bar:
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if total < PROGRESS_FROM:
                return
            if not task:
                task.append(bar.add_task("bounces", total=total))
            bar.update(task[0], completed=done, total=total)

        yield update


@click.command("bounces")
@pass_context
def bounces(ctx: CliContext) -> None:
    """Read the bounce mailbox: bounces and spam complaints sent back by mailbox providers.

    Reads bounces.mailbox (the [bounces.imap] account, password from IMAP_PASSWORD, or a Maildir or
    mbox at bounces.path). Delivery status notifications (RFC 3464) and feedback reports (ARF, RFC
    5965) are tied to the message they are about (its VERP token when bounces.return_path is set)
    and recorded like SendGrid's events: hard bounces and complaints change the person's status,
    soft bounces count, and bounces.soft_bounce_limit of them in a row make a bounce; `newsletter
    report` and the health guard count them. What was read moves to bounces.processed_folder, so a
    second run counts nothing twice; mail that is no report stays where it is and is listed.
    """
    settings = ctx.settings
    with open_store(settings) as store, _progress() as progress:
        run = read_mailbox(store, settings, on_progress=progress)
    print_run(run)


def print_run(run: BounceRun) -> None:
    console.print(Text(summary(run)), soft_wrap=True)
    if run.read and run.elapsed > 0:
        console.print(f"  in {run.elapsed:.2f} s ({run.read / run.elapsed:,.0f} messages/s)")
    for campaign_id, reason in run.paused:
        console.print(Text(f"  campaign #{campaign_id} {reason}", style="yellow"), soft_wrap=True)
    if run.unknown:
        console.print(Text(f"  left in {run.where} for a person to read:", style="yellow"))
        for unread in run.unknown:
            console.print(Text(f"    {describe(unread)}"), soft_wrap=True)
