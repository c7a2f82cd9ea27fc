"""The proxy's own cookies never reach an upstream; everything else in Cookie does, in order."""

from __future__ import annotations

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
