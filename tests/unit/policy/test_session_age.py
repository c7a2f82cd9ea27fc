"""``max_session_age``: measured from ``session_started``."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.policy.helpers import NOW, facts, reasons, user

RULE = {"max_session_age": "8h"}


def test_young_session_holds() -> None:
    assert reasons(RULE, facts(identity=user(session_started=NOW - timedelta(hours=8)))) == ()


def test_old_session_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(session_started=NOW - timedelta(hours=9)))) == ("session-too-old",)
    assert reasons(RULE, facts(identity=user(session_started=None))) == ("session-too-old",)


def test_no_identity_needs_authentication() -> None:
    assert reasons(RULE, facts(identity=None)) == ("authentication-required",)
