"""``newsletter new``: a fresh issue file with every section and a comment on what goes where."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from pathlib import Path

from pipeline.content.issue import FILE_NAME
from pipeline.errors import ContentError, Problem

TEMPLATE = """\
# {title}
# Text fields are Markdown: **bold**, *emphasis*, [a link](https://example.org).
# Check it with `newsletter check {shown}`; see it with `newsletter render {shown}`.

# The inbox subject line: specific and kind; at most 60 characters shows in full on a phone.
subject: "{subject}"
# The grey preview line after the subject (40-140 characters): add to the subject, don't repeat it.
preheader: "TODO: one sentence that makes a tired parent want to open this."
# The day this issue is sent (the scheduler sends it then, at the configured time).
date: {date}

# Optional: a short, warm opener after "Hi <first name>,".
intro: |
  TODO: set the scene in two or three sentences.

# Optional image under the masthead. alt describes it for screen readers and blocked images.
# hero:
#   src: https://news.example.org/images/{slug}.jpg
#   alt: "TODO: what the picture shows"

strategy:
  # The strategy of the week: one idea, explained simply.
  title: "{title}"
  body: |
    TODO: two or three short paragraphs. Why it helps, and what it looks like on a busy Tuesday.
  # Optional: three or four concrete steps.
  steps:
    - "TODO: a first small step."
    - "TODO: a second small step."

story:
  # A real story from a reader, in her words, shown as a quote. Ask permission; first names only.
  title: "TODO: a title for the story"
  body: |
    TODO: one or two paragraphs, first person, specific.
  attribution: "TODO: first name, job, family (e.g. Maya, nurse and mom of two)"

# One to three small actions for this week. A link turns into a button labelled link_text.
next_steps:
  - text: "TODO: one thing to try this week."
    # link: https://example.org
    # link_text: "Try it"

# Optional: books, podcasts, communities. kind is book, podcast, article, community, service or video.
resources:
  - title: "TODO: title"
    by: "TODO: author or host"
    kind: book
    url: https://example.org
"""


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


def new_issue(
    title: str, issues_dir: Path, date: dt.date | None = None, *, today: dt.date | None = None
) -> Path:
    """Write a scaffolded issue file and return its path; refuses to overwrite."""
    if not title.strip():
        raise ContentError([Problem(str(issues_dir), "the title must not be empty")])
    date = date or next_issue_date(issues_dir, today or dt.date.today())
    slug = slugify(title)
    path = issues_dir / f"{date.isoformat()}-{slug}.yaml"
    text = TEMPLATE.format(
        title=title.replace('"', "'"),
        subject=title.replace('"', "'")[:70],
        date=date.isoformat(),
        slug=slug,
        shown=f"{issues_dir.name}/{path.name}",
    )
    issues_dir.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ContentError(
            [Problem(str(path), "already exists; not overwritten (choose another title or date)")]
        ) from None
    return path
