"""``email_domains``: exact domain, case-insensitive, no suffix tricks."""

from __future__ import annotations

import pytest

from tests.unit.policy.helpers import facts, reasons, user
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, EMAIL_DOMAIN_NOT_ALLOWED

RULE = {"email_domains": ["corp.example"]}


@pytest.mark.parametrize("email", ["ada@corp.example", "ADA@CORP.EXAMPLE", "a@b@corp.example", "ada@corp.example."])
def test_domain_matches(email: str) -> None:
    assert reasons(RULE, facts(identity=user(email=email))) == ()


@pytest.mark.parametrize("email", ["ada@evilcorp.example", "ada@corp.example.evil", "ada@sub.corp.example",
                                   "corp.example", "ada@", "ada@corp.example@evil.example", ""])
def test_other_domains_are_refused(email: str) -> None:
    assert reasons(RULE, facts(identity=user(email=email))) == (EMAIL_DOMAIN_NOT_ALLOWED,)


def test_no_email() -> None:
    assert reasons(RULE, facts(identity=user(email=None))) == (EMAIL_DOMAIN_NOT_ALLOWED,)


def test_no_identity_needs_authentication() -> None:
    assert reasons(RULE, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
