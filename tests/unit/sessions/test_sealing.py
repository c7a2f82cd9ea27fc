"""Sealing: the cookie ticket, the per-session AES-GCM box, the server-wide cookie sealer, secrets."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztproxy.sessions.revocation import STORE_KEY_RE
from ztproxy.sessions.sealing import (
    ALLOWED_CLOCK_SKEW,
    CookieSealer,
    Ticket,
    parse_secret,
    seal,
    unseal,
)

NOW = 1_750_000_000.0
SECRET_A = b"a" * 32
SECRET_B = bytes(range(32, 64))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- Ticket ---------------------------------------------------------------------------------

def test_new_tickets_are_random() -> None:
    first, second = Ticket.new(), Ticket.new()
    assert len(first.session_id) == len(first.key) == 32
    assert first.session_id != second.session_id
    assert first.key != second.key
    assert first.session_id != first.key


def test_cookie_value_round_trips() -> None:
    ticket = Ticket.new()
    value = ticket.cookie_value()
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert Ticket.parse(value) == ticket


def test_store_key_is_a_hash_of_the_id() -> None:
    ticket = Ticket.new()
    digest = hashlib.sha256(ticket.session_id).digest()
    assert ticket.store_key == "s:" + b64url(digest[:24]) and len(ticket.store_key) == 34
    assert ticket.session_id.hex() not in ticket.store_key
    # Short enough for Redis to keep the indexes that list it as listpacks (members <= 64 bytes).
    assert STORE_KEY_RE.fullmatch(ticket.store_key) and not ticket.legacy


def test_a_legacy_ticket_keeps_its_store_key_and_its_cookie() -> None:
    # Tickets made before version 2: the whole hash in hex, as those releases stored their sessions.
    ticket = Ticket(os.urandom(32), os.urandom(32), 1)
    assert ticket.legacy and ticket.store_key == "s:" + hashlib.sha256(ticket.session_id).hexdigest()
    assert STORE_KEY_RE.fullmatch(ticket.store_key)
    parsed = Ticket.parse(ticket.cookie_value())
    assert parsed == ticket and parsed is not None and parsed.store_key == ticket.store_key
    assert Ticket(ticket.session_id, ticket.key).store_key != ticket.store_key
    with pytest.raises(ValueError):
        Ticket(ticket.session_id, ticket.key, 3)


def test_public_id_is_short_and_reveals_neither_the_id_nor_the_store_key() -> None:
    ticket = Ticket.new()
    assert len(ticket.public_id) == 16
    assert ticket.public_id not in ticket.store_key
    assert ticket.public_id not in ticket.session_id.hex()
    assert ticket.public_id != Ticket.new().public_id


def test_repr_shows_no_secret() -> None:
    ticket = Ticket.new()
    text = repr(ticket) + str(ticket)
    for secret in (ticket.session_id, ticket.key):
        assert repr(secret) not in text
        assert secret.hex() not in text
    assert ticket.cookie_value() not in text


def test_ticket_sizes_are_checked() -> None:
    with pytest.raises(ValueError):
        Ticket(b"short", b"k" * 32)
    with pytest.raises(ValueError):
        Ticket(b"i" * 32, b"k" * 31)


@pytest.mark.parametrize("value", [
    "", "x", "=" * 87, "A" * 86, "A" * 88, "A" * 87 + "=", " " + "A" * 86,
    "A" * 86 + "\n", "A" * 86 + "+", "A" * 86 + "/", "é" * 87,
])
def test_parse_refuses_malformed_values(value: str) -> None:
    assert Ticket.parse(value) is None


def test_parse_refuses_another_version() -> None:
    ticket = Ticket.new()
    for version in (0, 3, 255):
        assert Ticket.parse(b64url(bytes([version]) + ticket.session_id + ticket.key)) is None


def test_parse_refuses_a_non_canonical_spelling() -> None:
    value = Ticket.new().cookie_value()
    # 65 bytes leave 2 unused bits in the last character; setting them spells the same bytes.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twisted = value[:-1] + alphabet[alphabet.index(value[-1]) | 1]
    assert twisted != value
    assert Ticket.parse(twisted) is None


@given(st.text(max_size=200))
def test_parse_never_raises_on_text(value: str) -> None:
    result = Ticket.parse(value)
    assert result is None or result.cookie_value() == value


@given(st.binary(min_size=60, max_size=70))
def test_parse_never_raises_on_encoded_bytes(raw: bytes) -> None:
    result = Ticket.parse(b64url(raw))
    if len(raw) == 65 and raw[0] in (1, 2):
        assert result == Ticket(raw[1:33], raw[33:], raw[0])
    else:
        assert result is None


def test_parse_of_a_non_string_is_none() -> None:
    assert Ticket.parse(None) is None  # type: ignore[arg-type]
    assert Ticket.parse(b"A" * 87) is None  # type: ignore[arg-type]


# --- seal / unseal --------------------------------------------------------------------------

@pytest.mark.parametrize("plaintext", [b"", b"{}", b"\x00\xff" * 1000])
def test_seal_round_trips(plaintext: bytes) -> None:
    ticket = Ticket.new()
    sealed = seal(ticket, plaintext)
    assert unseal(ticket, sealed) == plaintext
    assert plaintext == b"" or plaintext not in sealed


def test_sealing_twice_gives_different_bytes() -> None:
    ticket = Ticket.new()
    assert seal(ticket, b"same") != seal(ticket, b"same")


def test_every_tampered_byte_is_detected() -> None:
    ticket = Ticket.new()
    sealed = seal(ticket, b'{"sub": "alice"}')
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        assert unseal(ticket, bytes(tampered)) is None, position


def test_truncated_or_extended_values_do_not_open() -> None:
    ticket = Ticket.new()
    sealed = seal(ticket, b"payload")
    for length in range(len(sealed)):
        assert unseal(ticket, sealed[:length]) is None, length
    assert unseal(ticket, sealed + b"\x00") is None


def test_a_value_sealed_for_one_ticket_does_not_open_with_another() -> None:
    owner, other = Ticket.new(), Ticket.new()
    sealed = seal(owner, b"payload")
    assert unseal(other, sealed) is None
    # Same key under another id (a value moved to another store key) does not open either.
    assert unseal(Ticket(other.session_id, owner.key), sealed) is None


def test_unknown_seal_version_does_not_open() -> None:
    ticket = Ticket.new()
    sealed = seal(ticket, b"payload")
    assert unseal(ticket, b"\x02" + sealed[1:]) is None


@given(st.binary(max_size=200))
def test_unseal_never_raises(junk: bytes) -> None:
    assert unseal(Ticket.new(), junk) is None


# --- CookieSealer ---------------------------------------------------------------------------

def test_cookie_sealer_round_trip() -> None:
    sealer = CookieSealer([SECRET_A])
    token = sealer.seal(b"state", purpose="login", now=NOW)
    assert sealer.unseal(token, purpose="login", now=NOW + 10, max_age=600) == b"state"
    assert b"state" not in base64.urlsafe_b64decode(token + "==")


def test_cookie_tokens_are_url_safe() -> None:
    token = CookieSealer([SECRET_A]).seal(bytes(range(256)), purpose="login", now=NOW)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_cookie_token_is_bound_to_its_purpose() -> None:
    sealer = CookieSealer([SECRET_A])
    token = sealer.seal(b"state", purpose="login", now=NOW)
    assert sealer.unseal(token, purpose="logout", now=NOW, max_age=600) is None
    assert sealer.unseal(token, purpose="", now=NOW, max_age=600) is None


def test_cookie_token_expires() -> None:
    sealer = CookieSealer([SECRET_A])
    token = sealer.seal(b"state", purpose="login", now=NOW)
    assert sealer.unseal(token, purpose="login", now=NOW + 600, max_age=600) == b"state"
    assert sealer.unseal(token, purpose="login", now=NOW + 600.01, max_age=600) is None


def test_cookie_token_from_the_future_is_refused() -> None:
    sealer = CookieSealer([SECRET_A])
    token = sealer.seal(b"state", purpose="login", now=NOW + ALLOWED_CLOCK_SKEW + 1)
    assert sealer.unseal(token, purpose="login", now=NOW, max_age=600) is None
    slightly_ahead = sealer.seal(b"state", purpose="login", now=NOW + 1)
    assert sealer.unseal(slightly_ahead, purpose="login", now=NOW, max_age=600) == b"state"


def test_rotation_new_secret_seals_old_one_still_opens() -> None:
    old = CookieSealer([SECRET_A])
    rotated = CookieSealer([SECRET_B, SECRET_A])
    token_before = old.seal(b"before", purpose="login", now=NOW)
    token_after = rotated.seal(b"after", purpose="login", now=NOW)
    assert rotated.unseal(token_before, purpose="login", now=NOW, max_age=600) == b"before"
    assert rotated.unseal(token_after, purpose="login", now=NOW, max_age=600) == b"after"
    # The newest secret seals: a sealer without it cannot open the new token.
    assert old.unseal(token_after, purpose="login", now=NOW, max_age=600) is None
    retired = CookieSealer([SECRET_B])
    assert retired.unseal(token_before, purpose="login", now=NOW, max_age=600) is None


def test_cookie_token_tampering_is_detected() -> None:
    sealer = CookieSealer([SECRET_A])
    raw = base64.urlsafe_b64decode(sealer.seal(b"state", purpose="login", now=NOW) + "==")
    for position in range(len(raw)):
        tampered = bytearray(raw)
        tampered[position] ^= 0x80
        assert sealer.unseal(b64url(bytes(tampered)), purpose="login", now=NOW, max_age=600) is None, position


@pytest.mark.parametrize("token", ["", "!!!", "A", "A" * 10, "A" * 100_000, "é", "AAAA=", b64url(b"\x01" * 40)])
def test_malformed_cookie_tokens_are_none(token: str) -> None:
    assert CookieSealer([SECRET_A]).unseal(token, purpose="login", now=NOW, max_age=600) is None


@given(st.text(max_size=300))
def test_cookie_unseal_never_raises(token: str) -> None:
    assert CookieSealer([SECRET_A]).unseal(token, purpose="login", now=NOW, max_age=600) is None


def test_cookie_sealer_needs_strong_secrets() -> None:
    with pytest.raises(ValueError):
        CookieSealer([])
    with pytest.raises(ValueError):
        CookieSealer([b"short"])


# --- parse_secret ---------------------------------------------------------------------------

def test_parse_secret_reads_hex() -> None:
    assert parse_secret("00" * 32) == bytes(32)
    assert parse_secret("  " + "ab" * 40 + "\n") == bytes.fromhex("ab" * 40)


def test_parse_secret_reads_base64_in_both_alphabets() -> None:
    secret = bytes(range(200, 232)) + b"\xfb\xff"
    assert parse_secret(base64.b64encode(secret).decode()) == secret
    assert parse_secret(base64.urlsafe_b64encode(secret).decode().rstrip("=")) == secret


def test_parse_secret_takes_long_text_as_it_is() -> None:
    assert parse_secret("correct horse battery staple, 2024!") == b"correct horse battery staple, 2024!"


@pytest.mark.parametrize("text", ["", "short", "ab" * 15, "   " + "x" * 31 + "   ", "a" * 31])
def test_parse_secret_refuses_short_secrets(text: str) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        parse_secret(text)
