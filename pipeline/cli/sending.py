"""Commands for the operator: send an issue, and watch, pause, resume, cancel or resolve campaigns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pipeline.cli.context import CliContext, console, console_err, pass_context, shown, stop_on_signals
from pipeline.dispatch import campaigns, dispatcher, single, subjects
from pipeline.dispatch.campaigns import Campaign, CampaignReport
from pipeline.dispatch.dispatcher import RunEnd, RunReport
from pipeline.dispatch.plan import plan_send, start_campaign
from pipeline.render.links import Links
from pipeline.settings import TRANSPORTS, Settings
from pipeline.store.engine import Store, open_store
from pipeline.store.statuses import CampaignStatus, DeliveryStatus
from pipeline.transports import open_transport
from pipeline.transports.outbox import OutboxTransport

TRANSPORT_CHOICE = click.Choice(list(TRANSPORTS))
DONE = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED, DeliveryStatus.IN_DOUBT)
"""What a run's counts hold besides ``unsent`` (rows it gave back to the queue)."""
LISTED = (DeliveryStatus.QUEUED, *DONE)
"""The ledger columns of `newsletter campaigns`."""


def run_campaign(settings: Settings, store: Store, campaign: Campaign, transport: str | None) -> RunReport:
    """Send a running campaign with a progress bar; shared by `send` and `campaigns resume`."""
    report = campaigns.report(store, campaign.id)
    already = sum(report.counts[s] for s in DONE)
    columns = (
        TextColumn("[bold]#{task.fields[campaign]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent {task.fields[sent]} · failed {task.fields[failed]} · {task.fields[rate]}/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with stop_on_signals() as stop, Progress(*columns, console=console_err, transient=False) as progress:
        task = progress.add_task(
            "send", total=report.total, completed=already, campaign=campaign.id, sent=0, failed=0, rate=0
        )

        def on_progress(counts: Counter[str]) -> None:
            elapsed = max(progress.tasks[task].elapsed or 0.0, 1e-6)
            progress.update(
                task,
                completed=already + sum(counts[s] for s in DONE),
                sent=counts[DeliveryStatus.SENT],
                failed=counts[DeliveryStatus.FAILED],
                rate=f"{counts[DeliveryStatus.SENT] / elapsed:,.0f}",
            )

        return dispatcher.run_campaign(
            store, settings, campaign.id, transport=transport, stop=stop, on_progress=on_progress
        )


def _counts_line(counts: Counter[str]) -> str:
    return (
        ", ".join(f"{n:,} {status.replace('_', ' ')}" for status, n in sorted(counts.items()) if n)
        or "nothing"
    )


def print_in_doubt(report: CampaignReport) -> None:
    """What the operator must decide, if anything: said by every command that reports a campaign."""
    if report.in_doubt:
        console.print(
            f"  [yellow]{report.in_doubt:,} recipient(s) in doubt[/]: the transport may have accepted them. "
            f"Decide with `newsletter campaigns resolve {report.campaign.id} --resend` or `--mark-sent`."
        )


def exit_if_in_doubt(report: CampaignReport) -> None:
    """Exit 1 while any recipient of the campaign is in doubt: scripts and cron must notice."""
    if report.in_doubt:
        raise SystemExit(1)


def print_test_plan(test: subjects.SubjectTest, audience: int, settings: Settings) -> None:
    """What a new campaign's subject test will do, before the operator says yes."""
    size = subjects.sample_size(test, audience)
    console.print(
        f"Subject test: {len(test.subjects)} subjects, {size:,} people each (a random "
        f"{test.share:.0%}); after {settings.subject_tests.wait_hours:g} h the one more readers click "
        f"goes to the other {audience - size * len(test.subjects):,}:"
    )
    for place, subject in enumerate(test.subjects):
        console.print(f"  {place + 1}. {subject}")


def _print_test(store: Store, run: RunReport) -> None:
    """Where the campaign's subject test stands after this run, if it has one."""
    campaign = run.campaign
    if run.verdict is not None:
        console.print(f"  subject test: {run.verdict.summary()}")
    elif campaign.subjects and campaign.winner is None:
        due = subjects.rest_due(store, campaign.id)
        when = f"from {due:%Y-%m-%d %H:%M} UTC" if due else "once the samples are sent"
        console.print(
            f"  subject test: the samples are out; the winner goes to the rest {when} "
            "(`newsletter run` sends it, or this command again)"
        )


def print_report(settings: Settings, store: Store, run: RunReport) -> CampaignReport:
    """The end-of-run summary: what this run did, where the campaign stands, what needs a decision."""
    campaign = run.campaign
    report = campaigns.report(store, campaign.id)
    console.print(
        f"Campaign #{campaign.id} [bold]{campaign.issue_slug}[/] → {', '.join(campaign.segments)}: "
        f"[bold]{campaign.status}[/]"
    )
    console.print(f"  this run: {_counts_line(run.counts)} in {run.elapsed:.1f} s")
    if run.settled:
        console.print(f"  {run.settled:,} recipient(s) in doubt settled by the {campaign.transport}")
    console.print(f"  campaign: {_counts_line(report.counts)} of {report.total:,} recipients")
    _print_test(store, run)
    if run.stopped:
        after = (
            f" after the {run.in_flight_at_stop} batch(es) already in flight, which are recorded"
            if run.in_flight_at_stop
            else ""
        )
        console.print(f"  [yellow]stopped ({run.why}){after}; run the same command again to resume[/]")
    print_in_doubt(report)
    if campaign.transport == "outbox":
        folder = OutboxTransport(settings.path(settings.delivery.outbox_dir)).folder(
            campaign.id, campaign.issue_slug
        )
        console.print(f"  messages are in {shown(folder)}/")
    return report


@click.command()
@click.argument("issue", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--segment",
    "segments",
    multiple=True,
    help="Send to this segment (repeatable).  [default: the issue's, else settings']",
)
@click.option(
    "--transport", type=TRANSPORT_CHOICE, default=None, help="How to send.  [default: delivery.transport]"
)
@click.option("--dry-run", is_flag=True, help="Check and count recipients; send nothing, start no campaign.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--to", "test_to", metavar="ADDRESS", help="Send one test copy ([TEST] subject) to ADDRESS only."
)
@pass_context
def send(
    ctx: CliContext,
    issue: Path,
    segments: tuple[str, ...],
    transport: str | None,
    dry_run: bool,
    yes: bool,
    test_to: str | None,
) -> None:
    """Send ISSUE to its segments, in rate-limited, resumable batches.

    The issue is checked first (errors refuse the send). Running the same command again resumes the
    campaign for this issue and these segments: nobody gets it twice. Ctrl-C stops after the batches
    in flight are recorded.
    """
    settings = ctx.settings
    with open_store(settings) as store:
        links = Links(settings, store.signer)
        if test_to:
            outcome = single.send_test(
                store, settings, issue, test_to, open_transport(settings, transport), links
            )
            colour = "green" if outcome.status == "sent" else "red"
            console.print(
                f"Test copy to {test_to}: [{colour}]{outcome.status}[/] {outcome.error or ''}".rstrip()
            )
            if outcome.status != "sent":
                raise SystemExit(1)
            return
        chosen = transport or settings.delivery.transport
        plan = plan_send(store, settings, issue, links, segments, transport=chosen)
        console.print(f"[bold]{plan.issue_file.issue.subject}[/] ({plan.issue_file.slug})")
        table = Table("segment", "recipients")
        for name, count in plan.counts.items():
            table.add_row(name, f"{count:,}")
        table.add_row("[bold]all (each once)[/]", f"[bold]{plan.total:,}[/]")
        if plan.already:
            table.add_row("  of whom already sent this issue (skipped)", f"{plan.already:,}")
        console.print(table)
        if plan.test:
            print_test_plan(plan.test, plan.total - plan.already, settings)
        if plan.campaign:
            console.print(
                f"Campaign #{plan.campaign.id} already exists ({plan.campaign.status}): sending resumes it."
            )
        if dry_run:
            console.print("Dry run: nothing sent.")
            return
        if plan.campaign and plan.campaign.status in (
            CampaignStatus.FINISHED,
            CampaignStatus.CANCELLED,
            CampaignStatus.PAUSED,
        ):
            hint = {
                CampaignStatus.PAUSED: f"resume it with `newsletter campaigns resume {plan.campaign.id}`"
            }.get(plan.campaign.status, "nothing to send")
            console.print(f"Campaign #{plan.campaign.id} is {plan.campaign.status}: {hint}.")
            report = campaigns.report(store, plan.campaign.id)
            print_in_doubt(report)
            exit_if_in_doubt(report)
            return
        if plan.campaign is None and plan.total == 0:
            console.print(
                "Nobody to send to in these segments: no campaign started (import subscribers first?)."
            )
            raise SystemExit(1)
        open_transport(settings, chosen).close()  # a transport that cannot open freezes nothing
        if not yes and not click.confirm(
            f"Send to {plan.total - plan.already:,} recipients through {chosen}?", default=False
        ):
            raise click.Abort()
        campaign, _ = start_campaign(store, plan, chosen)
        run = run_campaign(settings, store, campaign, transport)
        report = print_report(settings, store, run)
        if run.end is RunEnd.TRANSPORT_UNAVAILABLE:
            raise SystemExit(1)
        exit_if_in_doubt(report)


@click.group(invoke_without_command=True)
@pass_context
@click.pass_context
def campaigns_group(click_ctx: click.Context, ctx: CliContext) -> None:
    """List campaigns with their counts; subcommands show, pause, resume, cancel and resolve one."""
    if click_ctx.invoked_subcommand is None:
        with open_store(ctx.settings) as store:
            table = Table(
                "id", "issue", "segments", "status", "queued", "sent", "failed", "skipped", "in doubt"
            )
            listed = campaigns.list_campaigns(store)
            for campaign, counts in listed:
                table.add_row(
                    str(campaign.id),
                    campaign.issue_slug,
                    ", ".join(campaign.segments),
                    campaign.status,
                    *(f"{counts[s]:,}" for s in LISTED),
                )
            console.print(table)
        undecided = [c.id for c, counts in listed if counts[DeliveryStatus.IN_DOUBT]]
        if undecided:
            console.print(
                f"[yellow]Recipients in doubt in campaign(s) {', '.join(f'#{i}' for i in undecided)}[/]: "
                "`newsletter campaigns show ID` says how many, `campaigns resolve ID` decides."
            )
            raise SystemExit(1)


@campaigns_group.command("show")
@click.argument("campaign_id", type=int)
@pass_context
def show(ctx: CliContext, campaign_id: int) -> None:
    """Counts of one campaign by ledger status, and its errors grouped by reason."""
    with open_store(ctx.settings) as store:
        report = campaigns.report(store, campaign_id)
        due = subjects.rest_due(store, campaign_id) if report.campaign.subjects else None
    c = report.campaign
    console.print(f"Campaign #{c.id}: [bold]{c.subject}[/] ({c.issue_slug})")
    if c.subjects:
        chosen = (
            f"the rest got subject {c.winner + 1}"
            if c.winner is not None
            else f"the winner goes to the rest from {due:%Y-%m-%d %H:%M} UTC"
            if due
            else "the winner is chosen once the samples are sent"
        )
        listed = "; ".join(f"{place + 1}. {subject}" for place, subject in enumerate(c.subjects))
        console.print(f"  subject test: {listed}; {chosen} (`newsletter report {c.id}` has the numbers)")
    console.print(
        f"  segments: {', '.join(c.segments)} · transport: {c.transport} · status: [bold]{c.status}[/]"
        + (f" ({c.status_reason})" if c.status_reason else "")
    )
    console.print(
        f"  created {c.created_at:%Y-%m-%d %H:%M} UTC"
        + (f", finished {c.finished_at:%Y-%m-%d %H:%M} UTC" if c.finished_at else "")
    )
    table = Table("status", "recipients")
    for status in DeliveryStatus:
        table.add_row(status.replace("_", " "), f"{report.counts[status]:,}")
        if status is DeliveryStatus.SENT and report.settled:
            table.add_row("  of which found sent after being in doubt", f"{report.settled:,}")
        if status is DeliveryStatus.SENT and report.marked_sent:
            table.add_row("  of which marked sent by the operator", f"{report.marked_sent:,}")
    table.add_row("[bold]total[/]", f"[bold]{report.total:,}[/]")
    console.print(table)
    if report.errors:
        errors = Table("status", "reason", "recipients", title="Why", title_justify="left")
        for row_status, reason, count in report.errors:
            errors.add_row(row_status.replace("_", " "), reason, f"{count:,}")
        console.print(errors)
    print_in_doubt(report)
    exit_if_in_doubt(report)


def _change(ctx: CliContext, campaign_id: int, action: str) -> campaigns.Campaign:
    with open_store(ctx.settings) as store:
        campaign = campaigns.change_status(store, campaign_id, action, reason=f"{action}d by the operator")
    console.print(f"Campaign #{campaign.id} is now {campaign.status}.")
    return campaign


@campaigns_group.command("pause")
@click.argument("campaign_id", type=int)
@pass_context
def pause(ctx: CliContext, campaign_id: int) -> None:
    """Pause a campaign: a running send stops after the batches in flight."""
    _change(ctx, campaign_id, "pause")


@campaigns_group.command("resume")
@click.argument("campaign_id", type=int)
@click.option(
    "--transport", type=TRANSPORT_CHOICE, default=None, help="How to send.  [default: the campaign's]"
)
@pass_context
def resume(ctx: CliContext, campaign_id: int, transport: str | None) -> None:
    """Resume a paused (or interrupted) campaign and send what is still queued."""
    settings = ctx.settings
    with open_store(settings) as store:
        campaign = campaigns.get_campaign(store, campaign_id)
        if campaign.status == CampaignStatus.PAUSED:
            campaign = campaigns.change_status(store, campaign_id, "resume")
        run = run_campaign(settings, store, campaign, transport)
        report = print_report(settings, store, run)
    if run.end is RunEnd.TRANSPORT_UNAVAILABLE:
        raise SystemExit(1)
    exit_if_in_doubt(report)


@campaigns_group.command("cancel")
@click.argument("campaign_id", type=int)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def cancel(ctx: CliContext, campaign_id: int, yes: bool) -> None:
    """Cancel a campaign: recipients still queued are marked cancelled and never sent."""
    if not yes and not click.confirm(
        f"Cancel campaign #{campaign_id}? This cannot be undone.", default=False
    ):
        raise click.Abort()
    _change(ctx, campaign_id, "cancel")


@campaigns_group.command("resolve")
@click.argument("campaign_id", type=int)
@click.option("--resend", "decision", flag_value="resend", help="Queue the in-doubt recipients again.")
@click.option("--mark-sent", "decision", flag_value="mark-sent", help="Record them as sent (never resend).")
@pass_context
def resolve(ctx: CliContext, campaign_id: int, decision: str | None) -> None:
    """Decide about recipients in doubt (a send stopped before their outcome was known).

    --resend risks a duplicate for those the transport had accepted; --mark-sent risks a miss for
    those it had not. Check the provider's activity log if you can, then choose.
    """
    if decision is None:
        raise click.UsageError("choose --resend or --mark-sent")
    with open_store(ctx.settings) as store:
        changed = campaigns.resolve_in_doubt(store, campaign_id, resend=decision == "resend")
    what = "queued again (send or `campaigns resume` to send them)" if decision == "resend" else "marked sent"
    console.print(f"{changed} in-doubt recipient(s) of campaign #{campaign_id} {what}.")
