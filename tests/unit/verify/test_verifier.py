"""ztproxy.verify: good assertions pass, every kind of bad one is refused."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from tests.support.forgery import tamper
from ztproxy.verify import AssertionInvalid, Verifier
from ztproxy.verify.testing import TestIssuer

AUDIENCE = "https://wiki.corp.example"


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(audience=AUDIENCE)


def test_valid_assertion_gives_the_identity(issuer: TestIssuer) -> None:
    token = issuer.mint(sub="alice", email="alice@corp.example", name="Alice", groups=["staff", "eng"])
    identity = issuer.verifier().verify(token)
    assert identity.subject == "alice"
    assert identity.email == "alice@corp.example"
    assert identity.groups == ("staff", "eng")


def test_an_independent_library_accepts_what_we_mint(issuer: TestIssuer) -> None:
    token = issuer.mint(sub="alice")
    key = pyjwt.PyJWK(issuer.jwks["keys"][0])
    claims = pyjwt.decode(token, key.key, algorithms=["ES256"], audience=AUDIENCE, issuer=issuer.issuer)
    assert claims["sub"] == "alice"


@pytest.mark.parametrize("make", [
    pytest.param(lambda i: tamper(i.mint(sub="alice"), sub="admin"), id="tampered-payload"),
    pytest.param(lambda i: i.mint(sub="alice", lifetime=-120), id="expired"),
    pytest.param(lambda i: TestIssuer(audience="https://payroll.corp.example", issuer=i.issuer).mint(), id="other-key"),
    pytest.param(lambda i: i.mint(aud="https://payroll.corp.example"), id="wrong-audience"),
    pytest.param(lambda i: i.mint(iss="https://rogue.example"), id="wrong-issuer"),
    pytest.param(lambda i: "not.a.jwt", id="garbage"),
    pytest.param(lambda i: "", id="missing"),
])
def test_bad_assertions_are_refused(issuer: TestIssuer, make: Any) -> None:
    with pytest.raises(AssertionInvalid):
        issuer.verifier().verify(make(issuer))


def test_replay_on_another_route_is_refused(issuer: TestIssuer) -> None:
    token = issuer.mint(sub="alice")
    other_route = Verifier(issuer=issuer.issuer, audience="https://payroll.corp.example", jwks=issuer.jwks)
    with pytest.raises(AssertionInvalid):
        other_route.verify(token)


def test_alg_none_and_hmac_confusion_are_refused(issuer: TestIssuer) -> None:
    now = int(time.time())
    claims = {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "admin", "exp": now + 60}
    unsigned = pyjwt.encode(claims, None, algorithm="none")
    with pytest.raises(AssertionInvalid):
        issuer.verifier().verify(unsigned)
    # HS256 "signed" with the public key's bytes: the classic key-confusion forgery.
    public_json = json.dumps(issuer.jwks["keys"][0]).encode()
    forged = jwt.encode({"alg": "HS256", "kid": issuer.jwks["keys"][0]["kid"]}, claims, OctKey.import_key(public_json))
    with pytest.raises(AssertionInvalid):
        issuer.verifier().verify(forged)


def test_issuer_and_audience_are_required() -> None:
    with pytest.raises(ValueError, match="required"):
        Verifier(issuer="", audience=AUDIENCE, jwks={"keys": []})
    with pytest.raises(ValueError):
        Verifier(issuer="https://x", audience=AUDIENCE, jwks={"keys": []}, algorithms=("HS256",))


class FakeJwksEndpoint:
    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.calls = 0

    def __call__(self, url: str) -> dict[str, Any]:
        self.calls += 1
        return self.jwks


def test_jwks_cached_and_refetched_on_unknown_kid_with_cooldown(issuer: TestIssuer) -> None:
    endpoint = FakeJwksEndpoint(issuer.jwks)
    now = [1000.0]
    verifier = Verifier(issuer=issuer.issuer, audience=AUDIENCE, jwks_url="https://proxy/jwks.json",
                        fetch=endpoint, clock=lambda: now[0], refetch_cooldown=30, cache_ttl=300)
    for _ in range(5):
        verifier.verify(issuer.mint())
    assert endpoint.calls == 1  # cached
    # A rotated key the cache does not know: one refetch picks it up.
    rotated = ECKey.generate_key("P-256", parameters={"kid": "rotated"}, private=True)
    endpoint.jwks = {"keys": [*issuer.jwks["keys"], rotated.as_dict(private=False)]}
    now[0] += 31
    token = jwt.encode({"alg": "ES256", "kid": "rotated"},
                       {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "bob", "exp": int(time.time()) + 60}, rotated)
    assert verifier.verify(token).subject == "bob"
    assert endpoint.calls == 2
    # Forged kids cannot make the app hammer the proxy: at most one fetch per cooldown.
    for index in range(10):
        forged_key = ECKey.generate_key("P-256", parameters={"kid": f"forged-{index}"}, private=True)
        forged = jwt.encode({"alg": "ES256", "kid": f"forged-{index}"},
                            {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
                            forged_key)
        with pytest.raises(AssertionInvalid):
            verifier.verify(forged)
    assert endpoint.calls == 2


def test_a_key_rotated_in_right_after_a_fetch_is_picked_up_at_once(issuer: TestIssuer) -> None:
    endpoint = FakeJwksEndpoint(issuer.jwks)
    now = [1000.0]
    verifier = Verifier(issuer=issuer.issuer, audience=AUDIENCE, jwks_url="https://proxy/jwks.json",
                        fetch=endpoint, clock=lambda: now[0], refetch_cooldown=30, cache_ttl=300)
    verifier.verify(issuer.mint())
    rotated = ECKey.generate_key("P-256", parameters={"kid": "rotated"}, private=True)
    endpoint.jwks = {"keys": [*issuer.jwks["keys"], rotated.as_dict(private=False)]}
    now[0] += 1  # the cooldown bounds refetches caused by unknown kids, not routine fetches
    token = jwt.encode({"alg": "ES256", "kid": "rotated"},
                       {"iss": issuer.issuer, "aud": AUDIENCE, "sub": "bob", "exp": int(time.time()) + 60}, rotated)
    assert verifier.verify(token).subject == "bob"
    assert endpoint.calls == 2
