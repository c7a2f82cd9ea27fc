"""``users``: subjects exactly, emails case-insensitively."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons, user
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, USER_NOT_ALLOWED


def test_subject_or_email_matches() -> None:
    assert reasons({"users": ["u-1"]}, facts()) == ()
    assert reasons({"users": ["ada@corp.example"]}, facts()) == ()
    assert reasons({"users": ["ADA@CORP.EXAMPLE"]}, facts()) == ()


def test_other_users_are_refused() -> None:
    assert reasons({"users": ["u-2", "bob@corp.example"]}, facts()) == (USER_NOT_ALLOWED,)


def test_subject_is_compared_exactly() -> None:
    assert reasons({"users": ["U-1"]}, facts()) == (USER_NOT_ALLOWED,)


def test_no_email_matches_by_subject_only() -> None:
    assert reasons({"users": ["ada@corp.example"]}, facts(identity=user(email=None))) == (USER_NOT_ALLOWED,)


def test_non_ascii_lookalike_does_not_match() -> None:
    # KELVIN SIGN lowercases to "k" with str.lower.
    assert reasons({"users": ["kim@corp.example"]}, facts(identity=user(email="\u212aim@corp.example"))) \
        == (USER_NOT_ALLOWED,)


def test_no_identity_needs_authentication() -> None:
    assert reasons({"users": ["u-1"]}, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
