"""What ``newsletter send`` does before the loop: check the issue, size the audience, find or start
its campaign."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.audience import selection
from pipeline.content.issue import IssueFile
from pipeline.dispatch import campaigns, subjects
from pipeline.errors import ContentError, DispatchError, Severity
from pipeline.render.links import Links
from pipeline.render.lint import check_issue
from pipeline.render.renderer import RenderedIssue, Renderer
from pipeline.settings import Settings
from pipeline.store.engine import Store


@dataclass(frozen=True, slots=True)
class SendPlan:
    issue_file: IssueFile
    rendered: RenderedIssue
    segments: tuple[str, ...]
    counts: dict[str, int]
    """Live recipients per segment (a person in two segments is counted in each)."""
    total: int
    """Distinct recipients of all the segments together: the ledger rows a new campaign would get."""
    campaign: campaigns.Campaign | None
    """The campaign this issue and these segments already have, which sending resumes."""
    already: int = 0
    """Of ``total``, people another campaign of this issue already reached: a new campaign skips them."""
    test: subjects.SubjectTest | None = None
    """The subject test a new campaign would run (checked against ``total``: it can)."""


def checked_issue(path: Path, settings: Settings, links: Links) -> tuple[IssueFile, RenderedIssue]:
    """Load, lint and render an issue; refuse (``ContentError``) if `newsletter check` finds errors."""
    checked = check_issue(path, Renderer(settings), links)
    errors = [p for p in checked.problems if p.severity is Severity.ERROR]
    if errors or checked.issue_file is None or checked.rendered is None:
        raise ContentError(errors or checked.problems)
    return checked.issue_file, checked.rendered


def plan_send(
    store: Store,
    settings: Settings,
    path: Path,
    links: Links,
    segments: tuple[str, ...] = (),
    *,
    transport: str | None = None,
) -> SendPlan:
    """What sending the issue at ``path`` to ``segments`` through ``transport`` (default
    ``delivery.transport``) would do; ``DispatchError`` if its subject test cannot run."""
    issue_file, rendered = checked_issue(path, settings, links)
    if issue_file.welcome:
        raise DispatchError(
            f"{path}: a welcome step is sent by `newsletter run` to each reader on their day, not by "
            "`send` (`send --to ADDRESS` mails a test copy)"
        )
    chosen = tuple(segments or issue_file.issue.segments or settings.newsletter.default_segments)
    counts = {name: selection.count(store, [name]) for name in chosen}
    existing = campaigns.find_campaign(store, issue_file.slug, chosen)
    already = 0 if existing else campaigns.already_reached(store, issue_file.slug, chosen)
    total = selection.count(store, list(chosen))
    via = transport or settings.delivery.transport
    test = None if existing else subject_test(settings, rendered, via, total - already)
    return SendPlan(issue_file, rendered, chosen, counts, total, existing, already, test)


def subject_test(
    settings: Settings, rendered: RenderedIssue, transport: str, audience: int
) -> subjects.SubjectTest | None:
    """The issue's subject test for a campaign of ``audience`` people; ``DispatchError`` with the
    numbers if it cannot run (the campaign's creation checks again against its exact ledger)."""
    test = subjects.planned_test(rendered, settings, transport)
    why_not = None if test is None else subjects.refusal(test, audience)
    if why_not is not None:
        raise DispatchError(f"{rendered.slug}: {why_not}")
    return test


def start_campaign(store: Store, send_plan: SendPlan, transport: str) -> tuple[campaigns.Campaign, bool]:
    """The plan's campaign (planned for ``transport``): the existing one, or a new one with its
    audience frozen now."""
    if send_plan.campaign is not None:
        return send_plan.campaign, False
    return campaigns.create_campaign(
        store, send_plan.rendered, send_plan.segments, transport, test=send_plan.test
    )
