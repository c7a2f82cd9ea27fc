"""``max_auth_age``: measured from ``auth_time`` to the ``now`` of the facts."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.policy.helpers import NOW, facts, reasons, user

RULE = {"max_auth_age": "15m"}


def test_recent_login_holds() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=NOW - timedelta(minutes=15)))) == ()


def test_old_login_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=NOW - timedelta(minutes=15, seconds=1)))) \
        == ("auth-too-old",)


def test_unknown_auth_time_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=None))) == ("auth-too-old",)


def test_no_identity_needs_authentication() -> None:
    assert reasons(RULE, facts(identity=None)) == ("authentication-required",)
