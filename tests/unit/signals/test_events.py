"""Reading Security Event Tokens: the subjects, and every SET that must be refused with its RFC 8935 code."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

from ztproxy.oidc.tokens import UnknownSigningKey
from ztproxy.signals import events as ev
from ztproxy.signals.events import SetRefused, Subject, parse_subject, read_set

ISSUER = "https://edr.corp.example"
AUDIENCE = "https://auth.corp.example/ssf"
KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})
NOW = time.time()
USER = {"format": "iss_sub", "iss": "https://idp.corp.example", "sub": "u-1"}


def make(claims: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None, key: Any = KEY,
         alg: str = "ES256") -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "iat": int(NOW), "jti": "j-1", "sub_id": USER,
            "events": {ev.SESSION_REVOKED: {"event_timestamp": int(NOW) - 5}}, **(claims or {})}
    return jwt.encode({"alg": alg, "kid": "k1", "typ": "secevent+jwt", **(header or {})},
                      {k: v for k, v in body.items() if v is not None}, key, algorithms=[alg])


def read(token: str) -> ev.SecurityEvent:
    return read_set(token, keys=KeySet([KEY]), issuer=ISSUER, audience=AUDIENCE, algorithms=["ES256"], now=NOW)


def test_a_set_gives_its_one_event_subject_and_time() -> None:
    event = read(make())
    assert event.event_type == ev.SESSION_REVOKED and event.jti == "j-1"
    assert event.subject == Subject(issuer="https://idp.corp.example", subject="u-1")
    assert event.timestamp == int(NOW) - 5  # event_timestamp, not iat


def test_subject_formats() -> None:
    assert parse_subject({"format": "email", "email": "Ada@Corp.Example"}) == Subject(email="ada@corp.example")
    complex_subject = parse_subject({"format": "complex", "user": USER,
                                     "session": {"format": "opaque", "id": "sid-9"},
                                     "device": {"format": "opaque", "id": "dev-1"}})
    assert complex_subject == Subject(issuer=USER["iss"], subject="u-1", session="sid-9", device="dev-1")
    with pytest.raises(SetRefused):
        parse_subject({"format": "phone_number", "phone_number": "+1"})
    with pytest.raises(SetRefused):
        parse_subject({"format": "complex"})


@pytest.mark.parametrize(("err", "token"), [
    ("invalid_issuer", lambda: make({"iss": "https://other.example"})),
    ("invalid_audience", lambda: make({"aud": "https://other.example"})),
    ("invalid_request", lambda: make({"iat": int(NOW) - 3600})),
    ("invalid_request", lambda: make({"iat": int(NOW) + 3600})),
    ("invalid_request", lambda: make({"jti": None})),
    ("invalid_request", lambda: make({"exp": int(NOW) + 60})),
    ("invalid_request", lambda: make({"events": {ev.SESSION_REVOKED: {}, ev.CREDENTIAL_CHANGE: {}}})),
    ("invalid_request", lambda: make({"sub_id": None})),
    ("invalid_request", lambda: make(header={"typ": "JWT"})),
    ("invalid_key", lambda: make(key=ECKey.generate_key("P-256", parameters={"kid": "k1"}))),
    ("invalid_key", lambda: make(key=OctKey.import_key(b"0123456789abcdef0123456789abcdef"), alg="HS256")),
])
def test_bad_sets_are_refused_with_their_code(err: str, token: Any) -> None:
    with pytest.raises(SetRefused) as refused:
        read(token())
    assert refused.value.err == err


def test_an_unknown_key_asks_for_the_keys_again() -> None:
    with pytest.raises(UnknownSigningKey):
        read(make(header={"kid": "k2"}))
