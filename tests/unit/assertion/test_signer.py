"""AssertionSigner: what it signs, that apps' verifiers accept it and refuse forgeries, the cache."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jws

from ztproxy.assertion import AssertionSigner, sid_for
from ztproxy.assertion.keys import KeyRing, RotationPolicy, SigningKey, generate_key
from ztproxy.policy.model import Device, Identity
from ztproxy.verify import AssertionInvalid, Verifier

ISSUER = "https://proxy.corp.example"
WIKI = "https://wiki.corp.example"
PAYROLL = "https://payroll.corp.example"
POLICY = RotationPolicy(ttl=60, publish_before_use=600, verifier_leeway=30)
AUTH_TIME = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
ALICE = Identity(subject="u-1", email="alice@corp.example", name="Alice", groups=frozenset({"staff", "eng"}),
                 claims={"department": "it"}, acr="urn:corp:mfa", amr=("pwd", "otp"), auth_time=AUTH_TIME,
                 mfa=True)
LAPTOP = Device(id="dev-7", managed=True, disk_encrypted=True, platform="macos", os_version="14.2", score=90,
                last_seen=AUTH_TIME, owner="u-1")


def make_ring(now: float, *keys: SigningKey) -> KeyRing:
    return KeyRing(POLICY, now=now, keys=keys or [generate_key(now - 86400)])


def sign(signer: AssertionSigner, now: float, *, session: str = "pub-1", route: str = "wiki",
         audience: str = WIKI, identity: Identity = ALICE, device: Device | None = LAPTOP) -> str:
    return signer.assertion(session=session, route=route, audience=audience, identity=identity, device=device,
                            now=now)


def verifier(ring: KeyRing, now: float, *, audience: str = WIKI, issuer: str = ISSUER) -> Verifier:
    return Verifier(issuer=issuer, audience=audience, jwks=ring.jwks(now))


@pytest.fixture
def now() -> float:
    return time.time()  # verifiers check exp against the real clock


@pytest.fixture
def ring(now: float) -> KeyRing:
    return make_ring(now)


@pytest.fixture
def signer(ring: KeyRing) -> AssertionSigner:
    return AssertionSigner(ring, issuer=ISSUER)


def test_claims_and_header(signer: AssertionSigner, ring: KeyRing, now: float) -> None:
    token = sign(signer, now)
    header = jws.extract_compact(token.encode()).headers()
    assert header == {"alg": "ES256", "kid": ring.signing_key(now).kid, "typ": "JWT"}
    claims = verifier(ring, now).verify(token).claims
    issued = int(now)
    assert {name: value for name, value in claims.items() if name not in ("jti", "sid")} == {
        "iss": ISSUER, "aud": WIKI, "caller": "person", "sub": "u-1", "email": "alice@corp.example", "name": "Alice",
        "groups": ["eng", "staff"], "iat": issued, "nbf": issued, "exp": issued + 60,
        "auth_time": int(AUTH_TIME.timestamp()), "acr": "urn:corp:mfa", "amr": ["pwd", "otp"],
        "device": {"id": "dev-7", "managed": True, "disk_encrypted": True, "platform": "macos",
                   "os_version": "14.2", "score": 90},
        "route": "wiki", "risk": "low",
    }
    assert len(claims["jti"]) >= 22


def test_pyjwt_accepts_it_with_the_published_jwks(signer: AssertionSigner, ring: KeyRing, now: float) -> None:
    token = sign(signer, now)
    (jwk,) = ring.jwks(now)["keys"]
    claims = pyjwt.decode(token, pyjwt.PyJWK(jwk).key, algorithms=["ES256"], audience=WIKI, issuer=ISSUER)
    assert claims["sub"] == "u-1"


def test_what_is_unknown_is_left_out(signer: AssertionSigner, ring: KeyRing, now: float) -> None:
    token = sign(signer, now, identity=Identity(subject="svc-backup"), device=None)
    claims = verifier(ring, now).verify(token).claims
    assert set(claims) == {"iss", "aud", "caller", "sub", "groups", "iat", "nbf", "exp", "jti", "sid", "route",
                           "risk"}
    sparse = sign(signer, now, device=Device(id="dev-9"))
    assert verifier(ring, now).verify(sparse).claims["device"] == {"id": "dev-9", "managed": False,
                                                                  "disk_encrypted": False}


def test_sid_is_a_hash_of_the_session_handle_and_the_route(signer: AssertionSigner, ring: KeyRing,
                                                             now: float) -> None:
    wiki = verifier(ring, now).verify(sign(signer, now, session="pub-secret")).claims["sid"]
    payroll = verifier(ring, now, audience=PAYROLL).verify(
        sign(signer, now, session="pub-secret", route="payroll", audience=PAYROLL)).claims["sid"]
    assert wiki == sid_for("pub-secret", "wiki") and payroll == sid_for("pub-secret", "payroll")
    assert wiki != payroll and "pub-secret" not in wiki
    assert sid_for("pub-other", "wiki") != wiki


def _splice(token: str, other: str) -> str:
    """``token``'s header and signature around ``other``'s claims: a forged payload."""
    header, _, signature = token.split(".")
    return f"{header}.{other.split('.')[1]}.{signature}"


def test_forged_and_misused_assertions_are_refused(signer: AssertionSigner, ring: KeyRing, now: float) -> None:
    token = sign(signer, now)
    assert verifier(ring, now).verify(token).subject == "u-1"
    refused = {
        "tampered": (_splice(token, sign(signer, now, identity=Identity(subject="u-1", groups=frozenset(
            {"payroll-admin"})))), verifier(ring, now)),
        # signed long enough ago that exp + the verifier's 30 s leeway has passed
        "expired": (sign(AssertionSigner(ring, issuer=ISSUER), now - 100), verifier(ring, now)),
        # replayed by the wiki app against payroll
        "other-audience": (token, verifier(ring, now, audience=PAYROLL)),
        "other-issuer": (token, verifier(ring, now, issuer="https://other-proxy.corp.example")),
        "unknown-key": (sign(AssertionSigner(make_ring(now), issuer=ISSUER), now), verifier(ring, now)),
    }
    for name, (bad, check) in refused.items():
        with pytest.raises(AssertionInvalid):
            check.verify(bad)
            pytest.fail(f"{name} was accepted")


# --- the cache ---------------------------------------------------------------------------------


def test_the_same_token_is_reused_until_a_quarter_of_its_life_is_left(signer: AssertionSigner,
                                                                       now: float) -> None:
    first = sign(signer, now)
    assert signer.signs == 1
    assert sign(signer, now + 44) == first  # 16 s left > 15 s margin
    assert signer.signs == 1
    second = sign(signer, now + 45.5)
    assert second != first and signer.signs == 2
    assert sign(signer, now + 46) == second


@pytest.mark.parametrize("change", [
    {"session": "pub-2"},
    {"route": "payroll"},
    {"audience": PAYROLL},
    {"identity": Identity(subject="u-1", email="alice@corp.example", name="Alice", groups=frozenset({"staff"}),
                          acr="urn:corp:mfa", amr=("pwd", "otp"), auth_time=AUTH_TIME)},  # groups refreshed
    {"identity": Identity(subject="u-1", email="alice@corp.example", name="Alice",
                          groups=frozenset({"staff", "eng"}), acr="urn:corp:mfa", amr=("pwd", "otp"),
                          auth_time=datetime(2027, 1, 15, 9, 0, tzinfo=UTC))},  # stepped up
    {"device": Device(id="dev-7", managed=True, disk_encrypted=False, platform="macos", os_version="14.2",
                      score=90)},
    {"device": None},
], ids=["session", "route", "audience", "groups", "auth-time", "posture", "no-device"])
def test_any_change_in_what_is_asserted_gives_a_new_token(signer: AssertionSigner, now: float,
                                                           change: dict[str, Any]) -> None:
    first = sign(signer, now)
    assert sign(signer, now + 1, **change) != first
    assert signer.signs == 2


def test_what_is_not_asserted_does_not_defeat_the_cache(signer: AssertionSigner, now: float) -> None:
    first = sign(signer, now)
    seen_later = Device(id="dev-7", managed=True, disk_encrypted=True, platform="macos", os_version="14.2",
                        score=90, last_seen=datetime(2027, 1, 15, 9, 0, tzinfo=UTC))
    same_groups = Identity(subject="u-1", email="alice@corp.example", name="Alice",
                           groups=frozenset({"eng", "staff"}), claims={"department": "sales"},
                           acr="urn:corp:mfa", amr=("pwd", "otp"), auth_time=AUTH_TIME, mfa=True)
    assert sign(signer, now + 1, device=seen_later, identity=same_groups) == first
    assert signer.signs == 1


def test_a_new_signing_key_gives_a_new_token(now: float) -> None:
    old, new = generate_key(now - 86400), generate_key(now - 610)
    ring = make_ring(now, old, new)
    signer = AssertionSigner(ring, issuer=ISSUER)
    before = sign(signer, now - 20)  # new key still pending then
    assert jws.extract_compact(before.encode()).headers()["kid"] == old.kid
    after = sign(signer, now)
    assert jws.extract_compact(after.encode()).headers()["kid"] == new.kid
    assert signer.signs == 2
    for token in (before, after):
        assert verifier(ring, now).verify(token).subject == "u-1"


def test_the_cache_is_bounded(ring: KeyRing, now: float) -> None:
    signer = AssertionSigner(ring, issuer=ISSUER, cache_size=3)
    tokens = [sign(signer, now, session=f"pub-{n}") for n in range(5)]
    assert signer.signs == 5
    assert sign(signer, now, session="pub-4") == tokens[4]  # recent: kept
    assert sign(signer, now, session="pub-0") != tokens[0]  # least recently used: evicted
    assert signer.signs == 6


def test_a_token_may_not_outlive_its_key(ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="at most the key ring's ttl"):
        AssertionSigner(ring, issuer=ISSUER, ttl=120)
    with pytest.raises(ValueError, match="issuer"):
        AssertionSigner(ring, issuer="")
    assert AssertionSigner(ring, issuer=ISSUER, ttl=30).ttl == 30
