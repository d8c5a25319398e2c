"""Commands for the web service and what it learns: ``serve`` runs it, ``report`` shows a campaign's fate."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from pipeline.cli.context import CliContext, console, pass_context

if TYPE_CHECKING:
    from pipeline.dispatch.subjects import Verdict
    from pipeline.feedback.reports import CampaignStats, Count


@click.command()
@click.option("--host", default=None, help="Address to listen on.  [default: web.host]")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port.  [default: web.port]")
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Proxies whose X-Forwarded-For is trusted for the client address (comma-separated, or *).",
)
@pass_context
def serve(ctx: CliContext, host: str | None, port: int | None, forwarded_allow_ips: str) -> None:
    """Run the subscriber-facing web service: unsubscribe, preferences, signup, archive, SendGrid webhook.

    Put a TLS-terminating proxy in front of it and set newsletter.base_url to the public URL.
    Stop it with Ctrl-C.
    """
    from pipeline.store import checkpoints
    from pipeline.store.engine import open_store
    from pipeline.web import create_app, server  # Starlette and uvicorn load only for this command

    settings = ctx.settings
    with open_store(settings) as store:
        app = create_app(settings, store)
        host, port = host or settings.web.host, port or settings.web.port
        console.print(
            f"Serving {settings.newsletter.name} on http://{host}:{port} (public: {settings.newsletter.base_url})"
        )
        # uvicorn shuts down gracefully on Ctrl-C, then passes it on: for `serve` that is a normal stop.
        with contextlib.suppress(KeyboardInterrupt), checkpoints.in_background(store):
            server(app, host, port, forwarded_allow_ips=forwarded_allow_ips).run()
    console.print("Stopped.")


def _count(count: Count) -> str:
    return f"{count.unique:,} ({count.total:,})"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _print_test(verdict: Verdict, chosen: int | None) -> None:
    table = Table(
        "subject",
        "sample",
        "sent",
        "clicked",
        "click rate",
        "95 % interval",
        title="Subject test",
        title_justify="left",
        caption="clicked: unique readers of the sample; the interval is Wilson's",
    )
    for variant in verdict.variants:
        low, high = variant.interval()
        mark = " [bold](winner)[/]" if chosen == variant.place and verdict.significant else ""
        table.add_row(
            f"{variant.subject}{mark}",
            f"{variant.sample:,}",
            f"{variant.sent:,}",
            f"{variant.clickers:,}",
            f"{variant.rate:.1%}",
            f"{low:.1%} to {high:.1%}",
        )
    console.print(table)
    if chosen is None:
        console.print(f"  not decided yet; as it stands: {verdict.summary()}")
    else:
        console.print(f"  {verdict.summary()}")


def _print_table(stats: CampaignStats) -> None:
    from pipeline.feedback.reports import Base

    c = stats.campaign
    console.print(f"Campaign #{c.id}: [bold]{c.subject}[/] ({c.issue_slug}) · status: [bold]{c.status}[/]")
    table = Table(
        "segment",
        "sent",
        "delivered",
        "bounced",
        "complained",
        "unsubscribed",
        "opened",
        "clicked",
        "click rate",
        caption=f"opened and clicked: unique people (total events); click rate: unique clickers per message "
        f"{stats.base}; opens are unreliable (Apple Mail Privacy Protection fetches every message's images)",
    )
    for row in stats.rows:
        table.add_row(
            f"[bold]{row.segment}[/]" if row is stats.whole else row.segment,
            f"{row.sent:,}",
            f"{row.delivered:,}",
            f"{row.bounced:,}",
            f"{row.complained:,}",
            f"{row.unsubscribed:,}",
            _count(row.opened),
            _count(row.clicked),
            _percent(row.click_rate(stats.base)),
        )
    console.print(table)
    if stats.base is Base.SENT:
        console.print(
            "No delivery events for this campaign (no SendGrid webhook): rates are of messages sent."
        )
    for name in stats.missing_segments:
        console.print(f"[yellow]segment {name} is no longer in segments.toml: no row for it[/]")


@click.command()
@click.argument("campaign_id", metavar="CAMPAIGN", type=int)
@click.option("--top", default=10, show_default=True, type=click.IntRange(0, 100), help="Links to list.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write the report, with its charts, as one self-contained HTML file (--top links in it).",
)
@pass_context
def report(ctx: CliContext, campaign_id: int, top: int, html_file: Path | None) -> None:
    """What became of CAMPAIGN: sent, delivered, bounced, complained, unsubscribed, opened, clicked.

    One row per segment (membership judged by the segment's rule today) and one for the whole
    campaign; opens and clicks as unique people (total events), and the click rate: unique clickers
    per message delivered (or sent, when no delivery was reported). Then the most clicked links.
    Delivery, opens and clicks come from SendGrid's Event Webhook (`newsletter serve`).

    With --html FILE, the same and more in one HTML file that loads nothing from anywhere: clicks
    per hour over the first 72 hours, and across issues the click rate of each and the subscribers
    who joined, unsubscribed and bounced week by week, as charts.
    """
    from pipeline.feedback.reports import campaign_stats  # the store loads only for this command
    from pipeline.store.engine import open_store

    with open_store(ctx.settings) as store:
        stats = campaign_stats(store, campaign_id, top=top)
        page = ""
        if html_file is not None:
            from pipeline.feedback.reportpage import ReportPage
            from pipeline.feedback.trends import trends

            page = ReportPage(ctx.settings).campaign(stats, trends(store))
    _print_table(stats)
    if stats.test is not None:
        _print_test(stats.test, stats.campaign.winner)
    if stats.links:
        links = Table("clicks", "people", "click rate", "link", title="Top links", title_justify="left")
        for link in stats.links:
            links.add_row(f"{link.clicks:,}", f"{link.unique:,}", _percent(stats.link_rate(link)), link.url)
        console.print(links)
    elif top:
        console.print("No clicks reported.")
    if html_file is not None:
        try:
            html_file.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"{html_file}: {exc.strerror or exc}") from None
        console.print(f"Wrote the HTML report to {html_file} ({len(page.encode()) / 1024:,.0f} KB).")
