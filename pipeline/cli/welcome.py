"""`newsletter welcome`: the welcome series at a glance (its steps, who is at which, what is due next).

Only click at the top: the store and the dispatch stage are imported when the command runs, so
`newsletter --help` and `check` never load them.
"""

from __future__ import annotations

import click

from pipeline.cli.context import CliContext, console, pass_context


@click.command("welcome")
@click.option(
    "--people", default=20, show_default=True, help="Show this many of the latest to join (0: none)."
)
@pass_context
def welcome(ctx: CliContext, people: int) -> None:
    """The welcome series: each step with what it sent, who is at which step, and what is due next.

    Steps are the files of issues/welcome/ (NN-slug.yaml, each with `after: 3d`), timed from when a
    reader joined: on confirming their signup, or added with `subscribers add|import --welcome`.
    `newsletter run` sends each step on its reader's day, at most schedule.catch_up_hours late
    (readers it came too late for are counted as missed). Times are in the schedule's time zone.
    Exits 1 while any step has recipients in doubt (`campaigns resolve` decides about them).
    """
    from rich.table import Table

    from pipeline.cli.schedule import _ago, _when
    from pipeline.cli.subscribers import shown_text
    from pipeline.content.issue import after_text
    from pipeline.dispatch.welcome import overview
    from pipeline.schedule.localtime import schedule_zone
    from pipeline.store.engine import open_store, utcnow
    from pipeline.store.statuses import DeliveryStatus

    settings = ctx.settings
    tz = schedule_zone(settings)
    with open_store(settings) as store:
        view = overview(store, settings, utcnow(), people=people)
    live = sum(n for n in view.at_step.values())
    console.print(
        f"Welcome series: {sum(s.step is not None for s in view.steps)} step file(s); {view.joined:,} "
        f"joined, {live:,} still in it; a step goes at most {view.window.total_seconds() / 3600:g} h late."
    )
    if not view.steps:
        console.print(
            "No steps yet: write issues/welcome/01-slug.yaml with `after: 0d` (see `newsletter check`)."
        )
    table = Table(
        "step",
        "after",
        "campaign",
        "sent",
        "in doubt",
        "failed",
        "skipped",
        "due now",
        "upcoming",
        "missed",
        box=None,
    )
    for state in view.steps:
        counts, step = state.counts, state.step
        if step is None:
            after = "[yellow]file gone[/]"
        elif step.after is None:
            after = "[red]unreadable[/]"
        else:
            after = after_text(step.after)
        campaign = f"#{state.campaign.id} {state.campaign.status}" if state.campaign else "-"
        shown = (DeliveryStatus.SENT, DeliveryStatus.IN_DOUBT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED)
        table.add_row(
            state.slug,
            after,
            campaign,
            *(f"{counts[status]:,}" for status in shown),
            f"{state.due_now:,}",
            f"{state.upcoming:,}",
            f"{state.missed:,}",
        )
        if step is not None and step.problem:
            table.add_row("", f"[red]{step.problem}[/]", end_section=True)
    if view.steps:
        console.print(table)
    if live:
        order = {state.slug: n for n, state in enumerate(view.steps)}
        ordered = sorted(view.at_step.items(), key=lambda item: order.get(item[0], -1) if item[0] else -1)
        positions = ", ".join(f"{slug or 'before the first step'}: {n:,}" for slug, n in ordered)
        console.print(f"At each step (their latest): {positions}")
    if view.next_due:
        moment, slug = view.next_due
        when = "now" if moment <= view.now else f"{_when(moment, tz)} (in {_ago(moment - view.now)})"
        console.print(f"Next due: {slug}, {when}")
    elif view.steps:
        console.print("Next due: nothing; nobody in the series is waiting for a step")
    if view.readers:
        readers = Table(
            "email",
            "joined",
            "at step",
            "next step",
            "due",
            title="Latest to join",
            title_justify="left",
            box=None,
        )
        for reader in view.readers:
            due = _when(reader.next_at, tz) if reader.next_at else ""
            next_step = "[yellow]left the series[/]" if reader.left else reader.next_step or "done"
            readers.add_row(
                shown_text(reader.email), _when(reader.enrolled_at, tz), reader.at_step or "-", next_step, due
            )
        console.print(readers)
    if view.in_doubt:
        console.print(
            f"[yellow]{view.in_doubt:,} recipient(s) in doubt[/]: decide with "
            "`newsletter campaigns resolve ID --resend` or `--mark-sent`"
        )
        raise SystemExit(1)
