"""The URLs a message carries: signed unsubscribe and preferences links, the archive page, and the
recipient's token in tracked links (``pipeline.render.clicks``).

Each link is signed for the recipient's id *and* address (``pipeline.tokens``), so it opens only that
person's page. Previews and [TEST] copies get preview links instead: they get forwarded, and a
forwarded copy must not unsubscribe anybody.
"""

from __future__ import annotations

from pipeline.recipient import PersonalFields, Recipient, first_name
from pipeline.settings import Settings
from pipeline.tokens import PREVIEW_ID, LinkSigner, Signer

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"


def click_purpose(campaign_id: int) -> str:
    """What a click token is signed for: one campaign's links, so it counts nothing anywhere else, and
    opens no page at all (a forwarded link must not)."""
    return f"click:{campaign_id}"


def archive_url(settings: Settings, slug: str) -> str:
    """The issue's public page: the "view in browser" target, free of personal data."""
    return f"{settings.newsletter.base_url}/archive/{slug}"


class Links:
    def __init__(self, settings: Settings, signer: Signer, *, clicks_of: int | None = None) -> None:
        self.settings = settings
        self.base_url = settings.newsletter.base_url
        self.fallback_name = settings.newsletter.first_name_fallback
        self.signer = signer
        self.clicks_of = clicks_of
        """The campaign whose tracked links each recipient gets a token for; None: no tracked links."""
        self._purposes = (UNSUBSCRIBE, PREFERENCES) + (
            () if clicks_of is None else (click_purpose(clicks_of),)
        )
        self._sign = LinkSigner(signer, self._purposes)
        self._unsubscribe_base = f"{self.base_url}/u/"
        self._preferences_base = f"{self.base_url}/preferences/"

    def tracking(self, campaign_id: int) -> Links:
        """These links with a click token for ``campaign_id`` in every recipient's fields."""
        return Links(self.settings, self.signer, clicks_of=campaign_id)

    def unsubscribe(self, subscriber_id: int, email: str) -> str:
        return self._unsubscribe_base + self.signer.sign(UNSUBSCRIBE, subscriber_id, address=email)

    def preferences(self, subscriber_id: int, email: str) -> str:
        return self._preferences_base + self.signer.sign(PREFERENCES, subscriber_id, address=email)

    def personal_fields(self, recipient: Recipient) -> PersonalFields:
        """Everything that differs between two recipients' copies of an issue."""
        return self.fields(recipient.subscriber_id, recipient.email, recipient.name)

    def fields(self, subscriber_id: int, email: str, name: str | None) -> PersonalFields:
        """``personal_fields`` from the values themselves: a send calls it once per recipient, with all
        its tokens signed in one call."""
        tokens = self._sign(subscriber_id, email)
        return PersonalFields(
            first_name(name, self.fallback_name),
            email,
            self._unsubscribe_base + tokens[0],
            self._preferences_base + tokens[1],
            tokens[2] if len(tokens) > 2 else "",
        )

    def preview_fields(self, recipient: Recipient) -> PersonalFields:
        """``recipient``'s values with preview links: the web pages say so, and change nothing for anybody."""
        return PersonalFields(
            first_name=recipient.first_name(self.fallback_name),
            email=recipient.email,
            unsubscribe_url=self.unsubscribe(PREVIEW_ID, ""),
            preferences_url=self.preferences(PREVIEW_ID, ""),
            click_token=""
            if self.clicks_of is None
            else self.signer.sign(click_purpose(self.clicks_of), PREVIEW_ID),
        )
