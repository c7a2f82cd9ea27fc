"""The session's two formats: format 2 (compact, what new sessions are) and format 1 (releases before it)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from ztproxy.risk import Browser, RiskState, Seen
from ztproxy.sessions.model import Session

T0 = 1_800_000_000.25

# What the release before format 2 wrote for a session (the demo IdP's sign-in, its ID token cut short).
PREVIOUS_RELEASE = (
    b'{"provider":"demo","subject":"carol","email":"carol@corp.example","name":"Carol","groups":[],'
    b'"claims":{"email":"carol@corp.example","email_verified":true,"name":"Carol"},"acr":"urn:ztproxy:pwd",'
    b'"amr":["pwd"],"mfa":false,"auth_time":1796637810.0,"created":1796637810.8257122,'
    b'"last_seen":1796637810.8257122,"refreshed":1796637810.8257122,'
    b'"refresh_token":"1ywcH9YsZYaOLCj6jMty2ouV9wbDpm3eb82ujRecxeq","id_token":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln",'
    b'"idp_session":"4hb4rcwMv0hSkSFWGBIG8","risk":{"signed_in_from":"127.0.0.0/24","browser":["python",3],'
    b'"device":null,"device_known":false,"network":"127.0.0.0/24","previous_network":null,"moved_at":null,'
    b'"signals":[],"locked_until":null},"v":1}')


def make_session(**changes: Any) -> Session:
    fields: dict[str, Any] = dict(
        provider="demo", subject="carol", email="carol@corp.example", name="Carol", groups=("eng", "ops"),
        claims={"email": "carol@corp.example", "email_verified": True, "name": "Carol", "groups": ["eng", "ops"]},
        acr="urn:ztproxy:pwd", amr=("pwd",), mfa=False, auth_time=1796637810.0, created=T0, last_seen=T0,
        refreshed=T0, refresh_token="1ywcH9YsZYaOLCj6jMty2ouV9wbDpm3eb82ujRecxeq", idp_session="4hb4rcwMv0hSkSFWGBIG8",
        risk=RiskState.at_sign_in(Seen("127.0.0.0/24", Browser("python", 3), None)))
    fields.update(changes)
    return Session(**fields)


def test_a_session_of_the_previous_release_opens() -> None:
    session = Session.from_bytes(PREVIOUS_RELEASE)
    assert session is not None and session.subject == "carol" and session.email == "carol@corp.example"
    assert session.id_token == "eyJhbGciOiJSUzI1NiJ9.e30.c2ln" and session.idp_session == "4hb4rcwMv0hSkSFWGBIG8"
    assert session.risk is not None and session.risk.browser == Browser("python", 3)
    # Written back for a legacy ticket, it is what that release reads: the same fields, format 1.
    assert orjson.loads(session.to_bytes(legacy=True)) == orjson.loads(PREVIOUS_RELEASE)


def test_format_2_says_each_thing_once_and_names_nothing() -> None:
    session = make_session()
    compact, legacy = session.to_bytes(), session.to_bytes(legacy=True)
    assert orjson.loads(compact) == [
        2, "demo", "carol", T0, "carol@corp.example", "Carol",
        {"email_verified": True},  # email, name and groups are fields of their own
        "urn:ztproxy:pwd", ["pwd"], 1796637810.0, "1ywcH9YsZYaOLCj6jMty2ouV9wbDpm3eb82ujRecxeq",
        "4hb4rcwMv0hSkSFWGBIG8",
        ["127.0.0.0/24", ["python", 3], 1],  # the network is still the sign-in's; nothing after it
        ["eng", "ops"], "groups"]  # no MFA; last_seen and refreshed are created; no ID token
    assert Session.from_bytes(compact) == session == Session.from_bytes(legacy)
    assert len(compact) < len(legacy) * 0.6, (len(compact), len(legacy))
    plain = make_session(groups=(), claims={"email": "carol@corp.example", "name": "Carol"}, risk=None)
    assert orjson.loads(plain.to_bytes())[-1] == "4hb4rcwMv0hSkSFWGBIG8"  # nothing empty after the IdP session
    # The ID token, where the IdP wants it back (logout_id_token_hint), is in it whole.
    assert Session.from_bytes(make_session(id_token="a.b.c").to_bytes()) == make_session(id_token="a.b.c")


def test_format_2_keeps_claims_that_differ_from_the_fields() -> None:
    for claims in ({}, {"email": "other@corp.example"}, {"name": None, "groups": ["ops", "eng"]},
                   {"roles": ["eng", "ops"], "groups": ["eng", "ops"]}, {"email": "carol@corp.example"}):
        session = make_session(claims=claims, last_seen=T0 + 5, refreshed=T0 + 60, mfa=True)
        again = Session.from_bytes(session.to_bytes())
        assert again == session and again is not None and dict(again.claims) == claims


def test_unknown_or_broken_formats_are_no_session() -> None:
    good = make_session().to_bytes()
    for junk in (b'[3,"demo","carol",1.0]', b"[2]", b'[2,"demo"]', b"[]", good[:-1] + b',[],"extra"]',
                 good.replace(b'"groups"]', b'5]'), good.replace(b'[2,"demo","carol"', b'[2,"demo",7'),
                 good.replace(b'{"email_verified":true}', b"[]"), good.replace(b'"carol@corp.example"', b"[]"),
                 b'{"v":2,"p":"demo"}', b'{"v":3}', good.replace(b'["python",3]', b'"python"')):
        assert Session.from_bytes(junk) is None, junk


texts = st.text(max_size=12)
claim_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), texts, st.lists(texts, max_size=3))


@given(email=st.one_of(st.none(), texts), name=st.one_of(st.none(), texts),
       groups=st.lists(st.text(min_size=1, max_size=6), max_size=3, unique=True),
       claims=st.dictionaries(st.sampled_from(["email", "name", "groups", "roles", "x"]), claim_values),
       created=st.floats(0, 2e9), seen=st.floats(0, 2e9), risk=st.booleans(), token=st.one_of(st.none(), texts))
def test_any_session_round_trips_in_both_formats(email: str | None, name: str | None, groups: list[str],
                                                 claims: dict[str, Any], created: float, seen: float,
                                                 risk: bool, token: str | None) -> None:
    session = make_session(email=email, name=name, groups=tuple(sorted(groups)), claims=claims, created=created,
                           last_seen=seen, refreshed=created, id_token=token, refresh_token=token,
                           risk=make_session().risk if risk else None, acr=None, amr=(), auth_time=None)
    for legacy in (False, True):
        again = Session.from_bytes(session.to_bytes(legacy=legacy))
        assert again == session and again is not None and dict(again.claims) == claims
