"""The http provider against a real MDM-like HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import Upstream, UpstreamFactory, free_port
from ztproxy.policy.model import Device
from ztproxy.posture import PostureQuery
from ztproxy.posture.http import HttpPostureProvider

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(seconds: float = 0) -> PostureQuery:
    return PostureQuery(peer_certificate=None, headers={}, subject=None, now=NOW + timedelta(seconds=seconds))


@dataclass
class Mdm:
    """What the endpoint answers: a record per device id, or a status / body override."""

    records: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    body: bytes | None = None
    stall: asyncio.Event | None = None  # set: answer; unset: hang until the client gives up
    server: Upstream | None = None

    @property
    def asked(self) -> list[str]:
        assert self.server is not None
        return [request.match_info["device_id"] for request in self.server.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.stall is not None:
            await self.stall.wait()
        if self.status is not None or self.body is not None:
            return web.Response(status=self.status or 200, body=self.body)
        record = self.records.get(request.match_info["device_id"])
        return web.json_response(record) if record is not None else web.json_response({}, status=404)


MakeProvider = Callable[..., Awaitable[HttpPostureProvider]]


@pytest.fixture
async def mdm(start_upstream: UpstreamFactory) -> Mdm:
    mdm = Mdm()
    mdm.server = await start_upstream(routes=[web.get("/api/devices/{device_id}/posture", mdm.handle)])
    return mdm


@pytest.fixture
async def make_provider(mdm: Mdm) -> AsyncIterator[MakeProvider]:
    started: list[HttpPostureProvider] = []

    async def make(**settings: Any) -> HttpPostureProvider:
        assert mdm.server is not None
        options: dict[str, Any] = {"url": f"{mdm.server.url}/api/devices/{{device_id}}/posture", "token": None,
                                   "timeout": 2.0, "cache_ttl": 30.0, "cache_size": 100} | settings
        provider = HttpPostureProvider(**options)
        await provider.start()
        started.append(provider)
        return provider

    yield make
    for provider in started:
        await provider.close()


async def test_known_unknown_and_revoked_devices(mdm: Mdm, make_provider: MakeProvider) -> None:
    mdm.records = {"mbp-42": {"managed": True, "platform": "macos", "os_version": "14.2", "score": 70,
                              "last_seen": "2026-11-23T11:59:00Z"},
                   "gone": {"revoked": True}}
    provider = await make_provider()
    assert await provider.observe(at(), Device(id="mbp-42", owner="u-1")) == Device(
        id="mbp-42", owner="u-1", managed=True, platform="macos", os_version="14.2", score=70,
        last_seen=datetime(2026, 11, 23, 11, 59, tzinfo=UTC))
    assert await provider.observe(at(), Device(id="stranger", managed=True)) == Device(id="stranger", managed=True)
    assert await provider.observe(at(), Device(id="gone")) is None
    assert await provider.observe(at(), None) is None
    assert mdm.asked == ["mbp-42", "stranger", "gone"]


async def test_the_token_is_sent_and_the_id_is_escaped(mdm: Mdm, make_provider: MakeProvider) -> None:
    provider = await make_provider(token="s3cret")
    assert await provider.observe(at(), Device(id="../../admin?x=1#y")) == Device(id="../../admin?x=1#y")
    assert mdm.server is not None
    (request,) = mdm.server.requests
    assert request.raw_path == "/api/devices/..%2F..%2Fadmin%3Fx%3D1%23y/posture"
    assert request.headers["Authorization"] == "Bearer s3cret"


async def test_answers_are_cached_for_the_ttl_and_a_change_is_seen_after_it(mdm: Mdm,
                                                                           make_provider: MakeProvider) -> None:
    mdm.records = {"d": {"managed": True, "disk_encrypted": True}}
    provider = await make_provider(cache_ttl=30.0)
    assert (await provider.observe(at(0), Device(id="d"))) == Device(id="d", managed=True, disk_encrypted=True)
    mdm.records = {"d": {"managed": True, "disk_encrypted": False}}  # the device falls out of compliance
    assert (await provider.observe(at(29), Device(id="d"))) == Device(id="d", managed=True, disk_encrypted=True)
    assert (await provider.observe(at(30), Device(id="d"))) == Device(id="d", managed=True, disk_encrypted=False)
    assert mdm.asked == ["d", "d"]
    await provider.observe(at(20), Device(id="d"))  # a clock set back does not stretch the TTL
    assert mdm.asked == ["d", "d", "d"]


@pytest.mark.parametrize(("status", "body", "error"), [
    (500, b"oops", "the endpoint answered 500"),
    (302, b"", "the endpoint answered 302"),
    (200, b"{not json", "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
                        "(char 1)"),
    (200, b"[1, 2]", "invalid posture: expected a mapping of posture fields, got list"),
    (200, b'{"managed": true, "colour": "red"}', "invalid posture: colour: Extra inputs are not permitted"),
    (200, b'{"managed": "maybe"}', "invalid posture: managed: Input should be a valid boolean, "
                                   "unable to interpret input"),
    (200, b"\x80\x81", "invalid JSON: 'utf-8' codec can't decode byte 0x80 in position 0: "
                       "invalid start byte"),
    (200, b'{"a": "' + b"x" * 70_000 + b'"}', "the answer is larger than 65536 bytes"),
])
async def test_a_bad_answer_fails_closed(mdm: Mdm, make_provider: MakeProvider, status: int, body: bytes,
                                         error: str) -> None:
    mdm.status, mdm.body = status, body
    provider = await make_provider()
    with capture_logs() as logs:
        assert await provider.observe(at(), Device(id="d", managed=True, score=99)) == Device(id="d")
    assert logs == [{"event": "device_posture_unavailable", "device_id": "d", "error": error,
                     "log_level": "warning"}]


async def test_a_timeout_fails_closed_and_failures_are_cached_briefly(mdm: Mdm,
                                                                      make_provider: MakeProvider) -> None:
    mdm.stall = asyncio.Event()
    provider = await make_provider(timeout=0.2)
    with capture_logs() as logs:
        assert await provider.observe(at(), Device(id="d", managed=True)) == Device(id="d")
    assert logs[0]["error"] == "no answer within 0.2s"
    mdm.stall.set()
    mdm.records = {"d": {"managed": True}}
    assert await provider.observe(at(4.9), Device(id="d")) == Device(id="d")  # the failure, remembered
    assert await provider.observe(at(5), Device(id="d")) == Device(id="d", managed=True)


async def test_an_unreachable_endpoint_fails_closed() -> None:
    provider = HttpPostureProvider(url=f"http://127.0.0.1:{free_port()}/{{device_id}}", token=None, timeout=2.0,
                                   cache_ttl=30.0, cache_size=10)
    await provider.start()
    try:
        with capture_logs() as logs:
            assert await provider.observe(at(), Device(id="d", managed=True)) == Device(id="d")
        assert logs[0]["error"].startswith("ClientConnectorError")
    finally:
        await provider.close()
    unstarted = HttpPostureProvider(url="http://127.0.0.1:1/{device_id}", token=None, timeout=1.0, cache_ttl=1.0,
                                    cache_size=1)
    assert await unstarted.observe(at(), Device(id="d", managed=True)) == Device(id="d")
    await unstarted.close()


async def test_concurrent_requests_share_one_call(mdm: Mdm, make_provider: MakeProvider) -> None:
    mdm.records = {"d": {"managed": True}}
    mdm.stall = asyncio.Event()
    provider = await make_provider()
    waiting = [asyncio.create_task(provider.observe(at(), Device(id="d"))) for _ in range(20)]
    await asyncio.sleep(0.05)
    waiting[0].cancel()  # a client that leaves does not cancel the call the others wait for
    mdm.stall.set()
    results = await asyncio.gather(*waiting[1:])
    assert results == [Device(id="d", managed=True)] * 19
    assert mdm.asked == ["d"]


async def test_the_cache_is_bounded(mdm: Mdm, make_provider: MakeProvider) -> None:
    mdm.records = {name: {"managed": True} for name in "abc"}
    provider = await make_provider(cache_size=2)
    for name in "abca":  # c pushes out a, the least recently used
        await provider.observe(at(), Device(id=name))
    assert mdm.asked == ["a", "b", "c", "a"]
