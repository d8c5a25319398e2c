"""The URLs a message carries: signed unsubscribe and preferences links, the archive page.

Each link is signed for the recipient's id *and* address (``pipeline.tokens``), so it opens only that
person's page. Previews and [TEST] copies get preview links instead: they get forwarded, and a
forwarded copy must not unsubscribe anybody.
"""

from __future__ import annotations

from pipeline.recipient import PersonalFields, Recipient
from pipeline.settings import Settings
from pipeline.tokens import PREVIEW_ID, Signer

UNSUBSCRIBE = "unsubscribe"
PREFERENCES = "preferences"


def archive_url(settings: Settings, slug: str) -> str:
    """The issue's public page: the "view in browser" target, free of personal data."""
    return f"{settings.newsletter.base_url}/archive/{slug}"


class Links:
    def __init__(self, settings: Settings, signer: Signer) -> None:
        self.base_url = settings.newsletter.base_url
        self.fallback_name = settings.newsletter.first_name_fallback
        self.signer = signer
        self._unsubscribe_base = f"{self.base_url}/u/"
        self._preferences_base = f"{self.base_url}/preferences/"

    def unsubscribe(self, subscriber_id: int, email: str) -> str:
        return self._unsubscribe_base + self.signer.sign(UNSUBSCRIBE, subscriber_id, address=email)

    def preferences(self, subscriber_id: int, email: str) -> str:
        return self._preferences_base + self.signer.sign(PREFERENCES, subscriber_id, address=email)

    def personal_fields(self, recipient: Recipient) -> PersonalFields:
        """Everything that differs between two recipients' copies of an issue (once per recipient of a
        send: both links are signed in one call)."""
        email = recipient.email
        unsubscribe, preferences = self.signer.sign_pair(
            UNSUBSCRIBE, PREFERENCES, recipient.subscriber_id, address=email
        )
        return PersonalFields(
            recipient.first_name(self.fallback_name),
            email,
            self._unsubscribe_base + unsubscribe,
            self._preferences_base + preferences,
        )

    def preview_fields(self, recipient: Recipient) -> PersonalFields:
        """``recipient``'s values with preview links: the web pages say so, and change nothing for anybody."""
        return PersonalFields(
            first_name=recipient.first_name(self.fallback_name),
            email=recipient.email,
            unsubscribe_url=self.unsubscribe(PREVIEW_ID, ""),
            preferences_url=self.preferences(PREVIEW_ID, ""),
        )
