"""``source_cidrs``: the client address is in one of the networks."""

from __future__ import annotations

import pytest

from tests.unit.policy.helpers import facts, reasons
from ztproxy.policy.reasons import SOURCE_NOT_ALLOWED

RULE = {"source_cidrs": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]}


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.1"])
def test_inside(ip: str) -> None:
    assert reasons(RULE, facts(client_ip=ip)) == ()


@pytest.mark.parametrize("ip", ["11.0.0.1", "192.0.2.8", "2001:db9::1", "", "unknown", "10.0.0.1:80"])
def test_outside_or_unreadable(ip: str) -> None:
    assert reasons(RULE, facts(client_ip=ip)) == (SOURCE_NOT_ALLOWED,)
