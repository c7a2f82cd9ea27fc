"""The chain: order, registry, custom providers by import string, failing closed."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.posture import DevicePki, PostureSigner
from ztproxy.config import load_text
from ztproxy.config.devices import DevicesConfig
from ztproxy.errors import ConfigError
from ztproxy.policy.model import Device
from ztproxy.posture import BUILTIN_PROVIDERS, Posture, PostureProvider, PostureQuery, without_posture

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
QUERY = PostureQuery(peer_certificate=None, headers={}, subject="u-1", now=NOW)
ROUTES = "routes: [{name: app, upstream: 'http://127.0.0.1:1'}]"


class Stamp:
    """A custom provider: sets one field, records what it saw."""

    def __init__(self, field: str = "managed", value: Any = True, establish: str | None = None) -> None:
        self.field, self.value, self.establish = field, value, establish
        self.seen: list[Device | None] = []
        self.started = self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        self.seen.append(device)
        if device is None:
            return Device(id=self.establish) if self.establish else None
        return dataclasses.replace(device, **{self.field: self.value})

    async def close(self) -> None:
        self.closed += 1


class Broken(Stamp):
    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        raise RuntimeError("backend on fire")


class NotAProvider:
    def __init__(self, **options: Any) -> None:
        pass


def test_the_registry_names_every_builtin_section_in_chain_order() -> None:
    assert list(BUILTIN_PROVIDERS) == ["client_certificate", "signed", "inventory", "http"]
    assert [*BUILTIN_PROVIDERS, "custom"] == list(DevicesConfig.model_fields)


def test_the_chain_follows_the_documented_order_whatever_the_file_says(tmp_path: Path, device_pki: DevicePki,
                                                                      posture_signer: PostureSigner) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text("{}\n")
    config = load_text(f"""
server: {{tls: {device_pki.tls_yaml()}}}
devices:
  custom: [{{provider: '{__name__}:Stamp', options: {{field: score, value: 5}}}}]
  http: {{url: 'http://127.0.0.1:1/devices/{{device_id}}'}}
  inventory: {{file: '{inventory}'}}
  signed: {{public_key: {json.dumps(posture_signer.public_pem)}}}
  client_certificate: {{}}
{ROUTES}
""")
    assert Posture.from_config(config).names == ("client_certificate", "signed", "inventory", "http",
                                                 f"{__name__}:Stamp")


async def test_each_provider_refines_what_the_previous_one_said() -> None:
    first, second = Stamp(establish="d-1"), Stamp("score", 70)
    async with Posture([("first", first), ("second", second)]) as posture:
        assert await posture.device_for(QUERY) == Device(id="d-1", score=70)
    assert first.seen == [None] and second.seen == [Device(id="d-1")]
    assert (first.started, first.closed, second.started, second.closed) == (1, 1, 1, 1)


async def test_a_provider_that_raises_ends_the_chain_without_posture() -> None:
    establish, broken, after = Stamp(establish="d-1"), Broken(), Stamp("score", 90)
    posture = Posture([("cert", establish), ("managed", Stamp()), ("broken", broken), ("after", after)])
    with capture_logs() as logs:
        assert await posture.device_for(QUERY) == Device(id="d-1")  # managed=True from before is dropped
    assert after.seen == []
    assert logs[0]["event"] == "posture_provider_failed"
    assert logs[0]["provider"] == "broken"
    assert logs[0]["log_level"] == "error"
    assert await Posture([("broken", Broken())]).device_for(QUERY) is None


async def test_no_provider_means_no_device() -> None:
    async with Posture.from_config(load_text(ROUTES)) as posture:
        assert posture.names == ()
        assert await posture.device_for(QUERY) is None


def test_without_posture_keeps_only_the_id() -> None:
    assert without_posture(Device(id="d", managed=True, score=99, owner="u")) == Device(id="d")
    assert without_posture(None) is None


def test_a_custom_provider_gets_its_options_as_keyword_arguments() -> None:
    config = load_text(f"""
devices: {{custom: [{{provider: '{__name__}:Stamp', options: {{field: score, value: 5, establish: d-9}}}}]}}
{ROUTES}
""")
    assert Posture.from_config(config).names == (f"{__name__}:Stamp",)
    assert isinstance(Stamp(), PostureProvider)


@pytest.mark.parametrize(("provider", "message"), [
    ("nope", "invalid provider 'nope': expected an import string package.module:Class"),
    ("no_such_module_xyz:Thing", "cannot import 'no_such_module_xyz': ModuleNotFoundError: "
                                 "No module named 'no_such_module_xyz'"),
    (f"{__name__}:Missing", f"module '{__name__}' has no 'Missing'"),
    (f"{__name__}:ROUTES", f"'{__name__}:ROUTES' is not a class"),
])
def test_a_custom_provider_that_cannot_be_imported_is_a_config_error(provider: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(f"devices: {{custom: [{{provider: '{provider}'}}]}}\n{ROUTES}")
    assert [(issue.path, issue.message) for issue in caught.value.issues] == [("devices.custom[0].provider",
                                                                                message)]


def test_a_custom_provider_refusing_its_options_or_the_protocol_is_a_config_error() -> None:
    config = load_text(f"devices: {{custom: [{{provider: '{__name__}:Stamp', options: {{colour: red}}}}]}}\n{ROUTES}")
    with pytest.raises(ConfigError, match=r"devices.custom\[0\].provider: .*Stamp: TypeError: .*'colour'"):
        Posture.from_config(config)
    config = load_text(f"devices: {{custom: [{{provider: '{__name__}:NotAProvider'}}]}}\n{ROUTES}")
    with pytest.raises(ConfigError, match=r"does not implement PostureProvider \(async start, observe and close\)"):
        Posture.from_config(config)


def test_the_query_clock_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PostureQuery(peer_certificate=None, headers={}, subject=None, now=datetime(2026, 1, 1))
