"""The contract every posture provider keeps, run against each built-in one.

Each harness builds its provider from a real configuration (through the registry) over a
real source: certificates from a test CA, tokens signed by a test key, an inventory file,
an MDM-like HTTP server on loopback. The behaviours are the same for all: no identity input
gives no device, a known device gets its posture, an unknown one gains none, a revoked one
is dropped, a broken source fails closed, and nothing ever raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import UpstreamFactory
from tests.support.posture import DevicePki, PostureSigner
from ztproxy.config import load_text
from ztproxy.policy.model import Device
from ztproxy.posture import PostureProvider, PostureQuery
from ztproxy.posture.provider import build_providers

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
ROUTES = "routes: [{name: app, upstream: 'http://127.0.0.1:1'}]"
GOOD = {"managed": True, "disk_encrypted": True, "platform": "macos", "os_version": "14.2", "score": 90,
        "owner": "ada@corp.example", "last_seen": NOW.isoformat()}
GOOD_DEVICE = Device(id="dev-1", managed=True, disk_encrypted=True, platform="macos", os_version="14.2", score=90,
                     owner="ada@corp.example", last_seen=NOW)
ODD_IDS = ["", " ", "a/../../b", "x" * 300, "\u00e9\u4e2d", "a\nb", "%00", "{device_id}", "?x=1#y"]
Call = tuple[PostureQuery, Device | None]


def query(der: bytes | None = None, token: str | None = None) -> PostureQuery:
    headers = CIMultiDict({"X-Device-Posture": token} if token is not None else {})
    return PostureQuery(peer_certificate=der, headers=headers, subject="u-1", now=NOW)


def only_provider(config_text: str) -> PostureProvider:
    ((_, provider),) = build_providers(load_text(config_text))
    return provider


class Harness(Protocol):
    carries_posture: bool  # whether what the source knows shows up in the device (not for certificates)

    async def provider(self, known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        """A provider (not started) whose source knows ``known``, or is broken from the start."""

    def call_for(self, device_id: str) -> Call:
        """The identity input naming ``device_id``, as this provider receives it in the chain."""

    def garbage(self) -> list[Call]:
        """Malformed or hostile identity inputs."""


class CertificateHarness:
    carries_posture = False

    def __init__(self, pki: DevicePki) -> None:
        self.pki = pki
        self.broken = False

    async def provider(self, known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        self.broken = broken
        return only_provider(f"server: {{tls: {self.pki.tls_yaml()}}}\ndevices: {{client_certificate: {{}}}}\n{ROUTES}")

    def call_for(self, device_id: str) -> Call:
        if self.broken:  # what TLS would never pass: a certificate from another CA
            return query(self.pki.device(device_id, ca=self.pki.other_ca).der), None
        return query(self.pki.device(device_id).der), None

    def garbage(self) -> list[Call]:
        odd = [self.pki.device_ca.issue(uris=[f"urn:device:{name}"]).der for name in ODD_IDS if name.isascii()]
        return [(query(der), None) for der in [b"", b"\x30", b"\x30\x82\xff\xff" + b"\0" * 64, *odd]]


class SignedHarness:
    carries_posture = True

    def __init__(self, signer: PostureSigner) -> None:
        self.signer = signer
        self.trusted_pem = signer.public_pem
        self.known: dict[str, dict[str, Any]] = {}

    async def provider(self, known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        self.known = known
        if broken:
            self.signer = PostureSigner()  # tokens from a key the provider does not trust
        return only_provider(f"devices: {{signed: {{public_key: {json.dumps(self.trusted_pem)}}}}}\n{ROUTES}")

    def call_for(self, device_id: str) -> Call:
        claims = {name: value for name, value in self.known.get(device_id, {}).items() if name != "last_seen"}
        return query(token=self.signer.token(device_id, now=NOW, **claims)), None

    def garbage(self) -> list[Call]:
        tokens = ["", "a.b.c", "x" * 70_000, self.signer.token("a", now=NOW, score="high"),
                  *(self.signer.token(name, now=NOW) for name in ODD_IDS)]
        return [(query(token=token), device) for token in tokens for device in (None, Device(id="a"))]


class InventoryHarness:
    carries_posture = True

    def __init__(self, directory: Path) -> None:
        self.path = directory / "devices.json"
        self.path.write_text("{}")

    async def provider(self, known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        self.path.write_text(json.dumps(known) + ("\n}" if broken else ""))
        return only_provider(f"devices: {{inventory: {{file: '{self.path}', reload_interval: 1h}}}}\n{ROUTES}")

    def call_for(self, device_id: str) -> Call:
        return query(), Device(id=device_id)

    def garbage(self) -> list[Call]:
        return [(query(), Device(id=name)) for name in ODD_IDS]


class HttpHarness:
    carries_posture = True

    def __init__(self, start_upstream: UpstreamFactory) -> None:
        self.start_upstream = start_upstream
        self.known: dict[str, dict[str, Any]] = {}
        self.broken = False

    async def handle(self, request: web.Request) -> web.Response:
        if self.broken:
            return web.Response(status=500, text="MDM on fire")
        record = self.known.get(request.match_info["device_id"])
        return web.json_response(record) if record is not None else web.Response(status=404)

    async def provider(self, known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        self.known, self.broken = known, broken
        mdm = await self.start_upstream(routes=[web.get("/devices/{device_id}", self.handle)])
        return only_provider(f"devices: {{http: {{url: '{mdm.url}/devices/{{device_id}}'}}}}\n{ROUTES}")

    def call_for(self, device_id: str) -> Call:
        return query(), Device(id=device_id)

    def garbage(self) -> list[Call]:
        return [(query(), Device(id=name)) for name in ODD_IDS]


MakeProvider = Callable[..., Awaitable[PostureProvider]]
ALL = ["client_certificate", "signed", "inventory", "http"]
WITH_POSTURE = ["signed", "inventory", "http"]


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    kind = request.param
    if kind == "client_certificate":
        return CertificateHarness(request.getfixturevalue("device_pki"))
    if kind == "signed":
        return SignedHarness(request.getfixturevalue("posture_signer"))
    if kind == "inventory":
        return InventoryHarness(tmp_path)
    return HttpHarness(request.getfixturevalue("start_upstream"))


@pytest.fixture
async def make(harness: Harness) -> AsyncIterator[MakeProvider]:
    providers: list[PostureProvider] = []

    async def make(known: dict[str, dict[str, Any]], *, broken: bool = False) -> PostureProvider:
        provider = await harness.provider(known, broken=broken)
        await provider.start()
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()
        await provider.close()


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_no_identity_input_gives_no_device(make: MakeProvider) -> None:
    provider = await make({"dev-1": GOOD})
    assert await provider.observe(query(), None) is None


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_a_known_device_gets_its_posture(harness: Harness, make: MakeProvider) -> None:
    provider = await make({"dev-1": GOOD})
    device = await provider.observe(*harness.call_for("dev-1"))
    assert device == (GOOD_DEVICE if harness.carries_posture else Device(id="dev-1"))


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_an_unknown_device_gains_no_posture(harness: Harness, make: MakeProvider) -> None:
    provider = await make({"dev-1": GOOD})
    assert await provider.observe(*harness.call_for("dev-2")) in (None, Device(id="dev-2"))


@pytest.mark.parametrize("harness", WITH_POSTURE, indirect=True)
async def test_a_revoked_device_gets_no_device(harness: Harness, make: MakeProvider) -> None:
    provider = await make({"dev-1": {**GOOD, "revoked": True}})
    assert await provider.observe(*harness.call_for("dev-1")) is None


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_a_broken_source_fails_closed(harness: Harness, make: MakeProvider) -> None:
    provider = await make({"dev-1": GOOD}, broken=True)
    assert await provider.observe(*harness.call_for("dev-1")) in (None, Device(id="dev-1"))


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_garbage_never_raises_nor_gains_posture(harness: Harness, make: MakeProvider) -> None:
    provider = await make({"dev-1": GOOD})
    for call in harness.garbage():
        device = await provider.observe(*call)
        given = call[1]
        assert device is None or device == given or device == Device(id=device.id)


@pytest.mark.parametrize("harness", ALL, indirect=True)
async def test_close_without_start_is_fine(harness: Harness) -> None:
    provider = await harness.provider({})
    await provider.close()
