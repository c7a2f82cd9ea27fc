"""Error pages: HTML for people, JSON for API clients, escaped, with the request id."""

from __future__ import annotations

import json

from ztproxy.errors import AccessDenied, RouteNotFound, UpstreamTimeout
from ztproxy.pages import error_response, wants_json


def test_content_negotiation() -> None:
    assert wants_json("application/json")
    assert wants_json("", "XMLHttpRequest")
    assert not wants_json("text/html,application/xhtml+xml,application/json;q=0.9")
    assert not wants_json("*/*")
    assert not wants_json("")


def test_html_page_is_escaped_and_names_the_request_id() -> None:
    response = error_response(AccessDenied("<script>alert(1)</script>"), request_id="rid-1", accept="text/html")
    assert response.status == 403
    assert response.text is not None
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;" in response.text
    assert "rid-1" in response.text
    assert response.headers["Cache-Control"] == "no-store"


def test_json_error_has_stable_code() -> None:
    response = error_response(UpstreamTimeout(), request_id="rid-2", accept="application/json")
    assert response.status == 504
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body == {"error": "upstream-timeout", "status": 504, "message": "Gateway timeout",
                    "hint": UpstreamTimeout.hint, "request_id": "rid-2"}


def test_close_flag_ends_the_connection() -> None:
    assert error_response(RouteNotFound(), request_id="r", close=True).keep_alive is False
