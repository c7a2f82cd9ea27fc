"""Back-Channel Logout token validation (OIDC Back-Channel Logout 1.0 2.4, 2.6)."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey

from tests.unit.oidc.helpers import (
    ALGORITHMS,
    CLIENT_SECRET,
    GOOD_EC,
    LEEWAY,
    NOW,
    ROGUE_RSA,
    check_logout_token,
    id_claims,
    logout_claims,
    refusal,
    sign,
    unsigned,
)
from ztproxy.oidc.tokens import BACKCHANNEL_LOGOUT_EVENT, UnknownSigningKey

check = check_logout_token


# --- good tokens ------------------------------------------------------------------------

@pytest.mark.parametrize("typ", [None, "logout+jwt", "application/logout+jwt", "Logout+JWT", "JWT"])
def test_a_good_logout_token_gives_its_claims(typ: str | None) -> None:
    claims = check(sign(logout_claims(), typ=typ))
    assert (claims.sub, claims.sid, claims.jti, claims.iat) == ("248289761001", "08a5019c-17e1", "bWJq", NOW - 5)
    assert claims.accept_until == NOW - 5 + 120 + LEEWAY  # how long to remember the jti


def test_sub_alone_or_sid_alone_is_enough() -> None:
    assert check(sign(logout_claims(sid=None))).sid is None
    assert check(sign(logout_claims(sub=None))).sub is None
    assert check(sign(logout_claims(sub="", sid="s-1"))).sub is None


def test_an_exp_shortens_how_long_the_jti_is_remembered() -> None:
    claims = check(sign(logout_claims(exp=NOW + 30), GOOD_EC, "ES256"))
    assert claims.accept_until == NOW + 30 + LEEWAY


def test_an_event_value_with_members_passes() -> None:
    check(sign(logout_claims(events={BACKCHANNEL_LOGOUT_EVENT: {"reason": "admin"}, "urn:other": {}})))


# --- refusals ---------------------------------------------------------------------------

@pytest.mark.parametrize("nonce", ["n-1", "", 5])
def test_a_nonce_is_refused(nonce: Any) -> None:
    assert refusal(check, sign(logout_claims(nonce=nonce))) == "nonce"
    assert refusal(check, sign(logout_claims() | {"nonce": None})) == "nonce"  # present, even as null


def test_an_id_token_is_not_a_logout_token() -> None:
    assert refusal(check, sign(id_claims())) == "nonce"
    assert refusal(check, sign(id_claims(nonce=None, jti="j-1"))) == "events"


@pytest.mark.parametrize("events", [
    None, {}, {"urn:other": {}}, {BACKCHANNEL_LOGOUT_EVENT: True}, {BACKCHANNEL_LOGOUT_EVENT: "logout"},
    {BACKCHANNEL_LOGOUT_EVENT: []}, {BACKCHANNEL_LOGOUT_EVENT: None}, [BACKCHANNEL_LOGOUT_EVENT],
    BACKCHANNEL_LOGOUT_EVENT, {BACKCHANNEL_LOGOUT_EVENT.replace("http:", "https:"): {}},
])
def test_without_the_backchannel_logout_event_it_is_refused(events: Any) -> None:
    assert refusal(check, sign(logout_claims(events=events))) == "events"


@pytest.mark.parametrize("changes", [{"sub": None, "sid": None}, {"sub": "", "sid": ""}])
def test_neither_sub_nor_sid_is_refused(changes: dict[str, Any]) -> None:
    assert refusal(check, sign(logout_claims(**changes))) == "sub-sid"


def test_an_old_future_or_missing_iat_is_refused() -> None:
    assert refusal(check, sign(logout_claims(iat=NOW - 120 - LEEWAY - 1))) == "iat"
    assert refusal(check, sign(logout_claims(iat=NOW - 50)), max_token_age=10) == "iat"
    assert refusal(check, sign(logout_claims(iat=NOW + LEEWAY + 5))) == "iat"
    assert refusal(check, sign(logout_claims(iat=None))) == "iat"
    check(sign(logout_claims(iat=NOW - 120)))


@pytest.mark.parametrize("jti", [None, ""])
def test_a_missing_or_empty_jti_is_refused(jti: str | None) -> None:
    assert refusal(check, sign(logout_claims(jti=jti))) == "jti"


def test_an_expired_logout_token_is_refused() -> None:
    assert refusal(check, sign(logout_claims(exp=NOW - LEEWAY - 1))) == "expired"


def test_another_issuer_or_audience_is_refused() -> None:
    assert refusal(check, sign(logout_claims(iss="https://rogue.example"))) == "issuer"
    assert refusal(check, sign(logout_claims(iss=None))) == "issuer"
    assert refusal(check, sign(logout_claims(aud="other-client"))) == "audience"
    assert refusal(check, sign(logout_claims(aud=None))) == "audience"


@pytest.mark.parametrize(("claim", "value"), [("sub", 1), ("sid", ["s"]), ("jti", 5), ("iat", "now"),
                                              ("exp", "later"), ("aud", [1]), ("iss", {})])
def test_a_claim_of_the_wrong_type_is_malformed(claim: str, value: Any) -> None:
    assert refusal(check, sign(logout_claims() | {claim: value})) == "malformed"


@pytest.mark.parametrize("typ", ["at+jwt", "secevent+jwt", "id+jwt", "JOSE"])
def test_another_explicit_type_is_refused(typ: str) -> None:
    assert refusal(check, sign(logout_claims(), typ=typ)) == "type"


def test_forged_unsigned_or_hmac_tokens_are_refused() -> None:
    assert refusal(check, sign(logout_claims(), ROGUE_RSA)) == "signature"
    assert refusal(check, unsigned(logout_claims())) == "algorithm"
    hs256 = sign(logout_claims(), OctKey.import_key(CLIENT_SECRET), "HS256", kid=None)
    assert refusal(check, hs256, algorithms=["HS256", *ALGORITHMS]) == "algorithm"


def test_an_unknown_kid_asks_for_a_jwks_refetch() -> None:
    newcomer = ECKey.generate_key("P-256", parameters={"kid": "ec-9"})
    with pytest.raises(UnknownSigningKey) as caught:
        check(sign(logout_claims(), newcomer, "ES256"))
    assert caught.value.kid == "ec-9"


@pytest.mark.parametrize("garbage", ["", "logout", "a.b.c", "a.b.c.d.e"])
def test_garbage_is_malformed(garbage: str) -> None:
    assert refusal(check, garbage) == "malformed"


def test_a_logout_token_without_exp_is_refused() -> None:
    # Back-Channel Logout 1.0 (final) 2.4: exp is REQUIRED.
    assert refusal(check, sign(logout_claims(exp=None))) == "expired"
