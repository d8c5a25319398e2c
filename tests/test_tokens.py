"""Signed link tokens and the signing key."""

from __future__ import annotations

import base64
import hmac
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pipeline.errors import SettingsError, TokenError
from pipeline.settings import Settings, load_settings
from pipeline.tokens import KEY_FILE, Signer, load_secret_key

KEY = b"k" * 32
NOW = 1_800_000_000


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY", raising=False)


@pytest.fixture
def signer() -> Signer:
    return Signer(KEY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# Round trip and purposes


@pytest.mark.parametrize("subscriber_id", [0, 1, 42, 2**31, 10**15])
def test_sign_verify_round_trip(signer: Signer, subscriber_id: int) -> None:
    token = signer.sign("unsubscribe", subscriber_id)

    assert signer.verify("unsubscribe", token) == subscriber_id


def test_tokens_are_url_safe_and_short(signer: Signer) -> None:
    token = signer.sign("unsubscribe", 123456789, expires_at=NOW)

    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert len(token) < 60


def test_signing_is_deterministic_and_differs_per_subscriber(signer: Signer) -> None:
    assert signer.sign("unsubscribe", 7) == signer.sign("unsubscribe", 7)
    assert signer.sign("unsubscribe", 7) != signer.sign("unsubscribe", 8)


def test_purposes_do_not_cross(signer: Signer) -> None:
    unsubscribe = signer.sign("unsubscribe", 7)
    preferences = signer.sign("preferences", 7)

    assert unsubscribe != preferences
    with pytest.raises(TokenError, match="signature"):
        signer.verify("preferences", unsubscribe)
    with pytest.raises(TokenError, match="signature"):
        signer.verify("unsubscribe", preferences)
    with pytest.raises(TokenError):
        signer.verify("confirm", unsubscribe)


# Bound to an address (issue 12 item 1)


def test_a_token_signed_for_an_address_verifies_only_with_that_address(signer: Signer) -> None:
    """Issue 12 item 1: the tag covers the address, so the same id with another address is refused."""
    token = signer.sign("unsubscribe", 7, address="ana@example.com")

    assert signer.verify("unsubscribe", token, address="ana@example.com") == 7
    assert signer.claimed_id(token) == 7
    for other in ("ben@example.com", "Ana@example.com", ""):
        with pytest.raises(TokenError, match="signature"):
            signer.verify("unsubscribe", token, address=other)
    assert "ana" not in base64.urlsafe_b64decode(token.split(".")[0] + "==").decode()
    assert len(token) == len(signer.sign("unsubscribe", 7)), "binding costs no length"


def legacy(signer: Signer, purpose: str, payload: bytes) -> str:
    """A token as signed before addresses were bound: the id (and expiry) alone."""
    return f"{b64(payload)}.{b64(signer._tag(purpose, payload, None))}"


def test_id_only_tokens_of_before_verify_only_where_the_caller_asks(signer: Signer) -> None:
    """Issue 12 item 1: an old never-expiring link proves only an id: ``verify`` refuses it, and
    ``verify_legacy`` (whose caller checks the id still means the same person) accepts it."""
    old = legacy(signer, "unsubscribe", b"7")

    with pytest.raises(TokenError, match="signature"):
        signer.verify("unsubscribe", old)
    assert signer.verify_legacy("unsubscribe", old) == 7
    with pytest.raises(TokenError, match="signature"):
        signer.verify_legacy("unsubscribe", signer.sign("unsubscribe", 7))


def test_expiring_tokens_of_before_live_out_their_hours(signer: Signer) -> None:
    """Confirmation and form tokens already out keep working until they expire, never longer."""
    old = legacy(signer, "confirm", f"7.{NOW}".encode())

    assert signer.verify("confirm", old, now=NOW - 60) == 7
    with pytest.raises(TokenError, match="expired"):
        signer.verify("confirm", old, now=NOW + 1)


# Tampered, truncated, forged


def test_changing_the_subscriber_id_breaks_the_signature(signer: Signer) -> None:
    token = signer.sign("unsubscribe", 7)
    _, tag = token.split(".")

    with pytest.raises(TokenError, match="signature"):
        signer.verify("unsubscribe", f"{b64(b'8')}.{tag}")


def test_flipping_a_character_of_the_tag_is_rejected(signer: Signer) -> None:
    token = signer.sign("unsubscribe", 7)
    payload, tag = token.split(".")
    flipped = ("B" if tag[0] == "A" else "A") + tag[1:]

    with pytest.raises(TokenError):
        signer.verify("unsubscribe", f"{payload}.{flipped}")


@pytest.mark.parametrize("cut", [1, 2, 5, 10])
def test_truncated_tokens_are_rejected(signer: Signer, cut: int) -> None:
    token = signer.sign("unsubscribe", 7)

    with pytest.raises(TokenError):
        signer.verify("unsubscribe", token[:-cut])


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "MQ", "MQ.", ".abc", "MQ.abc.def", "not a token", "MQ.!!!!", "bm9wZQ.AAAA", "é.é"],
)
def test_malformed_tokens_are_token_errors(signer: Signer, token: str) -> None:
    with pytest.raises(TokenError):
        signer.verify("unsubscribe", token)


def test_token_signed_with_another_key_is_forged(signer: Signer) -> None:
    forged = Signer(b"x" * 32).sign("unsubscribe", 7)

    with pytest.raises(TokenError, match="signature"):
        signer.verify("unsubscribe", forged)


def test_payload_with_too_many_fields_is_rejected(signer: Signer) -> None:
    raw = b"7.1.2"
    tag = signer._tag("unsubscribe", raw, "")

    with pytest.raises(TokenError, match="malformed"):
        signer.verify("unsubscribe", f"{b64(raw)}.{b64(tag)}")


# Expiry


def test_expiring_token_verifies_until_it_expires(signer: Signer) -> None:
    token = signer.sign("confirm", 7, expires_at=NOW)

    assert signer.verify("confirm", token, now=NOW - 3600) == 7
    assert signer.verify("confirm", token, now=NOW) == 7
    with pytest.raises(TokenError, match="expired"):
        signer.verify("confirm", token, now=NOW + 1)


def test_expiry_uses_the_clock_by_default(signer: Signer) -> None:
    with pytest.raises(TokenError, match="expired"):
        signer.verify("confirm", signer.sign("confirm", 7, expires_at=1))
    assert signer.verify("confirm", signer.sign("confirm", 7, expires_at=2**40)) == 7


def test_extending_the_expiry_breaks_the_signature(signer: Signer) -> None:
    token = signer.sign("confirm", 7, expires_at=NOW)
    _, tag = token.split(".")

    with pytest.raises(TokenError, match="signature"):
        signer.verify("confirm", f"{b64(f'7.{NOW + 86400}'.encode())}.{tag}", now=NOW + 10)


def test_expiring_and_non_expiring_tokens_differ(signer: Signer) -> None:
    assert signer.sign("confirm", 7) != signer.sign("confirm", 7, expires_at=NOW)


# Address hashes


@given(st.text(st.characters(blacklist_categories=["Cs"]), max_size=80))
def test_address_hash_stays_the_hmac_sha256_suppressions_were_stored_under(email: str) -> None:
    """Hashes kept for erased people must match forever: the definition, computed from scratch."""
    key = b"k" * 40
    expected = hmac.new(key, b"address\0" + email.strip().lower().encode("utf-8"), "sha256")

    assert Signer(key).address_hash(email) == expected.hexdigest()


def test_address_hash_is_keyed_and_normalised(signer: Signer) -> None:
    assert signer.address_hash(" Ana@Example.COM ") == signer.address_hash("ana@example.com")
    assert signer.address_hash("ana@example.com") != signer.address_hash("ben@example.com")
    assert signer.address_hash("ana@example.com") != Signer(b"x" * 32).address_hash("ana@example.com")
    assert "ana" not in signer.address_hash("ana@example.com")


# Hypothesis


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(st.text(max_size=80))
def test_random_strings_never_verify(token: str) -> None:
    signer = Signer(KEY)
    for purpose in ("unsubscribe", "preferences"):
        with pytest.raises(TokenError):
            signer.verify(purpose, token)


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(st.binary(max_size=24), st.binary(min_size=0, max_size=24))
def test_random_token_shaped_strings_never_verify(payload: bytes, tag: bytes) -> None:
    with pytest.raises(TokenError):
        Signer(KEY).verify("unsubscribe", f"{b64(payload)}.{b64(tag)}")


@hypothesis_settings(deadline=None)  # no timing assertions: a busy machine must not fail these
@given(st.integers(min_value=0, max_value=2**53), st.sampled_from(["unsubscribe", "preferences", "confirm"]))
def test_every_id_round_trips(subscriber_id: int, purpose: str) -> None:
    signer = Signer(KEY)
    assert signer.verify(purpose, signer.sign(purpose, subscriber_id)) == subscriber_id


# The signing key


def test_key_from_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "e" * 64)

    assert load_secret_key(settings) == b"e" * 64
    assert not settings.path(KEY_FILE).exists(), "no key file is written when the environment has one"


def test_too_short_key_in_environment_is_a_settings_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "short")

    with pytest.raises(SettingsError, match=r"NEWSLETTER_SECRET_KEY.*at least 32"):
        load_secret_key(settings)


def test_sqlite_store_generates_a_private_key_file_once(settings: Settings, project: Path) -> None:
    key_file = project / "var" / "secret.key"
    assert not key_file.exists()

    first = load_secret_key(settings)

    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert key_file.read_bytes().strip() == first
    assert load_secret_key(settings) == first
    assert load_secret_key(load_settings(project / "settings.toml")) == first


def test_generated_keys_differ_between_projects(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, project: Path
) -> None:
    other = tmp_path_factory.mktemp("other")
    (other / "settings.toml").write_text(
        (project / "settings.toml").read_text(encoding="utf-8"), encoding="utf-8"
    )

    assert load_secret_key(settings) != load_secret_key(load_settings(other / "settings.toml"))


def test_tokens_signed_with_the_stored_key_verify_after_a_restart(settings: Settings) -> None:
    token = Signer(load_secret_key(settings)).sign("unsubscribe", 99)

    assert Signer(load_secret_key(settings)).verify("unsubscribe", token) == 99


def shared_store_settings(project: Path) -> Path:
    """The project's settings file, pointed at a PostgreSQL store (shared by several machines)."""
    path = project / "settings.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(
        text.replace(
            'url = "sqlite:///var/newsletter.db"', 'url = "postgresql+psycopg://news@db.example.org/news"'
        ),
        encoding="utf-8",
    )
    return path


def test_shared_store_without_key_in_environment_refuses(project: Path) -> None:
    settings = load_settings(shared_store_settings(project))

    with pytest.raises(SettingsError, match="NEWSLETTER_SECRET_KEY"):
        load_secret_key(settings)
    assert not (project / "var" / "secret.key").exists()


def test_shared_store_uses_key_from_environment(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shared_store_settings(project)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "s" * 40)

    assert load_secret_key(load_settings(path)) == b"s" * 40
