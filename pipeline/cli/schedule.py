"""`newsletter run` (the weekly scheduler, long-running or one tick) and `newsletter status`."""

from __future__ import annotations

import datetime as dt
import logging

import click
from rich.table import Table

from pipeline.cli.context import CliContext, console, pass_context, stop_on_signals
from pipeline.feedback.bounces import tick_chore
from pipeline.schedule.localtime import zone
from pipeline.schedule.scheduler import Scheduler
from pipeline.schedule.status import Agenda, agenda
from pipeline.schedule.tickreport import TickReport
from pipeline.store.engine import open_store, utcnow
from pipeline.store.statuses import DeliveryStatus

SHOWN = (DeliveryStatus.QUEUED, DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.IN_DOUBT)
"""The ledger columns of `newsletter status`'s campaign table."""
COLOURS = {"failed": "red", "missed": "yellow", "unfinished": "yellow", "started": "green"}


def _when(moment: dt.datetime, tz_name: str) -> str:
    return moment.astimezone(zone(tz_name)).strftime("%a %Y-%m-%d %H:%M %Z")


def _ago(delta: dt.timedelta) -> str:
    seconds = abs(delta.total_seconds())
    text = f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
    return text if seconds < 172800 else f"{seconds / 86400:.1f} days"


def print_tick(report: TickReport, tz_name: str, *, quiet: bool = False) -> None:
    """What one tick did, a line per issue, for `run --once`; ``quiet`` prints only when it did
    something or something needs attention (so cron mails only then)."""
    if quiet and not report.outcomes and not report.in_doubt:
        return
    if report.waiting_for_lease and report.holder is not None:
        console.print(
            f"Another scheduler holds the lease ({report.holder.holder}, until "
            f"{_when(report.holder.expires_at, tz_name)}): nothing done."
        )
        return
    for outcome in report.outcomes:
        if outcome.action == "sent" and outcome.run is not None:
            run = outcome.run
            done = ", ".join(f"{n:,} {s.replace('_', ' ')}" for s, n in sorted(run.counts.items()) if n)
            stopped = f" (stopped: {run.why})" if run.stopped else ""
            console.print(
                f"{outcome.slug}: campaign #{outcome.campaign_id}: {done or 'nothing due'}; "
                f"[bold]{run.campaign.status}[/]{stopped}"
            )
        else:
            colour = COLOURS.get(outcome.action, "")
            label = f"[{colour}]{outcome.action}[/]" if colour else outcome.action
            console.print(f"{outcome.slug}: {label}: {outcome.detail}")
    if not report.outcomes:
        console.print("Nothing due.")
    for campaign_id, slug, count in report.in_doubt:
        console.print(
            f"{slug}: campaign #{campaign_id}: [yellow]{count:,} in doubt[/]: decide with "
            f"`newsletter campaigns resolve {campaign_id} --resend` or `--mark-sent`"
        )
    if report.next_slot:
        slot = report.next_slot
        console.print(f"Next: {slot.slug}, due {_when(slot.due_at, tz_name)}.")


@click.command("run")
@click.option(
    "--once",
    is_flag=True,
    help="Do one tick (resume, catch up, send what is due) and exit: for cron or a systemd timer.",
)
@pass_context
def run(ctx: CliContext, once: bool) -> None:
    """Send each issue on its date at schedule.time, exactly once; keep running until stopped.

    Every schedule.tick_seconds it resumes unfinished campaigns and starts the issues that are due,
    through the same code as `newsletter send`. An issue found more than schedule.catch_up_hours late
    (the scheduler was down) is recorded missed, not sent by surprise. Only one instance acts at a
    time (a lease in the store); others wait. SIGTERM or Ctrl-C finishes the batches in flight and
    exits cleanly. With --once the exit status is 1 if something failed, was missed or is in doubt,
    and with -q it prints only when it did something (for cron). With bounces.every_tick it also
    reads the bounce mailbox on every tick, as `newsletter bounces` does.
    """
    settings = ctx.settings
    tz_name = settings.schedule.timezone or settings.newsletter.timezone
    with open_store(settings) as store, stop_on_signals() as stop:
        chores = {"bounces": tick_chore(store, settings)} if settings.bounces.every_tick else None
        scheduler = Scheduler(store, settings, stop=stop, chores=chores)
        if not once:
            scheduler.run_forever()
            return
        report = scheduler.run_once()
    print_tick(report, tz_name, quiet=logging.getLogger().getEffectiveLevel() > logging.INFO)
    if not report.ok:
        raise SystemExit(1)


@click.command("status")
@pass_context
def status(ctx: CliContext) -> None:
    """The scheduler at a glance: next and last issue, due and missed ones, lease, campaigns in flight.

    Exits 1 while any campaign has recipients in doubt (`campaigns resolve` decides about them).
    """
    settings = ctx.settings
    with open_store(settings) as store:
        view = agenda(store, settings, utcnow())
    print_agenda(view)
    if any(state.counts[DeliveryStatus.IN_DOUBT] for state in view.campaigns):
        raise SystemExit(1)


def print_agenda(view: Agenda) -> None:
    tz, now = view.zone, view.now
    if view.lease is None:
        console.print("Scheduler: [yellow]not running[/] (it never ran against this store)")
    elif view.lease.holder_gone:
        console.print(
            f"Scheduler: [yellow]not running[/] ({view.lease.holder} died; the next `newsletter run` "
            "takes over at once)"
        )
    elif view.lease.expired(now):
        console.print(
            f"Scheduler: [yellow]not running[/] (last {view.lease.holder}, stopped or silent since "
            f"{_when(view.lease.expires_at, tz)}, {_ago(now - view.lease.expires_at)} ago)"
        )
    else:
        console.print(
            f"Scheduler: [green]running[/] as {view.lease.holder} (lease until {_when(view.lease.expires_at, tz)})"
        )
    if view.next_slot:
        slot = view.next_slot
        console.print(
            f"Next run: {slot.slug} → {', '.join(slot.segments)}, due {_when(slot.due_at, tz)} (in {_ago(slot.due_at - now)})"
        )
    else:
        console.print("Next run: [yellow]no issue file dated in the future[/]")
    if view.next_gap:
        console.print(f"  [yellow]no issue for {view.next_gap:%a %Y-%m-%d}[/] yet (`newsletter new`)")
    if view.last_started:
        last = view.last_started
        console.print(
            f"Last run: {last.issue_slug}, due {_when(last.due_at, tz)}, campaign #{last.campaign_id}"
        )
    for slot in view.due:
        console.print(f"[bold]Due now[/]: {slot.slug} (due {_when(slot.due_at, tz)}): the next tick sends it")
    for slot in view.overdue:
        console.print(
            f"[yellow]Overdue[/]: {slot.slug} (due {_when(slot.due_at, tz)}): past catch-up; will be recorded missed"
        )
    for decision in view.missed:
        console.print(f"[yellow]Missed[/]: {decision.issue_slug}: {decision.detail or ''}")
    if not view.campaigns:
        return
    table = Table(
        "id",
        "issue",
        "status",
        "queued",
        "sent",
        "failed",
        "in doubt",
        "waiting for",
        title="Campaigns in progress or in doubt",
        title_justify="left",
    )
    for state in view.campaigns:
        c, counts = state.campaign, state.counts
        waiting = ", ".join(f"{n:,} at {_when(at, 'UTC')}" for at, n in state.waiting[:4])
        if len(state.waiting) > 4:
            waiting += f", … ({len(state.waiting)} times)"
        if state.handed_ahead:
            waiting = (
                waiting + "; " if waiting else ""
            ) + f"{state.handed_ahead:,} scheduled at the provider"
        table.add_row(
            str(c.id),
            c.issue_slug,
            c.status,
            *(f"{counts[s]:,}" for s in SHOWN),
            waiting or "-",
        )
    console.print(table)
