"""``max_session_age``: measured from ``session_started``."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.policy.helpers import NOW, facts, reasons, user
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, SESSION_TOO_OLD

RULE = {"max_session_age": "8h"}


def test_young_session_holds() -> None:
    assert reasons(RULE, facts(identity=user(session_started=NOW - timedelta(hours=8)))) == ()


def test_old_session_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(session_started=NOW - timedelta(hours=9)))) == (SESSION_TOO_OLD,)
    assert reasons(RULE, facts(identity=user(session_started=None))) == (SESSION_TOO_OLD,)


def test_no_identity_needs_authentication() -> None:
    assert reasons(RULE, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
