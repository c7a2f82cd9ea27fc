"""A posture record: what the inventory, the MDM endpoint and posture tokens say about a device.

One schema for the three sources, so a field means the same everywhere. A record states
some fields; applying it to a device replaces exactly those, so providers later in the
chain refine what earlier ones said. Unknown fields are errors (a mistyped ``revoked``
must not pass unnoticed). The values come from outside the configuration, so this is a
plain pydantic model: it never reads files the way config models read ``*_file`` keys.
This module imports no aiohttp.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeGuard

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ztproxy.config.values import OsVersion, Platform
from ztproxy.policy.model import Device

# The fields of a record that are fields of Device too (revoked and firewall are not).
_DEVICE_FIELDS = ("managed", "disk_encrypted", "platform", "os_version", "last_seen", "score", "owner")
_MAX_DEVICE_ID = 256


def valid_device_id(value: object) -> TypeGuard[str]:
    """1-256 printable characters, no space at either end (it ends up in logs and claims)."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_DEVICE_ID and value.isprintable() \
        and value == value.strip()


class PostureRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    managed: bool = False
    disk_encrypted: bool = False
    firewall: bool | None = None  # accepted for MDM exports; no criterion uses it yet
    platform: Platform | None = None  # e.g. macos, windows (lowercased)
    os_version: OsVersion | None = None  # dotted numbers, as a string: "14.2.1"
    last_seen: AwareDatetime | None = None  # when the device last reported (with a time zone)
    score: int | None = Field(default=None, ge=0, le=100)
    owner: str | None = None  # subject or email of the user the device belongs to
    revoked: bool = False  # a revoked device has no identity at all: it gets no device

    def apply(self, device: Device) -> Device | None:
        """``device`` with the fields this record states; None when the record revokes it."""
        if self.revoked:
            return None
        stated = {name: getattr(self, name) for name in _DEVICE_FIELDS if name in self.model_fields_set}
        return dataclasses.replace(device, **stated) if stated else device


def parse_record(data: Any) -> PostureRecord:
    """A record from parsed JSON/YAML; raises ValueError with a short, readable reason."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a mapping of posture fields, got {type(data).__name__}")
    try:
        return PostureRecord.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None


def describe(error: ValidationError, prefix: str = "") -> str:
    """Up to three pydantic errors as ``field: message``, without pydantic's URLs and inputs."""
    parts = []
    for detail in error.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in (prefix, *detail["loc"]) if part != "")
        parts.append(f"{where}: {str(detail['msg']).removeprefix('Value error, ')}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
