"""What a subscriber may change about themself: their name and their topics (the tags segments use).

Topics are derived from segments.toml, so the forms offer exactly the tags that decide who gets
what; other tags (set by imports or the operator) are never shown and never touched. A change is
logged in the consent log as ``updated`` with the fields that changed, never their values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from pipeline.audience.fields import NAME_LENGTH, is_control
from pipeline.audience.segments import Segments
from pipeline.audience.subscribers import event_row
from pipeline.errors import AudienceError
from pipeline.store.engine import Store, utcnow
from pipeline.store.tables import subscriber_events, subscriber_tags, subscribers


@dataclass(frozen=True, slots=True)
class Topic:
    tag: str
    label: str


def topics(segments: Segments) -> tuple[Topic, ...]:
    """Every tag a segment selects on (``tags.all`` and ``tags.any``), in the file's order, once each."""
    tags: dict[str, None] = {}
    for name in segments:
        rule = segments[name].rule
        tags.update(dict.fromkeys([*rule.tags.all, *rule.tags.any]))
    return tuple(Topic(tag, tag.replace("-", " ").replace("_", " ").capitalize()) for tag in tags)


def clean_name(raw: object) -> str | None:
    """A name as typed, without control characters or runs of spaces; None when empty.

    The forms clean where an import refuses (``fields.check_name``): the same characters, the same length.
    """
    if not isinstance(raw, str):
        return None
    kept = "".join(ch for ch in raw if ch.isspace() or not is_control(ch))
    text = " ".join(kept.split())  # line breaks, tabs and runs of spaces become one space
    return text[:NAME_LENGTH].strip() or None


def update_profile(
    store: Store,
    subscriber_id: int,
    *,
    name: str | None,
    chosen: Iterable[str],
    offered: Iterable[str],
    actor: str,
) -> list[str]:
    """Set the name and the ``offered`` topics to ``chosen`` (other tags kept); returns what changed."""
    offered_set = set(offered)
    chosen_set = set(chosen) & offered_set
    now = utcnow()
    with store.write() as conn:
        row = conn.execute(
            select(subscribers.c.name).where(subscribers.c.id == subscriber_id).with_for_update()
        ).first()
        if row is None:
            raise AudienceError(f"no subscriber {subscriber_id!r}")
        mine = subscriber_tags.c.subscriber_id == subscriber_id
        current = set(conn.scalars(select(subscriber_tags.c.tag).where(mine)))
        wanted = (current - offered_set) | chosen_set
        changed = []
        if name != row.name:
            changed.append("name")
        if wanted != current:
            changed.append("tags")
            if current - wanted:
                conn.execute(delete(subscriber_tags).where(mine, subscriber_tags.c.tag.in_(current - wanted)))
            if wanted - current:
                added = [{"subscriber_id": subscriber_id, "tag": tag} for tag in sorted(wanted - current)]
                conn.execute(insert(subscriber_tags), added)
        if changed:
            conn.execute(
                update(subscribers).where(subscribers.c.id == subscriber_id).values(name=name, updated_at=now)
            )
            event = event_row(subscriber_id, "updated", actor, at=now, detail={"fields": changed})
            conn.execute(insert(subscriber_events), event)
    return changed
