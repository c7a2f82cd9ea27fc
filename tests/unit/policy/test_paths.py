"""``paths``: prefixes on segment boundaries, like routes."""

from __future__ import annotations

import pytest

from tests.unit.policy.helpers import facts, reasons
from ztproxy.policy.reasons import PATH_NOT_ALLOWED


@pytest.mark.parametrize(("prefix", "path", "holds"), [
    ("/api", "/api", True), ("/api", "/api/", True), ("/api", "/api/x/y", True),
    ("/api", "/apix", False), ("/api", "/", False), ("/api", "/API", False),
    ("/api/", "/api/x", True), ("/api/", "/api", False), ("/", "/anything", True),
])
def test_prefix_match(prefix: str, path: str, holds: bool) -> None:
    assert reasons({"paths": [prefix]}, facts(path=path)) == (() if holds else (PATH_NOT_ALLOWED,))


def test_any_prefix_of_several() -> None:
    assert reasons({"paths": ["/a", "/b"]}, facts(path="/b/c")) == ()
