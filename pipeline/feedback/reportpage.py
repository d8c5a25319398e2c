"""The report as one HTML page: a campaign's numbers, per segment and per link, its clicks hour by hour,
and the trends across issues, with charts drawn in the page (``pipeline.feedback.charts``).

One document serves both ``newsletter report ID --html FILE`` and the operator's page on the web
service (``/admin/reports/ID``): its stylesheet is inline and allowed by its hash in the page's own
Content-Security-Policy (a ``<meta>`` for the file, the same policy as a header on the web), which
allows nothing else: no script, no font, no image from anywhere, so opening it calls no network.
Templates are in ``templates/report/`` (a project's own file of the same name overrides one).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import jinja2
from markupsafe import Markup

from pipeline.feedback.charts import Chart, Series, bar_chart, line_chart
from pipeline.feedback.reports import FIRST_HOURS, Base, CampaignStats, rate
from pipeline.feedback.trends import IssueRate, Trends, Week
from pipeline.render.renderer import DARK, LIGHT, template_loader
from pipeline.settings import Settings
from pipeline.store.engine import utcnow

SHOWN = 26
"""Weeks and campaigns the trend charts show (the latest); the tables below them list every campaign."""


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def issue_label(issue: IssueRate) -> str:
    """An issue by the day its campaign started (``Nov 24``), else by its campaign (``#12``)."""
    return issue.started_at.strftime("%b %-d") if issue.started_at else f"#{issue.campaign_id}"


def hourly_chart(stats: CampaignStats) -> Markup:
    chart = Chart(
        "clicks-by-hour",
        f"People clicking for the first time, per hour, in the first {FIRST_HOURS} hours",
        tuple(f"{hour} h" for hour in range(FIRST_HOURS)),
        (Series("first clicks", tuple(float(n) for n in stats.hourly)),),
        label_every=6,
    )
    within = sum(stats.hourly)
    return bar_chart(
        chart,
        f"Hours since the campaign started; {within:,} of the {stats.whole.clicked.unique:,} "
        "people who clicked did so within them.",
    )


def issues_chart(issues: list[IssueRate], current: int | None) -> Markup:
    shown = issues[-SHOWN:]
    ids = [issue.campaign_id for issue in shown]
    chart = Chart(
        "click-rate-by-issue",
        "Click rate per issue",
        tuple(issue_label(issue) for issue in shown),
        (Series("click rate", tuple(issue.click_rate or 0.0 for issue in shown)),),
        percent=True,
        highlight=ids.index(current) if current in ids else None,
    )
    cut = f"The latest {SHOWN} campaigns. " if len(issues) > SHOWN else ""
    this = " The darker bar is this campaign." if chart.highlight is not None else ""
    return bar_chart(
        chart,
        f"{cut}Unique clickers per message delivered (or sent, for a campaign without delivery events).{this}",
    )


def audience_charts(weeks: list[Week]) -> tuple[Markup, Markup]:
    shown = weeks[-SHOWN:]
    labels = tuple(week.start.strftime("%b %-d") for week in shown)
    moves = Chart(
        "audience-by-week",
        "Joins and departures per week",
        labels,
        (
            Series("joins", tuple(float(w.joins) for w in shown)),
            Series("unsubscribes", tuple(float(w.unsubscribes) for w in shown)),
            Series("bounces", tuple(float(w.bounces) for w in shown)),
            Series("complaints", tuple(float(w.complaints) for w in shown)),
        ),
    )
    active = Chart(
        "active-by-week",
        "Active subscribers at the end of each week",
        labels,
        (Series("active subscribers", tuple(float(w.active) for w in shown)),),
    )
    cut = (
        f"The latest {SHOWN} weeks (UTC, from Monday). "
        if len(weeks) > SHOWN
        else "Weeks start on Monday (UTC). "
    )
    return (
        bar_chart(
            moves, cut + "A join is anyone who became active: added, imported, confirmed or back again."
        ),
        line_chart(active),
    )


class ReportPage:
    """Renders report pages for one project's settings (templates compiled once)."""

    def __init__(self, settings: Settings) -> None:
        self.env = jinja2.Environment(
            loader=template_loader(settings.path(settings.newsletter.templates_dir), "report"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(count=_count, percent=_percent)
        self.env.globals.update(
            newsletter=settings.newsletter,
            rate=rate,
            issue_label=issue_label,
            Base=Base,
            hourly_hours=FIRST_HOURS,
        )
        self.css = self.env.get_template("report.css.j2").render(colors=LIGHT, dark=DARK)
        digest = base64.b64encode(hashlib.sha256(self.css.encode("utf-8")).digest()).decode("ascii")
        self.csp = (
            f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'none'; "
            "form-action 'none'; base-uri 'none'"
        )
        """Only the inline stylesheet: what the file's ``<meta>`` says and the web pages send as a header
        (where ``frame-ancestors 'none'`` is added; a ``<meta>`` cannot carry it)."""

    def _render(self, template: str, **context: object) -> str:
        return self.env.get_template(template).render(css=Markup(self.css), csp=self.csp, **context)

    def campaign(
        self,
        stats: CampaignStats,
        trends: Trends,
        *,
        links: str | None = None,
        generated: dt.datetime | None = None,
    ) -> str:
        """The report of one campaign, then the trends; ``links`` is the URL prefix of other campaigns'
        pages (none in a file)."""
        moves, active = audience_charts(trends.weeks)
        return self._render(
            "campaign.html.j2",
            title=f"Campaign #{stats.campaign.id}",
            stats=stats,
            trends=trends,
            hourly=hourly_chart(stats),
            issues=issues_chart(trends.issues, stats.campaign.id),
            moves=moves,
            active=active,
            links=links,
            generated=generated or utcnow(),
        )

    def index(self, trends: Trends, *, links: str, generated: dt.datetime | None = None) -> str:
        """Every campaign, linked to its report under ``links``, and the trends."""
        moves, active = audience_charts(trends.weeks)
        return self._render(
            "index.html.j2",
            title="Reports",
            stats=None,
            trends=trends,
            issues=issues_chart(trends.issues, None),
            moves=moves,
            active=active,
            links=links,
            generated=generated or utcnow(),
        )
