"""Origins as the WebSocket check compares them."""

from __future__ import annotations

import pytest

from ztproxy.origins import addressed_origin, normalize_origin, origin_allowed


@pytest.mark.parametrize(("value", "expected"), [
    ("https://App.Corp.Example", "https://app.corp.example"),
    ("https://app.corp.example:443", "https://app.corp.example"),
    ("http://app.corp.example:80", "http://app.corp.example"),
    ("http://app.corp.example:8080", "http://app.corp.example:8080"),
    ("http://[::1]:8080", "http://[::1]:8080"),
    ("https://app.corp.example/", "https://app.corp.example"),
    ("null", None), ("", None), ("app.corp.example", None), ("ftp://app.corp.example", None),
    ("https://app.corp.example/path", None), ("https://user@app.corp.example", None),
    ("https://app.corp.example:99999", None), ("https://app corp.example", None), ("https://app.corp.example?x", None),
])
def test_normalize_origin(value: str, expected: str | None) -> None:
    assert normalize_origin(value) == expected


def test_origin_allowed() -> None:
    own = addressed_origin("https", "app.corp.example:443")
    assert own == "https://app.corp.example"
    assert origin_allowed("https://APP.corp.example", own, frozenset())
    assert not origin_allowed("https://wiki.corp.example", own, frozenset())
    assert origin_allowed("https://wiki.corp.example", own, frozenset({"https://wiki.corp.example"}))
    assert not origin_allowed("null", own, frozenset({"null"}))
    assert not origin_allowed("https://app.corp.example", None, frozenset())
