"""The send path's quick forms keep their promises: tokens as before, requests as the API reads them,
the ledger's one-statement claim and record exact."""

from __future__ import annotations

import html
import pickle
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from pipeline.audience.subscribers import add_subscriber
from pipeline.dispatch import ledger
from pipeline.recipient import PersonalFields
from pipeline.render.links import Links
from pipeline.render.message import display_name
from pipeline.settings import Settings
from pipeline.store.engine import Store
from pipeline.store.statuses import DeliveryStatus
from pipeline.store.tables import deliveries
from pipeline.tokens import LinkSigner, Signer
from pipeline.transports.base import Batch, Outcome
from pipeline.transports.sendgrid import SendGridTransport, _display_name
from tests.emulators.sendgrid import SendGridEmulator
from tests.transport_helpers import make_batch, new_campaign

KEY = b"known-answer-key-0123456789abcdef"
SIGNED_BEFORE = [
    # Made by the Signer before tags were computed from copied hash states: links already in
    # people's mailboxes, which must keep opening.
    (("unsubscribe", 42, "ana@example.com"), "NDI.o47ldaZYoNmcP5f4SluQyA"),
    (("preferences", 1234567, "Zoë@bücher.de"), "MTIzNDU2Nw.QzhcPxcwL4MtyjNI7HzcKg"),
    (("unsubscribe", 0, ""), "MA.FYNGiwU3paRV8U-UkqrPbw"),
]
API_KEY = "SG.fast-paths"


@pytest.mark.parametrize(("signed", "token"), SIGNED_BEFORE)
def test_links_signed_before_still_sign_and_verify_the_same(signed: tuple[str, int, str], token: str) -> None:
    purpose, subscriber_id, address = signed
    signer = Signer(KEY)
    assert signer.sign(purpose, subscriber_id, address=address) == token
    assert signer.verify(purpose, token, address=address) == subscriber_id


def test_an_expiring_token_and_a_return_path_token_signed_before_are_unchanged() -> None:
    signer = Signer(KEY)
    assert signer.sign("confirm", 7, expires_at=1_800_000_000) == "Ny4xODAwMDAwMDAw.VB5nzq511sUSk6shIYFBhw"
    assert signer.sign_compact("bounce", 99, address="ana@example.com") == "mn6eq35hrudwfh5dkp5f4v4cvz7q"


@given(
    subscriber_id=st.integers(min_value=0, max_value=2**63),
    address=st.text(max_size=60),
    purposes=st.lists(
        st.sampled_from(["unsubscribe", "preferences", "click:1", "click:22"]), min_size=1, max_size=4
    ),
)
def test_signing_links_together_is_signing_each(
    subscriber_id: int, address: str, purposes: list[str]
) -> None:
    signer = Signer(KEY)
    together = LinkSigner(signer, tuple(purposes))(subscriber_id, address)
    assert together == [signer.sign(purpose, subscriber_id, address=address) for purpose in purposes]


@given(st.one_of(st.none(), st.text(max_size=40), st.text(alphabet=" ,;\t\u00a0\x00aZé", max_size=12)))
def test_the_quick_path_for_to_names_gives_what_the_general_one_gives(name: str | None) -> None:
    """SendGrid's ``to.name``: one clean line without ``,`` or ``;``, or none; most names are that already."""
    general = display_name((name or "").replace(",", " ").replace(";", " ")) or None
    assert _display_name(name) == general


def test_a_signer_sent_to_a_worker_process_signs_alike() -> None:
    signer = Signer(KEY)
    signer.sign("unsubscribe", 1, address="a@example.com")  # holds hash states now, which do not pickle
    copy = pickle.loads(pickle.dumps(signer))
    assert copy.sign("unsubscribe", 5, address="b@example.com") == signer.sign(
        "unsubscribe", 5, address="b@example.com"
    )


def test_links_sent_to_a_worker_process_sign_alike(settings: Settings) -> None:
    """A send's links hold a ``LinkSigner`` with the purposes' hash states: a worker gets them anew."""
    links = Links(settings, Signer(KEY)).tracking(7)
    copy = pickle.loads(pickle.dumps(links))
    assert copy.fields(5, "b@example.com", "Bo Lee") == links.fields(5, "b@example.com", "Bo Lee")
    assert (
        copy.fields(5, "b@example.com", None).click_token
        == links.fields(5, "b@example.com", None).click_token
        != ""
    )


@pytest.fixture
def emulator() -> Iterator[SendGridEmulator]:
    with SendGridEmulator(api_key=API_KEY) as emu:
        yield emu


HOSTILE_NAMES = [
    'Ada "A&B" Lovelace, Jr',
    "back\\slash; and more",
    "tab\there\nnewline",
    "nul\x00 esc\x1b[31m",
    "Zoë Ångström",
    "line\u2028separator",
    "O'Brien <b>",
    None,
]


def hostile_batch(settings: Settings, send_at: int | None) -> Batch:
    """A batch whose names and first names hold everything JSON or HTML escapes, and more."""
    batch = make_batch(settings, [f"reader{i}@example.com" for i in range(len(HOSTILE_NAMES))])
    envelopes = []
    for envelope, name in zip(batch.envelopes, HOSTILE_NAMES, strict=True):
        recipient = envelope.recipient._replace(name=name)
        first = (name or "").split(" ")[0] or "there"
        envelopes.append(
            envelope._replace(recipient=recipient, fields=envelope.fields._replace(first_name=first))
        )
    return Batch(batch.campaign_id, batch.rendered, batch.message, envelopes, send_at)


@pytest.mark.parametrize("send_at", [None, 1_900_000_000])
def test_a_request_written_as_text_reads_as_the_api_expects(settings: Settings, send_at: int | None) -> None:
    """Each personalization, parsed back, carries exactly the values it was written from."""
    mailto = settings.sender.model_copy(update={"unsubscribe_mailto": 'list"unsub@example.org'})
    settings = settings.model_copy(update={"sender": mailto})
    batch = hostile_batch(settings, send_at)
    body = orjson.loads(SendGridTransport(settings, API_KEY).request_payload(batch, batch.envelopes))

    for envelope, sent in zip(batch.envelopes, body["personalizations"], strict=True):
        fields, recipient = envelope.fields, envelope.recipient
        name = display_name((recipient.name or "").replace(",", " ").replace(";", " "))
        assert sent["to"] == [
            {"email": recipient.email, "name": name} if name else {"email": recipient.email}
        ]
        substitutions = sent["substitutions"]
        assert substitutions["%first_name%"] == fields.first_name
        assert substitutions["%email%"] == fields.email
        assert substitutions["%unsubscribe_url%"] == fields.unsubscribe_url
        assert substitutions["%preferences_url%"] == fields.preferences_url
        # Some first names need HTML escaping, so the HTML part has tags of its own for those fields.
        assert substitutions["%first_name_html%"] == html.escape(fields.first_name)
        assert sent["custom_args"] == {
            "subscriber_id": str(recipient.subscriber_id),
            "delivery_id": str(envelope.delivery_id),
        }
        assert sent["headers"] == {
            "List-Unsubscribe": f'<{fields.unsubscribe_url}>, <mailto:list"unsub@example.org?subject=unsubscribe>'
        }
        assert sent.get("send_at") == send_at
    assert body["custom_args"] == {"campaign_id": str(batch.campaign_id)}


def test_the_strict_emulator_takes_the_hostile_request(
    settings: Settings, emulator: SendGridEmulator
) -> None:
    config = settings.sendgrid.model_copy(update={"host": emulator.url, "timeout": 5.0})
    transport = SendGridTransport(settings.model_copy(update={"sendgrid": config}), API_KEY)
    batch = hostile_batch(settings, None)

    assert {o.status for o in transport.send(batch)} == {"sent"}
    (message,) = emulator.messages
    assert [p["substitutions"]["%first_name%"] for p in message.personalizations] == [
        e.fields.first_name for e in batch.envelopes
    ]


def test_links_make_the_fields_the_signer_would(settings: Settings) -> None:
    signer = Signer(KEY)
    links = Links(settings, signer)
    recipient = make_batch(settings, ["sam@example.com"]).envelopes[0].recipient
    assert links.personal_fields(recipient) == PersonalFields(
        recipient.first_name(settings.newsletter.first_name_fallback),
        "sam@example.com",
        links.unsubscribe(recipient.subscriber_id, "sam@example.com"),
        links.preferences(recipient.subscriber_id, "sam@example.com"),
    )


def statuses(store: Store, campaign_id: int) -> Counter[str]:
    with store.read() as conn:
        rows = conn.execute(select(deliveries.c.status).where(deliveries.c.campaign_id == campaign_id))
        return Counter(rows.scalars())


def test_a_claim_hands_over_exactly_the_rows_it_marked(store: Store, settings: Settings) -> None:
    for i in range(7):
        add_subscriber(store, f"c{i}@example.com", name=f"C {i}")
    campaign = new_campaign(store, settings)
    run = ledger.start_run(store, campaign.id)

    first = ledger.claim(store, campaign.id, run, 4, batch_id="a")
    second = ledger.claim(store, campaign.id, run, 4, batch_id="b")

    assert [row[2] for row in first.rows + second.rows] == [f"c{i}@example.com" for i in range(7)]
    assert all(isinstance(row, tuple) for row in first.rows)
    with store.read() as conn:
        marked = conn.execute(
            select(deliveries.c.id, deliveries.c.batch_id).where(
                deliveries.c.status == DeliveryStatus.SENDING
            )
        ).all()
    assert sorted(marked) == sorted(
        [(row[0], "a") for row in first.rows] + [(row[0], "b") for row in second.rows]
    )


def test_a_batch_that_changed_under_us_is_recorded_row_by_row(store: Store, settings: Settings) -> None:
    """One row of a batch was settled meanwhile (here: marked in doubt): recording the batch as sent
    under one message id leaves that row alone and records the others."""
    for i in range(5):
        add_subscriber(store, f"r{i}@example.com")
    campaign = new_campaign(store, settings)
    run = ledger.start_run(store, campaign.id)
    claim = ledger.claim(store, campaign.id, run, 5, batch_id="batch")
    changed = claim.rows[2][0]
    with store.write() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.id == changed).values(status=DeliveryStatus.IN_DOUBT)
        )

    counts = ledger.record(
        store, [Outcome(row[0], "sent", "<one@x>") for row in claim.rows], (campaign.id, "batch")
    )

    assert counts == Counter({"sent": 5})  # what the transport said
    assert statuses(store, campaign.id) == Counter({"sent": 4, "in_doubt": 1})
