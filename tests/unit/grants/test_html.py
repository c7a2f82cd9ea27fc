"""The access pages escape everything a requester typed, and every form carries the CSRF token."""

from __future__ import annotations

from tests.unit.grants.test_model import BOB, DAY, T0, TERMS
from ztproxy.grants import html
from ztproxy.grants.model import new_request

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_what_a_requester_typed_is_escaped_everywhere() -> None:
    request = new_request(BOB, "payroll", TERMS, HOSTILE, 600.0, T0, DAY)
    action = "/.ztproxy/access/requests/{id}/{action}"
    for page in (html.to_decide([request], "tok", action), html.own_requests([request], T0, "tok", action),
                 html.request_form("/.ztproxy/access/requests", "tok", HOSTILE, TERMS)):
        assert "<script>" not in page and "<img" not in page
        assert page.count('name="csrf_token" value="tok"') == page.count("<form")
    assert "&lt;script&gt;" in html.to_decide([request], "tok", action)
