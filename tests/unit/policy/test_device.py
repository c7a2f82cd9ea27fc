"""``device``: managed, disk encryption, OS version, posture age, score, owner."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.policy.helpers import NOW, device, facts, reasons, user
from ztproxy.policy.criteria.device import parse_version
from ztproxy.policy.reasons import (
    AUTHENTICATION_REQUIRED,
    DEVICE_OWNER_MISMATCH,
    DEVICE_SCORE_TOO_LOW,
    DEVICE_UNKNOWN,
    DEVICE_UNMANAGED,
    DISK_NOT_ENCRYPTED,
    OS_TOO_OLD,
    PLATFORM_NOT_ALLOWED,
    POSTURE_STALE,
)


def test_compliant_device_holds() -> None:
    rule = {"device": {"managed": True, "disk_encrypted": True, "min_os_version": {"macos": "14.2"},
                       "max_posture_age": "5m", "min_score": 80, "owner_is_user": True}}
    assert reasons(rule, facts()) == ()


def test_unknown_device() -> None:
    assert reasons({"device": {"managed": True, "min_score": 10}}, facts(device=None)) == (DEVICE_UNKNOWN,)


def test_unmanaged_and_unencrypted() -> None:
    rule = {"device": {"managed": True, "disk_encrypted": True}}
    assert reasons(rule, facts(device=device(managed=False, disk_encrypted=False))) \
        == (DEVICE_UNMANAGED, DISK_NOT_ENCRYPTED)


@pytest.mark.parametrize(("version", "holds"), [
    ("14.2", True), ("14.10", True), ("14.2.1", True), ("15", True), ("14.2.0", True),
    ("14.1.9", False), ("14.9" , True), ("14", False), ("9.99", False),
    ("14.2 (23C64)", False), ("v14.2", False), ("", False), ("14..2", False),
])
def test_os_version_compares_numbers(version: str, holds: bool) -> None:
    rule = {"device": {"min_os_version": {"macos": "14.2"}}}
    assert reasons(rule, facts(device=device(os_version=version))) == (() if holds else (OS_TOO_OLD,))


def test_os_version_of_ten_beats_nine() -> None:
    rule = {"device": {"min_os_version": {"macos": "14.10"}}}
    assert reasons(rule, facts(device=device(os_version="14.9"))) == (OS_TOO_OLD,)
    assert reasons(rule, facts(device=device(os_version="14.10"))) == ()


def test_platform_must_be_listed_and_is_case_insensitive() -> None:
    rule = {"device": {"min_os_version": {"Windows": "10"}}}
    assert reasons(rule, facts(device=device(platform="WINDOWS", os_version="11"))) == ()
    assert reasons(rule, facts(device=device(platform="linux", os_version="99"))) == (PLATFORM_NOT_ALLOWED,)
    assert reasons(rule, facts(device=device(platform=None))) == (PLATFORM_NOT_ALLOWED,)
    assert reasons(rule, facts(device=device(platform="windows", os_version=None))) == (OS_TOO_OLD,)


def test_parse_version() -> None:
    assert parse_version("14.10.0") == parse_version("14.10") == (14, 10)
    assert parse_version("0") == (0,)
    assert parse_version("14.x") is None


def test_posture_age() -> None:
    rule = {"device": {"max_posture_age": "5m"}}
    assert reasons(rule, facts(device=device(last_seen=NOW - timedelta(minutes=5)))) == ()
    assert reasons(rule, facts(device=device(last_seen=NOW - timedelta(minutes=6)))) == (POSTURE_STALE,)
    assert reasons(rule, facts(device=device(last_seen=None))) == (POSTURE_STALE,)


def test_min_score() -> None:
    rule = {"device": {"min_score": 80}}
    assert reasons(rule, facts(device=device(score=80))) == ()
    assert reasons(rule, facts(device=device(score=79))) == (DEVICE_SCORE_TOO_LOW,)
    assert reasons(rule, facts(device=device(score=None))) == (DEVICE_SCORE_TOO_LOW,)


def test_owner_is_user() -> None:
    rule = {"device": {"owner_is_user": True}}
    assert reasons(rule, facts(device=device(owner="u-1"))) == ()
    assert reasons(rule, facts(device=device(owner="ada@corp.example"))) == ()
    assert reasons(rule, facts(device=device(owner="u-2"))) == (DEVICE_OWNER_MISMATCH,)
    assert reasons(rule, facts(device=device(owner=None))) == (DEVICE_OWNER_MISMATCH,)
    assert reasons(rule, facts(identity=user(email=None), device=device(owner="ada@corp.example"))) \
        == (DEVICE_OWNER_MISMATCH,)
    assert reasons(rule, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
