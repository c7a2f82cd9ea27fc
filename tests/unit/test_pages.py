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


def test_a_link_is_shown_escaped_and_given_to_api_clients() -> None:
    error = AccessDenied("No.", link=("/.ztproxy/me?a=1&b=<2>", "See <your> access"))
    page = error_response(error, request_id="r1").text or ""
    assert '<a href="/.ztproxy/me?a=1&amp;b=&lt;2&gt;">See &lt;your&gt; access</a>' in page
    body = error_response(error, request_id="r1", accept="application/json").body
    assert isinstance(body, bytes) and json.loads(body)["link"] == "/.ztproxy/me?a=1&b=<2>"
    assert "<a " not in (error_response(AccessDenied("No."), request_id="r1").text or "")


def test_me_ages_read_as_people_write_them() -> None:
    from ztproxy.me import _age

    assert [_age(s) for s in (0, 1, 2, 60, 119, 120, 3599, 7199, 7200, 3 * 3600)] == [
        "0 seconds ago", "1 second ago", "2 seconds ago", "60 seconds ago", "119 seconds ago", "2 minutes ago",
        "59 minutes ago", "119 minutes ago", "2 hours ago", "3 hours ago"]
