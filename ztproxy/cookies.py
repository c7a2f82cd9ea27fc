"""The proxy's own cookies: the session cookie and the login-in-progress cookie.

Both are HttpOnly and SameSite=Lax (sent on the top-level navigation back from the IdP,
not on cross-site subrequests), Secure when the public URL is https, and scoped to
``cookie_domain`` when one is set, so one sign-in serves every route host under it.
Neither is ever forwarded upstream (``strip_own_cookies``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ztproxy.memo import Memo
from ztproxy.sessions.sealing import Ticket

LOGIN_COOKIE_SUFFIX = "_login"


@dataclass(frozen=True, slots=True)
class CookieSettings:
    session_name: str
    domain: str | None
    secure: bool
    names: frozenset[str] = field(init=False, compare=False)  # both cookies' names, never sent upstream

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset({self.session_name, self.login_name}))

    @property
    def login_name(self) -> str:
        return self.session_name + LOGIN_COOKIE_SUFFIX

    def set(self, response: web.StreamResponse, name: str, value: str, *, max_age: float | None,
            path: str = "/") -> None:
        response.set_cookie(name, value, max_age=None if max_age is None else max(0, int(max_age)), path=path,
                            domain=self.domain, secure=self.secure, httponly=True, samesite="Lax")

    def clear(self, response: web.StreamResponse, name: str, *, path: str = "/") -> None:
        response.del_cookie(name, path=path, domain=self.domain, secure=self.secure, httponly=True, samesite="Lax")


# Parsed tickets by cookie value: a signed-in browser sends the same value on every request,
# and parsing it costs a base64 decode and two SHA-256. Only valid tickets are kept.
_TICKETS: Memo[str, Ticket] = Memo(4096)


def read_ticket(request: web.BaseRequest, settings: CookieSettings) -> Ticket | None:
    """The session ticket the client sent, or None (no cookie, or one that is not ours)."""
    # The first Cookie header only, as request.cookies: HTTP/1.1 clients send one (RFC 6265 5.4).
    value = cookie_value(request.headers.get("Cookie", ""), settings.session_name)
    if not value:
        return None
    ticket = _TICKETS.get(value)
    if ticket is None and (ticket := Ticket.parse(value)) is not None:
        _TICKETS.remember(value, ticket)
    return ticket


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of cookie ``name``, as ``request.cookies`` reads it: the last one, unquoted.

    Only the one cookie is looked for: parsing every cookie of the header into morsels,
    on every request, cost more than the rest of reading the session.
    """
    if name not in cookie_header:
        return None
    found = None
    for pair in cookie_header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            found = value.strip()
    if found is not None and len(found) >= 2 and found[0] == found[-1] == '"':
        found = found[1:-1]
    return found


def strip_own_cookies(cookie_header: str, names: frozenset[str]) -> str | None:
    """``Cookie`` without the proxy's cookies; None when nothing is left.

    Parsed leniently pair by pair (browsers send what they stored), and rebuilt from the
    pairs that are not ours, in their order.
    """
    kept = []
    for pair in cookie_header.split(";"):
        name, _, _ = pair.partition("=")
        if name.strip() not in names and pair.strip():
            kept.append(pair.strip())
    return "; ".join(kept) or None


_STRIPPED: Memo[tuple[str, frozenset[str]], str | None] = Memo(2048)
_STRIPPED_LONGEST = 2048  # longer headers are stripped every time, not kept


def strip_own_cookies_cached(cookie_header: str, names: frozenset[str]) -> str | None:
    """:func:`strip_own_cookies`, remembered: a browser sends the same ``Cookie`` again and again."""
    key = (cookie_header, names)
    if key in _STRIPPED:
        return _STRIPPED[key]
    stripped = strip_own_cookies(cookie_header, names)
    if len(cookie_header) <= _STRIPPED_LONGEST:
        _STRIPPED.remember(key, stripped)
    return stripped
