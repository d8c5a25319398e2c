"""Commands for the subscriber list (``subscribers``), its segments (``segments``) and the store (``db``).

Each command parses its arguments, calls one library function and prints the result; errors from the
library reach the top-level group, which prints them and exits 1. What people typed into a form or a
CSV is printed through ``shown_text``: as plain text (never rich markup) with control characters
escaped, so a name can neither colour nor retitle the operator's terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from pipeline.audience.exporter import Format, export_subscribers
from pipeline.audience.fields import visible
from pipeline.audience.importer import ImportResult, import_csv
from pipeline.audience.segments import load_segments
from pipeline.audience.selection import count, explain, member_count
from pipeline.audience.subscribers import (
    NEW_STATUSES,
    Subscriber,
    add_subscriber,
    erase,
    get_subscriber,
    list_subscribers,
    subscriber_log,
    unsubscribe,
)
from pipeline.cli.context import CliContext, console, console_err, pass_context, shown
from pipeline.errors import Problem
from pipeline.render.addresses import refusal
from pipeline.store.engine import Store, head_revision, open_store
from pipeline.store.statuses import SubscriberStatus

WELCOME_HELP = "Enroll the new (active) people in the welcome series of issues/welcome/, timed from now."
PROGRESS_FROM_BYTES = 1_000_000
"""Files smaller than this import too fast for a progress bar to help."""
SHOWN_PROBLEMS = 20


@contextmanager
def _store(ctx: CliContext, *, migrate: bool = True) -> Iterator[Store]:
    store = open_store(ctx.settings, migrate=migrate)
    try:
        yield store
    finally:
        store.close()


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else ""


def shown_text(value: str) -> Text:
    """Stored subscriber text for the terminal: no markup, control characters escaped (``\\x1b``)."""
    return Text(visible(value, None))


@click.group()
def subscribers() -> None:
    """Manage the subscriber list: import, export, add, unsubscribe and erase people.

    The list lives in the store (settings: store.url; SQLite under var/ by default). An address is one
    person whatever its letter case. People who unsubscribed, bounced or complained are never sent to
    and never brought back by an import; erased addresses can never be added again.
    """


@contextmanager
def _progress(size: int) -> Iterator[Callable[[int, int], None] | None]:
    if size < PROGRESS_FROM_BYTES or not console_err.is_terminal:
        yield None
        return
    columns = (TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console_err, transient=True) as bar:
        task = bar.add_task("import", total=size)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_import(file: Path, result: ImportResult) -> None:
    console.print(
        f"{shown(file)}: {result.added} added, {result.updated} updated, {result.unchanged} unchanged, "
        f"{result.rejected} rejected, {result.suppressed} suppressed",
        soft_wrap=True,
    )
    for label, problems in (("rejected", result.problems), ("skipped", result.skipped)):
        for problem in problems[:SHOWN_PROBLEMS]:
            console_err.print(Text(f"{label}: {problem}", style="yellow"), soft_wrap=True)
        if len(problems) > SHOWN_PROBLEMS:
            console_err.print(f"… and {len(problems) - SHOWN_PROBLEMS} more {label}", style="yellow")
    _print_warnings(result.warnings)


def _print_warnings(warnings: list[Problem]) -> None:
    for warning in warnings[:SHOWN_PROBLEMS]:
        console_err.print(Text(str(warning), style="yellow"), soft_wrap=True)
    if len(warnings) > SHOWN_PROBLEMS:
        console_err.print(f"… and {len(warnings) - SHOWN_PROBLEMS} more warnings", style="yellow")


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Add this tag to every imported person.")
@click.option(
    "--status",
    type=click.Choice([str(s) for s in NEW_STATUSES]),
    help="Status of new people whose row has no status column.  [default: active]",
)
@click.option("--update", is_flag=True, help="Update name, tags, attributes and time zone of known people.")
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows even if some rows are invalid.")
@click.option(
    "--rejects",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the invalid rows here, as CSV with a reason column.",
)
@click.option("--welcome", is_flag=True, help=WELCOME_HELP)
@pass_context
def import_(
    ctx: CliContext,
    file: Path,
    tags: tuple[str, ...],
    status: str | None,
    update: bool,
    skip_invalid: bool,
    rejects: Path | None,
    welcome: bool,
) -> None:
    """Import people from a CSV FILE (UTF-8, comma or semicolon separated).

    The header names the columns: email (required), name, tags (separated by |), timezone (IANA, e.g.
    Europe/Berlin) and status; any other column becomes an attribute that segments can use. One bad
    row and nothing is imported (every bad row is listed), unless --skip-invalid. Addresses on the
    suppression list and people who left are skipped and counted as suppressed. Addresses the
    configured transport cannot send to (a local part outside ASCII) are imported with a warning.
    An import enrolls nobody in the welcome series unless --welcome, which enrolls the active people
    it adds (never those already in the store).
    """
    transport = ctx.settings.delivery.transport
    with _store(ctx) as store, _progress(file.stat().st_size) as progress:
        result = import_csv(
            store,
            file,
            tags=tags,
            status=status,
            update=update,
            skip_invalid=skip_invalid,
            rejects=rejects,
            progress=progress,
            undeliverable=lambda address: refusal(transport, address),
            welcome=welcome,
        )
    _print_import(file, result)
    if welcome:
        console.print(f"{result.enrolled} enrolled in the welcome series")


@subscribers.command("list")
@click.option("--segment", "segments", multiple=True, metavar="NAME", help="Only people in this segment.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([str(s) for s in SubscriberStatus]),
    help="Only this status.",
)
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0: all).")
@pass_context
def list_(ctx: CliContext, segments: tuple[str, ...], statuses: tuple[str, ...], limit: int) -> None:
    """List subscribers in the order they joined, as a table."""
    with _store(ctx) as store:
        people = list_subscribers(store, segments=segments or None, statuses=statuses, limit=limit or None)
    table = Table("id", "email", "name", "status", "tags", "timezone", "joined", box=None)
    for column in table.columns[1:]:
        column.overflow = "fold"  # wrap, never cut an address short
    for person in people:
        table.add_row(
            str(person.id),
            shown_text(person.email),
            shown_text(person.name or ""),
            person.status,
            shown_text(", ".join(person.tags)),
            shown_text(person.timezone or ""),
            person.created_at.date().isoformat(),
        )
    console.print(table)
    console.print(f"{len(people)} shown", style="dim")


def _fields(person: Subscriber) -> Table:
    table = Table(show_header=False, box=None)
    rows = {
        "id": str(person.id),
        "email": person.email,
        "name": person.name or "",
        "status": person.status,
        "tags": ", ".join(person.tags),
        "timezone": person.timezone or "",
        "source": person.source,
        "joined": _when(person.created_at),
        "confirmed": _when(person.confirmed_at),
        "unsubscribed": _when(person.unsubscribed_at),
        **{f"attributes.{key}": str(value) for key, value in sorted(person.attributes.items())},
    }
    for key, value in rows.items():
        table.add_row(Text(visible(key, None), style="bold"), shown_text(value))
    return table


@subscribers.command()
@click.argument("email")
@pass_context
def show(ctx: CliContext, email: str) -> None:
    """Show one subscriber: fields, tags, attributes and the log of consent events."""
    with _store(ctx) as store:
        person = get_subscriber(store, email)
        events = subscriber_log(store, person.id)
    console.print(_fields(person))
    log = Table("when", "event", "status", "by", "detail", title="events", title_justify="left", box=None)
    for event in events:
        change = f"{event.from_status or ''} → {event.to_status}" if event.to_status else ""
        detail = json.dumps(event.detail) if event.detail else ""
        log.add_row(_when(event.at), event.kind, change, shown_text(event.actor), shown_text(detail))
    console.print(log)


@subscribers.command()
@click.argument("email")
@click.option("--name", help="The person's name (the first word greets them).")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag; repeat for several.")
@click.option("--timezone", help="IANA time zone, such as Europe/Berlin.")
@click.option(
    "--status", type=click.Choice([str(s) for s in NEW_STATUSES]), default="active", show_default=True,
    help="unconfirmed people get nothing until they confirm.",
)  # fmt: skip
@click.option("--welcome", is_flag=True, help=WELCOME_HELP)
@pass_context
def add(
    ctx: CliContext,
    email: str,
    name: str | None,
    tags: tuple[str, ...],
    timezone: str | None,
    status: str,
    welcome: bool,
) -> None:
    """Add one person who asked to subscribe (an existing or erased address is refused).

    The name has the import's rules; an address the configured transport cannot take gets a warning.
    With --welcome they join the welcome series now (`newsletter welcome` shows it); unconfirmed
    people join it when they confirm.
    """
    with _store(ctx) as store:
        person = add_subscriber(
            store, email, name=name, tags=tags, status=status, timezone=timezone, welcome=welcome
        )
    joined = ", in the welcome series" if welcome else ""
    console.print(
        shown_text(f"added {person.email} (id {person.id}, {person.status}{joined})"), soft_wrap=True
    )
    why = refusal(ctx.settings.delivery.transport, person.email)
    if why is not None:
        console_err.print(
            shown_text(f"warning: email: '{person.email}' {why}"), style="yellow", soft_wrap=True
        )


@subscribers.command("unsubscribe")
@click.argument("email")
@pass_context
def unsubscribe_(ctx: CliContext, email: str) -> None:
    """Unsubscribe EMAIL now; they are never sent to again unless they subscribe themselves."""
    with _store(ctx) as store:
        changed = unsubscribe(store, email)
        status = get_subscriber(store, email).status
    console.print(
        f"{email}: unsubscribed" if changed else f"{email}: already {status}; nothing changed", soft_wrap=True
    )


@subscribers.command("export")
@click.option(
    "--format",
    "format_",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv re-imports with `subscribers import`; json is an array of objects, streamed.",
)
@click.option("--segment", "segments", multiple=True, metavar="NAME", help="Only people in this segment.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here, not to standard output.",
)
@pass_context
def export(ctx: CliContext, format_: Format, segments: tuple[str, ...], output: Path | None) -> None:
    """Export subscribers (all statuses, or a segment) as CSV that imports back, or as JSON.

    The CSV has email,name,tags,timezone,status and one column per attribute. Rows are streamed, so
    exporting a million people needs little memory.
    """
    with _store(ctx) as store:
        if output is None:
            written = export_subscribers(store, sys.stdout, format=format_, segments=segments or None)
        else:
            with output.open("w", encoding="utf-8", newline="") as out:
                written = export_subscribers(store, out, format=format_, segments=segments or None)
    console_err.print(
        f"exported {written} subscriber(s)" + (f" to {shown(output)}" if output else ""), soft_wrap=True
    )


@subscribers.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def erase_(ctx: CliContext, email: str, yes: bool) -> None:
    """Erase EMAIL for good (GDPR): the person, their tags and personal data are deleted.

    Their consent log is kept without personal details, and a keyed hash of the address goes on the
    suppression list so no later import or sign-up can add them back.
    """
    if not yes:
        click.confirm(f"Erase {email} and everything about them? This cannot be undone", abort=True)
    with _store(ctx) as store:
        erasure = erase(store, email)
    if erasure.subscriber_id is None:
        console.print(
            f"{email}: not a subscriber; the address is now suppressed so it can never be added",
            soft_wrap=True,
        )
    else:
        console.print(
            f"erased subscriber {erasure.subscriber_id}; the address is suppressed for good", soft_wrap=True
        )


@click.group(invoke_without_command=True)
@click.pass_context
def segments(click_ctx: click.Context) -> None:
    """List the segments of subscribers/segments.toml with how many people each matches.

    "members" counts everyone the rule matches; "recipients" counts who an issue would go to (active
    and not suppressed). Use `segments show NAME` for one segment's rule and SQL.
    """
    if click_ctx.invoked_subcommand is not None:
        return
    ctx = click_ctx.find_object(CliContext)
    assert ctx is not None
    with _store(ctx) as store:
        assert store.segments_file is not None
        defined = load_segments(store.segments_file)
        table = Table("segment", "members", "recipients", "description", box=None)
        for name, segment in defined.items():
            table.add_row(
                name, str(member_count(store, segment)), str(count(store, segment)), segment.rule.description
            )
    console.print(table)


@segments.command("show")
@click.argument("name")
@pass_context
def show_segment(ctx: CliContext, name: str) -> None:
    """Show segment NAME: its rule, the SQL that selects its recipients, and the counts."""
    with _store(ctx) as store:
        assert store.segments_file is not None
        segment = load_segments(store.segments_file)[name]
        rule = segment.rule.model_dump(
            mode="json", by_alias=True, exclude_defaults=True, exclude={"description"}
        )
        console.print(Text(name, style="bold"), Text(segment.rule.description, style="dim"))
        console.print(Text(f"rule: {json.dumps(rule, ensure_ascii=False)}"), soft_wrap=True)
        console.print(Text(explain(store, segment)), soft_wrap=True)
        console.print(f"members: {member_count(store, segment)}  recipients: {count(store, segment)}")


@click.group()
def db() -> None:
    """The store's schema: see its migration revision, or bring it up to date.

    Other commands migrate the store on first use; `db upgrade` does it explicitly (e.g. at deploy).
    """


@db.command("upgrade")
@pass_context
def db_upgrade(ctx: CliContext) -> None:
    """Run every pending migration, then print the revision the store is at."""
    with _store(ctx, migrate=False) as store:
        revision = store.upgrade()
        console.print(f"{store.url}: at revision {revision} (newest)", soft_wrap=True)


@db.command("current")
@pass_context
def db_current(ctx: CliContext) -> None:
    """Print the store's migration revision and whether it is the newest."""
    with _store(ctx, migrate=False) as store:
        current = store.current_revision()
        head = head_revision()
        state = "newest" if current == head else f"newest is {head}: run `newsletter db upgrade`"
        console.print(
            f"{store.url}: at revision {current or 'none (empty database)'} ({state})", soft_wrap=True
        )
