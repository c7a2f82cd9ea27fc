"""``methods``: uppercase-normalised in config, compared exactly (RFC 9110 9.1)."""

from __future__ import annotations

from tests.unit.policy.helpers import facts, reasons


def test_listed_method_holds() -> None:
    assert reasons({"methods": ["get", "HEAD"]}, facts(method="GET")) == ()
    assert reasons({"methods": ["get", "HEAD"]}, facts(method="HEAD")) == ()


def test_other_methods_are_refused() -> None:
    assert reasons({"methods": ["GET"]}, facts(method="POST")) == ("method-not-allowed",)
    assert reasons({"methods": ["GET"]}, facts(method="get")) == ("method-not-allowed",)


def test_needs_no_identity() -> None:
    assert reasons({"methods": ["GET"]}, facts(identity=None, device=None)) == ()
