"""``mfa: true``."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons, user
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, MFA_REQUIRED


def test_mfa_login_holds() -> None:
    assert reasons({"mfa": True}, facts()) == ()


def test_single_factor_login_needs_mfa() -> None:
    assert reasons({"mfa": True}, facts(identity=user(mfa=False))) == (MFA_REQUIRED,)


def test_no_identity_needs_authentication() -> None:
    assert reasons({"mfa": True}, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
