"""The URLs a message carries: signed unsubscribe and preferences links, the archive page."""

from __future__ import annotations

from pipeline.recipient import PersonalFields, Recipient
from pipeline.settings import Settings
from pipeline.tokens import Signer

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

    def unsubscribe(self, subscriber_id: int) -> str:
        return f"{self.base_url}/u/{self.signer.sign(UNSUBSCRIBE, subscriber_id)}"

    def preferences(self, subscriber_id: int) -> str:
        return f"{self.base_url}/preferences/{self.signer.sign(PREFERENCES, subscriber_id)}"

    def personal_fields(self, recipient: Recipient) -> PersonalFields:
        """Everything that differs between two recipients' copies of an issue."""
        return PersonalFields(
            first_name=recipient.first_name(self.fallback_name),
            email=recipient.email,
            unsubscribe_url=self.unsubscribe(recipient.subscriber_id),
            preferences_url=self.preferences(recipient.subscriber_id),
        )
