"""``methods``: uppercase-normalised in config, compared exactly (RFC 9110 9.1)."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons
from ztproxy.policy.reasons import METHOD_NOT_ALLOWED


def test_listed_method_holds() -> None:
    assert reasons({"methods": ["get", "HEAD"]}, facts(method="GET")) == ()
    assert reasons({"methods": ["get", "HEAD"]}, facts(method="HEAD")) == ()


def test_other_methods_are_refused() -> None:
    assert reasons({"methods": ["GET"]}, facts(method="POST")) == (METHOD_NOT_ALLOWED,)
    assert reasons({"methods": ["GET"]}, facts(method="get")) == (METHOD_NOT_ALLOWED,)


def test_needs_no_identity() -> None:
    assert reasons({"methods": ["GET"]}, facts(identity=None, device=None)) == ()
