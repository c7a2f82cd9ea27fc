"""Prefixes, browser families, and the risk state sealed with a session."""

from __future__ import annotations

import pytest

from ztproxy.risk import Browser, Noted, RiskState, Seen, browser_of, network_of
from ztproxy.sessions.model import Session


@pytest.mark.parametrize(("address", "prefix"), [
    ("127.0.1.1", "127.0.1.0/24"), ("127.0.1.254", "127.0.1.0/24"), ("127.0.2.1", "127.0.2.0/24"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"), ("::ffff:192.0.2.7", "192.0.2.0/24"),
    ("fe80::1%eth0", "fe80::/64"), ("not-an-address", None), ("", None),
])
def test_network_is_the_24_or_64_prefix(address: str, prefix: str | None) -> None:
    assert network_of(address) == prefix


@pytest.mark.parametrize(("agent", "browser"), [
    ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", Browser("firefox", 128)),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
     "Safari/537.36", Browser("chrome", 126)),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
     "Safari/537.36 Edg/126.0.2592.87", Browser("edge", 126)),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
     "Safari/605.1.15", Browser("safari", 17)),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 "
     "Safari/537.36", Browser("chrome", 131)),
    ("curl/8.5.0", Browser("curl", 8)),
    ("Python/3.11 aiohttp/3.10.5", Browser("python", 3)),
    ("", Browser("none")),
    (None, Browser("none")),
])
def test_browser_family_and_major(agent: str | None, browser: Browser) -> None:
    assert browser_of(agent) == browser


def test_state_travels_sealed_with_the_session() -> None:
    state = RiskState.at_sign_in(Seen("127.0.1.0/24", Browser("firefox", 128), "dev-1")).changed(
        network="127.0.2.0/24", previous_network="127.0.1.0/24", moved_at=100.5,
        signals=(Noted("network-changed", "log", 100.5),), locked_until=400.0)
    session = Session(provider="p", subject="s", email=None, name=None, groups=(), claims={}, acr=None, amr=(),
                      mfa=False, auth_time=None, created=1.0, last_seen=1.0, refreshed=1.0, risk=state)
    for legacy in (False, True):
        assert Session.from_bytes(session.to_bytes(legacy=legacy)) == session
        assert b"127.0.1.1" not in session.to_bytes(legacy=legacy)  # prefixes only


def test_a_session_without_risk_state_still_opens() -> None:
    session = Session(provider="p", subject="s", email=None, name=None, groups=(), claims={}, acr=None, amr=(),
                      mfa=False, auth_time=None, created=1.0, last_seen=1.0, refreshed=1.0)
    raw = session.to_bytes(legacy=True).replace(b',"risk":null', b"")
    assert b"risk" not in raw
    assert Session.from_bytes(raw) == session
    assert Session.from_bytes(session.to_bytes(legacy=True).replace(b'"risk":null', b'"risk":{"browser":1}')) is None
    assert Session.from_bytes(b'[2,"p","s",1.0,null,null,null,null,null,null,null,null,["127.0.0.0/24"]]') is None
