"""``device``: posture conditions on the device making the request, one criterion each.

Without a known device every one of them fails with ``device-unknown``; with a device a
security signal says is not compliant (CAEP ``device-compliance-change``), with
``device-not-compliant``, whatever the posture providers report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria._text import fold
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import Device, RequestFacts
from ztproxy.policy.reasons import (
    AUTHENTICATION_REQUIRED,
    DEVICE_NOT_COMPLIANT,
    DEVICE_OWNER_MISMATCH,
    DEVICE_SCORE_TOO_LOW,
    DEVICE_UNKNOWN,
    DEVICE_UNMANAGED,
    DISK_NOT_ENCRYPTED,
    OS_TOO_OLD,
    PLATFORM_NOT_ALLOWED,
    POSTURE_STALE,
)

_VERSION = re.compile(r"\d+(?:\.\d+)*")
_UNKNOWN = {DEVICE_UNKNOWN: "This application requires a known device, and yours could not be identified.",
            DEVICE_NOT_COMPLIANT: "Your device has been reported as not compliant with your organisation's "
                                  "security policy; contact your IT team."}


def _usable(device: Device | None) -> Device | str:
    """The device every criterion judges, or why none can pass."""
    if device is None:
        return DEVICE_UNKNOWN
    return device if device.compliant else DEVICE_NOT_COMPLIANT


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"14.10"`` -> ``(14, 10)``, compared number by number; None when not dotted numbers.

    Trailing zeros are dropped so that "14" and "14.0" are the same version.
    """
    if not _VERSION.fullmatch(text):
        return None
    parts = [int(part) for part in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Managed:
    name: ClassVar[str] = "device.managed"

    def __call__(self, facts: RequestFacts) -> str | None:
        device = _usable(facts.device)
        if isinstance(device, str):
            return device
        return None if device.managed else DEVICE_UNMANAGED


register(Managed.name, lambda _: Managed(),
         _UNKNOWN | {DEVICE_UNMANAGED: "This application requires a device managed by your organisation."})


@dataclass(frozen=True, slots=True)
class DiskEncrypted:
    name: ClassVar[str] = "device.disk_encrypted"

    def __call__(self, facts: RequestFacts) -> str | None:
        device = _usable(facts.device)
        if isinstance(device, str):
            return device
        return None if device.disk_encrypted else DISK_NOT_ENCRYPTED


register(DiskEncrypted.name, lambda _: DiskEncrypted(),
         _UNKNOWN | {DISK_NOT_ENCRYPTED: "This application requires a device with disk encryption turned on."})


@dataclass(frozen=True, slots=True)
class MinOsVersion:
    name: ClassVar[str] = "device.min_os_version"
    minimum: Mapping[str, tuple[int, ...]]  # folded platform -> lowest version; others fail

    @classmethod
    def of(cls, versions: Mapping[str, str]) -> MinOsVersion:
        parsed = {fold(platform): parse_version(version) for platform, version in versions.items()}
        if any(version is None for version in parsed.values()):
            raise ValueError(f"invalid version in {dict(versions)!r}")  # the schema prevents it
        return cls({platform: version for platform, version in parsed.items() if version is not None})

    def __call__(self, facts: RequestFacts) -> str | None:
        device = _usable(facts.device)
        if isinstance(device, str):
            return device
        minimum = self.minimum.get(fold(device.platform)) if device.platform is not None else None
        if minimum is None:
            return PLATFORM_NOT_ALLOWED
        version = parse_version(device.os_version) if device.os_version is not None else None
        if version is None or version < minimum:  # an unreadable version is not a recent one
            return OS_TOO_OLD
        return None


register(MinOsVersion.name, MinOsVersion.of, _UNKNOWN | {
    PLATFORM_NOT_ALLOWED: "This application is not available from your device's operating system.",
    OS_TOO_OLD: "Your device's operating system is too old for this application; please update it.",
})


@dataclass(frozen=True, slots=True)
class MaxPostureAge:
    name: ClassVar[str] = "device.max_posture_age"
    seconds: float

    def __call__(self, facts: RequestFacts) -> str | None:
        device = _usable(facts.device)
        if isinstance(device, str):
            return device
        if device.last_seen is None or (facts.now - device.last_seen).total_seconds() > self.seconds:
            return POSTURE_STALE
        return None


register(MaxPostureAge.name, MaxPostureAge,
         _UNKNOWN | {POSTURE_STALE: "Your device has not reported its security status recently enough."})


@dataclass(frozen=True, slots=True)
class MinScore:
    name: ClassVar[str] = "device.min_score"
    score: int

    def __call__(self, facts: RequestFacts) -> str | None:
        device = _usable(facts.device)
        if isinstance(device, str):
            return device
        if device.score is None or device.score < self.score:
            return DEVICE_SCORE_TOO_LOW
        return None


register(MinScore.name, MinScore,
         _UNKNOWN | {DEVICE_SCORE_TOO_LOW: "Your device does not meet this application's security requirements."})


@dataclass(frozen=True, slots=True)
class OwnerIsUser:
    """The device belongs to the signed-in user (owner given as subject or email)."""

    name: ClassVar[str] = "device.owner_is_user"

    def __call__(self, facts: RequestFacts) -> str | None:
        device, identity = _usable(facts.device), facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        if isinstance(device, str):
            return device
        owner = device.owner
        if owner is None:
            return DEVICE_OWNER_MISMATCH
        if owner == identity.subject or (identity.email is not None and fold(owner) == fold(identity.email)):
            return None
        return DEVICE_OWNER_MISMATCH


register(OwnerIsUser.name, lambda _: OwnerIsUser(),
         _UNKNOWN | {DEVICE_OWNER_MISMATCH: "This application must be used from a device registered to you."})
