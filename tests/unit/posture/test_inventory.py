"""The inventory provider: the file format, reloading, and keeping the last good inventory."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ztproxy.policy.model import Device
from ztproxy.posture import PostureQuery
from ztproxy.posture.inventory import InventoryProvider, parse_inventory

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
QUERY = PostureQuery(peer_certificate=None, headers={}, subject=None, now=NOW)
GOOD = """
mbp-42:
  managed: true
  owner: ada@corp.example
  platform: macOS
  os_version: "14.2.1"
  disk_encrypted: true
  firewall: true
  last_seen: 2026-11-23T09:00:00Z
  score: 90
old-laptop: {revoked: true}
bare:
"""


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as the documentation asks."""
    partial = path.with_suffix(".tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


@pytest.fixture
async def inventory(tmp_path: Path) -> AsyncIterator[tuple[InventoryProvider, Path]]:
    path = tmp_path / "devices.yaml"
    write(path, GOOD)
    provider = InventoryProvider(path=path, reload_interval=3600)  # reloads are driven by the tests
    await provider.start()
    yield provider, path
    await provider.close()


async def test_a_listed_device_gets_the_fields_its_record_states(inventory: tuple[InventoryProvider, Path]) -> None:
    provider, _ = inventory
    device = await provider.observe(QUERY, Device(id="mbp-42", score=10))
    assert device == Device(id="mbp-42", managed=True, disk_encrypted=True, platform="macos", os_version="14.2.1",
                            last_seen=datetime(2026, 11, 23, 9, 0, tzinfo=UTC), score=90, owner="ada@corp.example")
    partial = Device(id="bare", managed=True, platform="linux")
    assert await provider.observe(QUERY, partial) == partial  # an empty record states nothing


async def test_revoked_unknown_and_missing_ids(inventory: tuple[InventoryProvider, Path]) -> None:
    provider, _ = inventory
    assert await provider.observe(QUERY, Device(id="old-laptop", managed=True)) is None
    assert await provider.observe(QUERY, Device(id="stranger")) == Device(id="stranger")
    assert await provider.observe(QUERY, None) is None  # the inventory names no device by itself


async def test_a_change_is_read_and_a_broken_one_keeps_the_last_good_inventory(
        inventory: tuple[InventoryProvider, Path]) -> None:
    provider, path = inventory
    write(path, GOOD.replace("managed: true", "managed: false"))
    with capture_logs() as logs:
        await provider.reload()
    assert logs == [{"event": "device_inventory_loaded", "file": str(path), "devices": 3, "log_level": "info"}]
    assert (await provider.observe(QUERY, Device(id="mbp-42"))).managed is False  # type: ignore[union-attr]
    write(path, GOOD.replace("score: 90", "score: 900"))
    with capture_logs() as logs:
        await provider.reload()
        await provider.reload()  # the same broken content is reported once
    assert [log["event"] for log in logs] == ["device_inventory_invalid"]
    assert logs[0]["error"] == "mbp-42: score: Input should be less than or equal to 100"
    assert logs[0]["log_level"] == "error"
    assert (await provider.observe(QUERY, Device(id="mbp-42"))).score == 90  # type: ignore[union-attr]
    path.unlink()
    with capture_logs() as logs:
        await provider.reload()
        await provider.reload()
    assert [log["event"] for log in logs] == ["device_inventory_unreadable"]
    assert provider.size == 3


async def test_a_rewrite_of_the_same_size_within_the_same_second_is_seen(
        inventory: tuple[InventoryProvider, Path]) -> None:
    provider, path = inventory
    for score in ("11", "12", "13"):  # same length, quick succession, mtime granularity may not tell
        path.write_text(GOOD.replace("90", score), encoding="utf-8")
        await provider.reload()
        assert (await provider.observe(QUERY, Device(id="mbp-42"))).score == int(score)  # type: ignore[union-attr]


async def test_the_watcher_picks_up_changes_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "devices.json"
    write(path, json.dumps({"d1": {"managed": True}}))
    provider = InventoryProvider(path=path, reload_interval=0.02)
    await provider.start()
    try:
        assert await provider.observe(QUERY, Device(id="d1")) == Device(id="d1", managed=True)
        write(path, json.dumps({"d1": {"managed": False}}))
        for _ in range(500):
            if await provider.observe(QUERY, Device(id="d1")) == Device(id="d1", managed=False):
                break
            await asyncio.sleep(0.01)
        assert await provider.observe(QUERY, Device(id="d1")) == Device(id="d1", managed=False)
    finally:
        await provider.close()
        await provider.close()  # twice is fine


async def test_a_broken_file_at_start_gives_an_empty_inventory(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    write(path, "mbp-42: {managed: yes, colour: red}\n")
    provider = InventoryProvider(path=path, reload_interval=3600)
    with capture_logs() as logs:
        await provider.start()
    await provider.close()
    assert logs[0]["error"] == "mbp-42: colour: Extra inputs are not permitted"
    assert provider.size == 0
    assert await provider.observe(QUERY, Device(id="mbp-42")) == Device(id="mbp-42")


@pytest.mark.parametrize(("text", "error"), [
    ("", "the file is empty; write {} for an inventory without devices"),
    ("- a\n- b\n", "expected a mapping of device id -> posture, got list"),
    ("a: {managed: true}\na: {revoked: true}\n", "line 2: 'a' is listed twice"),
    ("a: [1\n", "invalid YAML at line 2: did not find expected ',' or ']'"),
    ("a: {os_version: 14.10}\n", 'a: os_version: write versions in quotes, e.g. "14.2" '
                                 "(YAML read this one as the number 14.1)"),
    ("a: {last_seen: 2026-11-23 09:00:00}\n", "a: last_seen: Input should have timezone info"),
    ("a: {managed: maybe}\n", "a: managed: Input should be a valid boolean, unable to interpret input"),
    ("a: 3\n", "a: expected a mapping of posture fields, got int"),
    ("? [a, b]\n: {}\n", 'line 1: a device id must be a string (quote ids that look like numbers or dates: "12345")'),
    ("12345: {}\n", 'line 1: a device id must be a string (quote ids that look like numbers or dates: "12345")'),
    ('"a\\x01": {}\n', "invalid device id 'a\\x01': 1-256 printable characters, no space at either end"),
    ('" a": {}\n', "invalid device id ' a': 1-256 printable characters, no space at either end"),
    ("!!python/object:os.system {}\n", "invalid YAML at line 1: could not determine a constructor for the tag "
                                       "'tag:yaml.org,2002:python/object:os.system'"),
])
def test_yaml_inventories_are_checked_whole(text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_inventory(text.encode(), as_json=False)
    assert str(caught.value) == error


@pytest.mark.parametrize(("text", "error"), [
    ('{"a": {}, "a": {"revoked": true}}', "'a' is listed twice"),
    ('{"a": ', "Expecting value: line 1 column 7 (char 6)"),
    ('{"a": {"score": "high"}}', "a: score: Input should be a valid integer, unable to parse string as an integer"),
])
def test_json_inventories_are_checked_whole(text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_inventory(text.encode(), as_json=True)
    assert str(caught.value) == error


def test_json_and_yaml_say_the_same() -> None:
    data = {"d": {"managed": True, "last_seen": "2026-11-23T09:00:00+01:00", "os_version": "10.0.22631"}}
    assert parse_inventory(json.dumps(data).encode(), as_json=True) == parse_inventory(
        b"d: {managed: true, last_seen: 2026-11-23T09:00:00+01:00, os_version: '10.0.22631'}", as_json=False)
