"""``newsletter new`` and the starter project's first issue: one skeleton with a comment on what goes
where, filled with TODOs for a new issue or with real text for the sample."""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

from pipeline.content.issue import FILE_NAME, NextStep, Resource, Story, Strategy
from pipeline.errors import ContentError, Problem

SKELETON = """\
# {title}
# Text fields are Markdown: **bold**, *emphasis*, [a link](https://example.org).
# Check it with `newsletter check {shown}`; see it with `newsletter render {shown}`.

# The inbox subject line: specific and kind; at most 60 characters shows in full on a phone.
subject: {subject}
# Optional: one or two other subjects to test; the one more readers click goes to most of the list.
# subject_variants:
#   - "Another way to say it"
# The grey preview line after the subject (40-140 characters): add to the subject, don't repeat it.
preheader: {preheader}
# The day this issue is sent (the scheduler sends it then, at the configured time).
date: {date}

# Optional: a short, warm opener after "Hi <first name>,".
intro: {intro}

# Optional image under the masthead. alt describes it for screen readers and blocked images.
# hero:
#   src: https://news.example.org/images/{slug}.jpg
#   alt: "TODO: what the picture shows"

strategy:
  # The strategy of the week: one idea, explained simply.
  title: {strategy_title}
  body: {strategy_body}
  # Optional: three or four concrete steps.
  steps:{steps}

story:
  # A real story from a reader, in her words, shown as a quote. Ask permission; first names only.
  title: {story_title}
  body: {story_body}
  attribution: {attribution}

# One to three small actions for this week. A link turns into a button labelled link_text.
next_steps:{next_steps}

# Optional: books, podcasts, communities. kind is book, podcast, article, community, service or video.
resources:{resources}
"""


class Draft(NamedTuple):
    """What fills the skeleton: the issue's sections without its date (the file is dated when written)."""

    subject: str
    preheader: str
    intro: str
    strategy: Strategy
    story: Story
    next_steps: list[NextStep]
    resources: list[Resource]


def _todo_draft(title: str) -> Draft:
    """A new issue called ``title``: every section there, each a TODO that `newsletter check` flags."""
    title = title.replace('"', "'")
    return Draft(
        subject=title[:70],
        preheader="TODO: one sentence that makes a tired parent want to open this.",
        intro="TODO: set the scene in two or three sentences.",
        strategy=Strategy(
            title=title,
            body="TODO: two or three short paragraphs. Why it helps, and what it looks like on a busy Tuesday.",
            steps=["TODO: a first small step.", "TODO: a second small step."],
        ),
        story=Story(
            title="TODO: a title for the story",
            body="TODO: one or two paragraphs, first person, specific.",
            attribution="TODO: first name, job, family (e.g. Maya, nurse and mom of two)",
        ),
        next_steps=[NextStep(text="TODO: one thing to try this week.")],
        resources=[
            Resource(title="TODO: title", by="TODO: author or host", kind="book", url="https://example.org")
        ],
    )


def _line(text: str) -> str:
    """One line as a YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(text, ensure_ascii=False)


def _block(text: str, indent: int) -> str:
    """Markdown as a YAML literal block (``|``), its lines indented ``indent`` spaces."""
    pad = " " * indent
    return "|\n" + "\n".join(pad + line if line.strip() else "" for line in text.splitlines())


def _items(entries: list[list[str]], indent: int) -> str:
    """A YAML list after its key: each entry's lines under a ``-`` (the first) or aligned with it."""
    if not entries:
        return " []"
    pad = " " * indent
    return "".join(
        f"\n{pad}- {lines[0]}" + "".join(f"\n{pad}  {line}" for line in lines[1:]) for lines in entries
    )


def _next_step(step: NextStep) -> list[str]:
    lines = [f"text: {_line(step.text)}"]
    if step.link is None:
        return [*lines, "# link: https://example.org", '# link_text: "Try it"']
    lines.append(f"link: {_line(step.link)}")
    return lines + ([f"link_text: {_line(step.link_text)}"] if step.link_text else [])


def issue_text(draft: Draft, date: dt.date, shown: str) -> str:
    """The issue file for ``draft``, dated ``date``; ``shown`` is its path as the editor types it."""
    strategy, story = draft.strategy, draft.story
    return SKELETON.format(
        title=strategy.title,
        shown=shown,
        subject=_line(draft.subject),
        preheader=_line(draft.preheader),
        date=date.isoformat(),
        intro=_block(draft.intro, 2),
        slug=slugify(strategy.title),
        strategy_title=_line(strategy.title),
        strategy_body=_block(strategy.body, 4),
        steps=_items([[_line(step)] for step in strategy.steps], 4),
        story_title=_line(story.title),
        story_body=_block(story.body, 4),
        attribution=_line(story.attribution or ""),
        next_steps=_items([_next_step(step) for step in draft.next_steps], 2),
        resources=_items(
            [
                [f"title: {_line(r.title)}", f"by: {_line(r.by)}", f"kind: {r.kind}", f"url: {_line(r.url)}"]
                for r in draft.resources
            ],
            2,
        ),
    )


def slugify(title: str) -> str:
    """ASCII, lower-case, hyphenated: safe in file names and URLs."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_title.lower()).strip("-")
    return slug[:60].rstrip("-") or "issue"


def next_issue_date(issues_dir: Path, today: dt.date) -> dt.date:
    """A week after the newest issue, or today when there is none (or the newest is long past)."""
    dates = [
        dt.date.fromisoformat(match["date"])
        for path in issues_dir.glob("*.yaml")
        if (match := FILE_NAME.match(path.stem))
    ]
    return max([*(d + dt.timedelta(days=7) for d in dates), today])


def issue_name(draft: Draft, date: dt.date) -> str:
    """``DATE-slug.yaml``, the slug made from the strategy's title."""
    return f"{date.isoformat()}-{slugify(draft.strategy.title)}.yaml"


def write_issue(draft: Draft, issues_dir: Path, date: dt.date) -> Path:
    """Write ``draft`` as ``issues_dir/DATE-slug.yaml`` and return the path; refuses to overwrite."""
    path = issues_dir / issue_name(draft, date)
    text = issue_text(draft, date, f"{issues_dir.name}/{path.name}")
    issues_dir.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ContentError(
            [Problem(str(path), "already exists; not overwritten (choose another title or date)")]
        ) from None
    return path


def new_issue(
    title: str, issues_dir: Path, date: dt.date | None = None, *, today: dt.date | None = None
) -> Path:
    """Write a scaffolded issue file and return its path; refuses to overwrite."""
    if not title.strip():
        raise ContentError([Problem(str(issues_dir), "the title must not be empty")])
    date = date or next_issue_date(issues_dir, today or dt.date.today())
    return write_issue(_todo_draft(title), issues_dir, date)
