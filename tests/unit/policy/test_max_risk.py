"""``max_risk``: the session's risk level is at most the one given."""

from __future__ import annotations

import pytest

from tests.unit.policy.helpers import facts, reasons
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, RISK_TOO_HIGH


@pytest.mark.parametrize(("limit", "level", "expected"), [
    ("low", "low", ()), ("low", "medium", (RISK_TOO_HIGH,)), ("low", "high", (RISK_TOO_HIGH,)),
    ("medium", "medium", ()), ("medium", "high", (RISK_TOO_HIGH,)),
])
def test_level_at_most_the_limit(limit: str, level: str, expected: tuple[str, ...]) -> None:
    assert reasons({"max_risk": limit}, facts(risk=level)) == expected


def test_no_identity_needs_authentication() -> None:
    assert reasons({"max_risk": "medium"}, facts(identity=None)) == (AUTHENTICATION_REQUIRED,)


def test_high_is_no_limit() -> None:
    from pydantic import ValidationError

    from ztproxy.config.rules import Rule
    with pytest.raises(ValidationError):
        Rule.model_validate({"max_risk": "high"})
