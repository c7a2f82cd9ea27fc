"""The proxy's own cookies never reach an upstream; everything else in Cookie does, in order."""

from __future__ import annotations

import pytest

from ztproxy.cookies import CookieSettings, strip_own_cookies

NAMES = CookieSettings(session_name="ztproxy_session", domain=None, secure=True).names


def test_own_cookies_are_removed_and_others_kept_in_order() -> None:
    header = "a=1; ztproxy_session=secret; b=2; ztproxy_session_login=x; c=3"
    assert strip_own_cookies(header, NAMES) == "a=1; b=2; c=3"


def test_nothing_left_gives_none() -> None:
    assert strip_own_cookies("ztproxy_session=secret", NAMES) is None
    assert strip_own_cookies(" ztproxy_session = secret ;", NAMES) is None


def test_lenient_about_odd_pairs_but_strict_about_names() -> None:
    header = 'weird; x="q"; ZTPROXY_SESSION=kept-other-case; ztproxy_sessionx=1;; '
    # Cookie names are case-sensitive: only the exact names are the proxy's.
    assert strip_own_cookies(header, NAMES) == 'weird; x="q"; ZTPROXY_SESSION=kept-other-case; ztproxy_sessionx=1'


def test_cookie_attributes_follow_the_public_url_and_cookie_domain() -> None:
    from aiohttp import web
    response = web.Response()
    CookieSettings(session_name="ztproxy_session", domain="corp.example", secure=True).set(
        response, "ztproxy_session", "v", max_age=60)
    header = response.cookies["ztproxy_session"].output().lower()
    for attribute in ("domain=corp.example", "httponly", "secure", "samesite=lax", "path=/", "max-age=60"):
        assert attribute in header
    plain = web.Response()
    CookieSettings(session_name="ztproxy_session", domain=None, secure=False).set(plain, "ztproxy_session", "v",
                                                                                  max_age=None)
    header = plain.cookies["ztproxy_session"].output().lower()
    assert "secure" not in header and "domain" not in header and "max-age" not in header


def test_cookie_value_finds_exactly_the_named_cookie() -> None:
    from ztproxy.cookies import cookie_value
    name = "ztproxy_session"
    assert cookie_value("a=1; ztproxy_session=abc; b=2", name) == "abc"
    # A longer name, another case, a name inside a value, a pair without '=': not ours.
    assert cookie_value("xztproxy_session=1; ztproxy_sessionx=2; ZTPROXY_SESSION=3", name) is None
    assert cookie_value("a=ztproxy_session=zzz; ztproxy_session", name) is None
    assert cookie_value(" ztproxy_session = spaced ; c=1", name) == "spaced"
    assert cookie_value("", name) is None


def test_cookie_value_reads_as_request_cookies_does() -> None:
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from ztproxy.cookies import cookie_value
    for header in ("ztproxy_session=first; a=1; ztproxy_session=second", 'a=1; ztproxy_session="quoted"',
                   "ztproxy_session=; a=1"):
        request = make_mocked_request("GET", "/", headers=CIMultiDict(Cookie=header))
        assert cookie_value(header, "ztproxy_session") == request.cookies["ztproxy_session"]


def test_read_ticket_refuses_junk_and_remembers_only_valid_tickets() -> None:
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from ztproxy import cookies
    from ztproxy.sessions.sealing import Ticket
    settings = CookieSettings(session_name="ztproxy_session", domain=None, secure=True)

    def read(value: str) -> Ticket | None:
        request = make_mocked_request("GET", "/", headers=CIMultiDict(Cookie=f"ztproxy_session={value}"))
        return cookies.read_ticket(request, settings)

    ticket = Ticket.new()
    cookies._TICKETS.clear()
    for junk in ("", "x" * 10, ticket.cookie_value()[:-1] + "!", ticket.cookie_value() + "A"):
        assert read(junk) is None
    assert not cookies._TICKETS  # junk is never kept
    first = read(ticket.cookie_value())
    assert first == ticket and read(ticket.cookie_value()) is first  # parsed once
    assert first is not None and first.store_key == ticket.store_key and first.public_id == ticket.public_id


def test_the_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from ztproxy import cookies
    from ztproxy.sessions.sealing import Ticket
    monkeypatch.setattr(cookies._TICKETS, "limit", 8)
    monkeypatch.setattr(cookies._STRIPPED, "limit", 8)
    settings = CookieSettings(session_name="ztproxy_session", domain=None, secure=True)
    for _ in range(20):
        value = Ticket.new().cookie_value()
        request = make_mocked_request("GET", "/", headers=CIMultiDict(Cookie=f"ztproxy_session={value}"))
        assert cookies.read_ticket(request, settings) is not None
        assert len(cookies._TICKETS) <= 8
    for n in range(20):
        assert cookies.strip_own_cookies_cached(f"a={n}; ztproxy_session=s", NAMES) == f"a={n}"
        assert len(cookies._STRIPPED) <= 8
    long_header = "a=" + "x" * (cookies._STRIPPED_LONGEST + 1)
    assert cookies.strip_own_cookies_cached(long_header, NAMES) == long_header
    assert (long_header, NAMES) not in cookies._STRIPPED
