"""The ``inventory`` provider: device posture from a YAML or JSON file, reloaded when it changes.

The file maps device ids to posture records (``ztproxy.posture.record``)::

    mbp-0042:
      managed: true
      owner: ada@corp.example
      platform: macos
      os_version: "14.2.1"
      disk_encrypted: true
      last_seen: 2026-11-23T09:00:00Z
      score: 90
    old-laptop: {revoked: true}

A known id gets the fields its record states; a revoked one gets no device at all. An id the
inventory does not list keeps the device as the earlier providers described it (with just its
id that is an unmanaged device: the criteria then say device-unmanaged, not device-unknown).
The inventory cannot establish a device by itself: without an id it adds nothing.

A background task looks at the file's size and modification time every ``reload_interval``
and reads it again when they change, so requests never touch the file system. A file that
cannot be read or is invalid (any entry) keeps the last good inventory, with an error event;
at start, before any good one, the inventory is empty (every device is unknown to it).
Replace the file atomically (write another file, then rename it over this one).
This module imports no aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import yaml

from ztproxy.config.devices import InventoryConfig
from ztproxy.config.schema import Config
from ztproxy.policy.model import Device
from ztproxy.posture.provider import PostureQuery
from ztproxy.posture.record import PostureRecord, parse_record, valid_device_id

log = structlog.get_logger("ztproxy.posture")

_Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
# A file modified this recently may change again within the file system's timestamp
# granularity without its signature changing ("racy" in git's words): compare its bytes too.
_RACY_SECONDS = 2.0
_UNREADABLE: _Signature = (-1, -1, -1, -1)


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, refusing a device listed twice (the second entry would win silently)."""


def _unique_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            raise ValueError(f"line {key_node.start_mark.line + 1}: a device id must be a string "
                             "(quote ids that look like numbers or dates: \"12345\")")
        if key in seen:
            raise ValueError(f"line {key_node.start_mark.line + 1}: {key!r} is listed twice")
        seen.add(key)
    return dict(loader.construct_mapping(node, deep=deep))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"{key!r} is listed twice")
        result[key] = value
    return result


def parse_inventory(text: bytes, *, as_json: bool) -> dict[str, PostureRecord]:
    """The records of an inventory file's content; ValueError saying what is wrong."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs) if as_json \
            else yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ValueError(f"invalid YAML{f' at line {mark.line + 1}' if mark else ''}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid YAML: {exc}") from None
    if data is None:
        raise ValueError("the file is empty; write {} for an inventory without devices")
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a mapping of device id -> posture, got {type(data).__name__}")
    records: dict[str, PostureRecord] = {}
    for device_id, entry in data.items():
        if not valid_device_id(device_id):
            raise ValueError(f"invalid device id {device_id!r}: 1-256 printable characters, "
                             "no space at either end")
        try:
            records[device_id] = parse_record({} if entry is None else entry)
        except ValueError as exc:
            raise ValueError(f"{device_id}: {exc}") from None
    return records


class InventoryProvider:
    def __init__(self, *, path: str | os.PathLike[str], reload_interval: float) -> None:
        self._path = Path(path)
        self._as_json = self._path.suffix.lower() == ".json"
        self._reload_interval = reload_interval
        self._records: dict[str, PostureRecord] = {}
        self._signature: _Signature | None = None
        self._digest: bytes | None = None  # of the content last parsed, valid or not
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, settings: InventoryConfig, config: Config) -> InventoryProvider:
        return cls(path=settings.file, reload_interval=settings.reload_interval)

    @property
    def size(self) -> int:
        return len(self._records)

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._watch(), name="posture-inventory-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        if device is None:
            return None
        record = self._records.get(device.id)
        return device if record is None else record.apply(device)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval)
            try:
                await self.reload()
            except Exception:  # the watcher must outlive any surprise; requests keep the last inventory
                log.exception("device_inventory_reload_failed", file=str(self._path))

    async def reload(self) -> None:
        """Read the file again if it changed since the last look."""
        try:
            signature = self._stat()
        except OSError as exc:
            self._unreadable(exc)
            return
        racy = time.time() - signature[2] / 1e9 < _RACY_SECONDS
        if signature == self._signature and not racy:
            return
        try:
            content = await asyncio.to_thread(self._path.read_bytes)
            if self._stat() != signature:
                return  # written to while read: look again next time
        except OSError as exc:
            self._unreadable(exc)
            return
        self._signature = signature
        digest = hashlib.sha256(content).digest()
        if digest == self._digest:
            return
        self._digest = digest
        try:
            records = await asyncio.to_thread(parse_inventory, content, as_json=self._as_json)
        except ValueError as exc:
            log.error("device_inventory_invalid", file=str(self._path), error=str(exc), devices=len(self._records))
            return
        self._records = records
        log.info("device_inventory_loaded", file=str(self._path), devices=len(records))

    def _unreadable(self, exc: OSError) -> None:
        if self._signature is not _UNREADABLE:  # said once, not at every interval
            log.error("device_inventory_unreadable", file=str(self._path), error=exc.strerror or str(exc),
                      devices=len(self._records))
        self._signature, self._digest = _UNREADABLE, None

    def _stat(self) -> _Signature:
        stat = os.stat(self._path)
        return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
