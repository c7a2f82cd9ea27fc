"""The signed provider with keys from a real JWKS endpoint: rotation, cooldown, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from tests.conftest import Upstream, UpstreamFactory
from tests.support.posture import PostureSigner
from ztproxy.config.devices import SignedPostureConfig
from ztproxy.policy.model import Device
from ztproxy.posture import PostureQuery
from ztproxy.posture.signed import SignedPostureProvider

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Jwks:
    signers: list[PostureSigner]
    status: int = 200
    body: bytes | None = None
    server: Upstream | None = None
    documents: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fetches(self) -> int:
        assert self.server is not None
        return len(self.server.requests)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.body is not None or self.status != 200:
            return web.Response(status=self.status, body=self.body)
        return web.json_response({"keys": [key for signer in self.signers for key in signer.jwks()["keys"]]})


@pytest.fixture
async def jwks(start_upstream: UpstreamFactory, posture_signer: PostureSigner) -> Jwks:
    jwks = Jwks([posture_signer])
    jwks.server = await start_upstream(routes=[web.get("/jwks.json", jwks.handle)])
    return jwks


@pytest.fixture
async def signed(jwks: Jwks) -> AsyncIterator[SignedPostureProvider]:
    assert jwks.server is not None
    provider = SignedPostureProvider(SignedPostureConfig(jwks_url=f"{jwks.server.url}/jwks.json",
                                                         jwks_refetch_cooldown="30s", jwks_ttl="1h"))
    await provider.start()
    yield provider
    await provider.close()


def at(token: str, seconds: float = 0) -> PostureQuery:
    return PostureQuery(peer_certificate=None, headers=CIMultiDict({"X-Device-Posture": token}), subject=None,
                        now=NOW + timedelta(seconds=seconds))


async def test_keys_come_from_the_jwks_and_are_fetched_once(jwks: Jwks, signed: SignedPostureProvider,
                                                            posture_signer: PostureSigner) -> None:
    for device_id in ("a", "b", "c"):
        token = posture_signer.token(device_id, now=NOW, managed=True)
        assert await signed.observe(at(token), None) == Device(id=device_id, managed=True, last_seen=NOW)
    assert jwks.fetches == 1


async def test_a_rotated_key_is_found_by_refetching_within_the_cooldown(jwks: Jwks, signed: SignedPostureProvider,
                                                                        posture_signer: PostureSigner) -> None:
    assert await signed.observe(at(posture_signer.token("a", now=NOW)), None) is not None
    rotated = PostureSigner(kid="posture-2")
    jwks.signers.append(rotated)
    token = rotated.token("a", now=NOW, managed=True)
    with capture_logs() as logs:
        assert await signed.observe(at(token, 10), None) is None  # refetched at 0s: too soon
    assert "InvalidKeyIdError" in logs[0]["reason"]
    assert await signed.observe(at(token, 31), None) == Device(id="a", managed=True, last_seen=NOW)
    assert jwks.fetches == 2
    stranger = PostureSigner(kid="posture-3")
    for seconds in (40, 50, 62, 70, 80):  # unknown kids refetch at most once per cooldown (at 62)
        assert await signed.observe(at(stranger.token("a", now=NOW), seconds), None) is None
    assert jwks.fetches == 3


async def test_an_unavailable_or_invalid_jwks_gives_nothing(jwks: Jwks, signed: SignedPostureProvider,
                                                            posture_signer: PostureSigner) -> None:
    jwks.status = 503
    token = posture_signer.token("a", now=NOW, managed=True)
    with capture_logs() as logs:
        assert await signed.observe(at(token), Device(id="a")) == Device(id="a")
    assert [(log["event"], log.get("error") or log.get("reason")) for log in logs] == [
        ("posture_keys_unavailable", "the JWKS endpoint answered 503"),
        ("posture_token_rejected", "the posture keys (jwks_url) are unavailable")]
    jwks.status, jwks.body = 200, b'{"keys": [{"kty": "nope"}]}'
    with capture_logs() as logs:
        assert await signed.observe(at(token, 31), None) is None
    assert logs[0]["error"].startswith("invalid JWKS")
    jwks.body = None
    assert await signed.observe(at(token, 62), None) == Device(id="a", managed=True, last_seen=NOW)  # recovered


async def test_the_jwks_is_fetched_again_after_its_ttl(jwks: Jwks, signed: SignedPostureProvider,
                                                       posture_signer: PostureSigner) -> None:
    assert await signed.observe(at(posture_signer.token("a", now=NOW)), None) is not None
    later = NOW + timedelta(hours=1)
    assert await signed.observe(at(posture_signer.token("b", now=later), 3600), None) is not None
    assert jwks.fetches == 2
