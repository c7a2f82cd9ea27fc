"""``max_auth_age``: measured from ``auth_time`` to the ``now`` of the facts."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.policy.helpers import NOW, facts, reasons, user
from ztproxy.policy.reasons import AUTH_TOO_OLD, AUTHENTICATION_REQUIRED

RULE = {"max_auth_age": "15m"}


def test_recent_login_holds() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=NOW - timedelta(minutes=15)))) == ()


def test_old_login_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=NOW - timedelta(minutes=15, seconds=1)))) \
        == (AUTH_TOO_OLD,)


def test_unknown_auth_time_is_too_old() -> None:
    assert reasons(RULE, facts(identity=user(auth_time=None))) == (AUTH_TOO_OLD,)


def test_no_identity_needs_authentication() -> None:
    assert reasons(RULE, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
