"""The proxy's own cookies: the session cookie and the login-in-progress cookie.

Both are HttpOnly and SameSite=Lax (sent on the top-level navigation back from the IdP,
not on cross-site subrequests), Secure when the public URL is https, and scoped to
``cookie_domain`` when one is set, so one sign-in serves every route host under it.
Neither is ever forwarded upstream (``strip_own_cookies``).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ztproxy.sessions.sealing import Ticket

LOGIN_COOKIE_SUFFIX = "_login"


@dataclass(frozen=True, slots=True)
class CookieSettings:
    session_name: str
    domain: str | None
    secure: bool

    @property
    def login_name(self) -> str:
        return self.session_name + LOGIN_COOKIE_SUFFIX

    @property
    def names(self) -> frozenset[str]:
        return frozenset({self.session_name, self.login_name})

    def set(self, response: web.StreamResponse, name: str, value: str, *, max_age: float | None,
            path: str = "/") -> None:
        response.set_cookie(name, value, max_age=None if max_age is None else max(0, int(max_age)), path=path,
                            domain=self.domain, secure=self.secure, httponly=True, samesite="Lax")

    def clear(self, response: web.StreamResponse, name: str, *, path: str = "/") -> None:
        response.del_cookie(name, path=path, domain=self.domain, secure=self.secure, httponly=True, samesite="Lax")


def read_ticket(request: web.BaseRequest, settings: CookieSettings) -> Ticket | None:
    """The session ticket the client sent, or None (no cookie, or one that is not ours)."""
    value = request.cookies.get(settings.session_name)
    return Ticket.parse(value) if value else None


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
