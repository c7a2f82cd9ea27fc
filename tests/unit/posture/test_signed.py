"""The signed provider with a pinned public key: valid tokens refine the device, others give nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey
from multidict import CIMultiDict
from structlog.testing import capture_logs

from tests.support.posture import PostureSigner
from ztproxy.config.devices import SignedPostureConfig
from ztproxy.policy.model import Device
from ztproxy.posture import PostureQuery
from ztproxy.posture.signed import SignedPostureProvider

NOW = datetime.now(UTC).replace(microsecond=0)


def provider(signer: PostureSigner, **settings: Any) -> SignedPostureProvider:
    return SignedPostureProvider(SignedPostureConfig(public_key=signer.public_pem, **settings))


def query(token: str | None, now: datetime = NOW, header: str = "x-device-posture") -> PostureQuery:
    headers = CIMultiDict({header: token} if token is not None else {})
    return PostureQuery(peer_certificate=None, headers=headers, subject=None, now=now)


async def rejected(signed: SignedPostureProvider, token: str, device: Device | None = None,
                   now: datetime = NOW) -> str:
    """The token gives nothing: the device comes back unchanged; the reason logged."""
    with capture_logs() as logs:
        assert await signed.observe(query(token, now), device) == device
    assert [log["event"] for log in logs] == ["posture_token_rejected"]
    return str(logs[0]["reason"])


async def test_a_valid_token_establishes_the_device_with_its_posture(posture_signer: PostureSigner) -> None:
    token = posture_signer.token("mbp-42", now=NOW, managed=True, disk_encrypted=True, platform="macOS",
                                 os_version="14.2", score=88, owner="ada@corp.example", firewall=True,
                                 extra_claim="ignored")
    device = await provider(posture_signer).observe(query(token), None)
    assert device == Device(id="mbp-42", managed=True, disk_encrypted=True, platform="macos", os_version="14.2",
                            score=88, owner="ada@corp.example", last_seen=NOW)  # last_seen defaults to iat


async def test_sub_names_the_device_when_device_id_is_absent(posture_signer: PostureSigner) -> None:
    token = posture_signer.token(None, now=NOW, sub="mbp-9", last_seen=int((NOW - timedelta(hours=1)).timestamp()))
    assert await provider(posture_signer).observe(query(token), None) == Device(
        id="mbp-9", last_seen=NOW - timedelta(hours=1))


async def test_the_token_must_name_the_certificates_device(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer)
    token = posture_signer.token("mbp-42", now=NOW, managed=True)
    assert await signed.observe(query(token), Device(id="mbp-42")) == Device(id="mbp-42", managed=True,
                                                                             last_seen=NOW)
    reason = await rejected(signed, token, Device(id="other-laptop"))
    assert reason == "it is for another device than the certificate's (other-laptop)"


async def test_require_client_certificate_ignores_tokens_without_one(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer, require_client_certificate=True)
    token = posture_signer.token("mbp-42", now=NOW, managed=True)
    assert await rejected(signed, token) == "no client certificate names its device"
    assert (await signed.observe(query(token), Device(id="mbp-42"))) == Device(id="mbp-42", managed=True,
                                                                              last_seen=NOW)


async def test_a_revoked_device_gets_no_device(posture_signer: PostureSigner) -> None:
    token = posture_signer.token("mbp-42", now=NOW, revoked=True)
    assert await provider(posture_signer).observe(query(token), Device(id="mbp-42")) is None


async def test_no_header_changes_nothing_and_the_name_is_configurable(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer, header="X-Agent-Posture")
    assert await signed.observe(query(None), Device(id="a")) == Device(id="a")
    token = posture_signer.token("a", now=NOW, managed=True)
    assert await signed.observe(query(token), None) is None  # in X-Device-Posture: not looked at
    assert await signed.observe(query(token, header="x-agent-posture"), None) == Device(id="a", managed=True,
                                                                                        last_seen=NOW)


async def test_time_claims_are_checked_at_every_use(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer, clock_skew="30s")
    token = posture_signer.token("a", now=NOW, lifetime=120)
    assert await signed.observe(query(token, NOW + timedelta(seconds=149)), None) is not None
    assert "ExpiredTokenError" in await rejected(signed, token, now=NOW + timedelta(seconds=151))
    future = posture_signer.token("a", now=NOW + timedelta(minutes=2))
    assert "issued in the future" in await rejected(signed, future)
    later = posture_signer.token("a", now=NOW, nbf=int(NOW.timestamp()) + 60)
    assert "not yet valid" in await rejected(signed, later)


@pytest.mark.parametrize(("claims", "reason"), [
    ({"exp": None}, "MissingClaimError: missing_claim: Missing claim: 'exp'"),
    ({"iat": None}, "MissingClaimError: missing_claim: Missing claim: 'iat'"),
    ({"exp": "tomorrow"}, "InvalidClaimError: invalid_claim: Claim 'exp' must be a NumericDate value"),
    ({"device_id": 42}, "it names no valid device id (device_id or sub)"),
    ({"device_id": None}, "it names no valid device id (device_id or sub)"),
    ({"device_id": "x" * 300}, "it names no valid device id (device_id or sub)"),
    ({"managed": "perhaps"}, "invalid posture claims: managed: Input should be a valid boolean, "
                             "unable to interpret input"),
    ({"score": 101}, "invalid posture claims: score: Input should be less than or equal to 100"),
])
async def test_malformed_claims_give_nothing(posture_signer: PostureSigner, claims: dict[str, Any],
                                            reason: str) -> None:
    device_id = claims.pop("device_id", "a")
    assert await rejected(provider(posture_signer), posture_signer.token(device_id, now=NOW, **claims)) == reason


async def test_the_lifetime_is_bounded(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer, max_lifetime="5m")
    assert await signed.observe(query(posture_signer.token("a", now=NOW, lifetime=300)), None) is not None
    reason = await rejected(signed, posture_signer.token("a", now=NOW, lifetime=301))
    assert reason == "it lives longer than 300s (exp - iat)"


async def test_issuer_and_audience_when_configured(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer, issuer="https://agent.corp.example", audience="ztproxy")
    good = posture_signer.token("a", now=NOW, iss="https://agent.corp.example", aud=["other", "ztproxy"])
    assert await signed.observe(query(good), None) is not None
    for claims in ({"iss": "https://evil.example", "aud": "ztproxy"}, {"iss": "https://agent.corp.example"},
                   {"iss": "https://agent.corp.example", "aud": "other"}, {"aud": "ztproxy"}):
        assert "ClaimError" in await rejected(signed, posture_signer.token("a", now=NOW, **claims))


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_tokens_give_nothing(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer)
    claims = {"device_id": "a", "managed": True, "iat": int(NOW.timestamp()), "exp": int(NOW.timestamp()) + 60}
    other_key = PostureSigner()
    assert "BadSignatureError" in await rejected(signed, other_key.token("a", now=NOW, managed=True))
    header, _, signature = posture_signer.token("a", now=NOW).split(".")
    assert "BadSignatureError" in await rejected(signed, f"{header}.{_b64(claims)}.{signature}")  # tampered
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert "UnsupportedAlgorithmError" in await rejected(signed, unsigned)
    # RFC 8725 2.1: the public key used as an HMAC secret must not verify anything.
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(posture_signer.public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert "UnsupportedAlgorithmError" in await rejected(signed, confused)
    rsa_key = RSAKey.import_key(rsa.generate_private_key(65537, 2048))
    assert "UnsupportedAlgorithmError" in await rejected(signed, jwt.encode({"alg": "RS256"}, claims, rsa_key))


@pytest.mark.parametrize("garbage", ["", "a.b.c", "....", "x" * 20_000, "Bearer abc", "\u00e9.\u00e9.\u00e9",
                                     "eyJhbGciOiJFUzI1NiJ9.eyJ.sig", "a.b.c.d.e"])
async def test_garbage_gives_nothing_and_never_raises(posture_signer: PostureSigner, garbage: str) -> None:
    await rejected(provider(posture_signer), garbage, Device(id="a"))


async def test_a_verified_token_is_remembered_but_still_expires(posture_signer: PostureSigner) -> None:
    signed = provider(posture_signer)
    token = posture_signer.token("a", now=NOW, lifetime=60)
    first = await signed.observe(query(token), None)
    assert await signed.observe(query(token), None) == first
    assert "ExpiredTokenError" in await rejected(signed, token, now=NOW + timedelta(seconds=120))
