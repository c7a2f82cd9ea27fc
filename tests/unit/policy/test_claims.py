"""``claims``: one accepted value per claim, any overlap for list claims, true is not 1."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons, user
from ztproxy.policy import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, CLAIM_MISMATCH


def with_claims(**claims: object) -> RequestFacts:
    return facts(identity=user(claims=claims))


def test_scalar_claim() -> None:
    assert reasons({"claims": {"dept": "sales"}}, with_claims(dept="sales")) == ()
    assert reasons({"claims": {"dept": ["sales", "ops"]}}, with_claims(dept="ops")) == ()
    assert reasons({"claims": {"dept": "sales"}}, with_claims(dept="eng")) == (CLAIM_MISMATCH,)


def test_list_claim_overlaps() -> None:
    assert reasons({"claims": {"roles": ["admin", "auditor"]}}, with_claims(roles=["user", "auditor"])) == ()
    assert reasons({"claims": {"roles": ["admin"]}}, with_claims(roles=["user"])) == (CLAIM_MISMATCH,)
    assert reasons({"claims": {"roles": ["admin"]}}, with_claims(roles=[])) == (CLAIM_MISMATCH,)


def test_every_claim_must_match() -> None:
    rule = {"claims": {"dept": "sales", "level": [2, 3]}}
    assert reasons(rule, with_claims(dept="sales", level=3)) == ()
    assert reasons(rule, with_claims(dept="sales", level=1)) == (CLAIM_MISMATCH,)
    assert reasons(rule, with_claims(dept="sales")) == (CLAIM_MISMATCH,)


def test_types_are_not_mixed_up() -> None:
    assert reasons({"claims": {"verified": True}}, with_claims(verified=True)) == ()
    assert reasons({"claims": {"verified": True}}, with_claims(verified=1)) == (CLAIM_MISMATCH,)
    assert reasons({"claims": {"level": 1}}, with_claims(level=True)) == (CLAIM_MISMATCH,)
    assert reasons({"claims": {"level": 1}}, with_claims(level="1")) == (CLAIM_MISMATCH,)
    assert reasons({"claims": {"org": "x"}}, with_claims(org={"x": 1})) == (CLAIM_MISMATCH,)


def test_no_identity_needs_authentication() -> None:
    assert reasons({"claims": {"dept": "sales"}}, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)
