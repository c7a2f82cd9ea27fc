"""Ending sessions: the user's sign-out, and the IdP's back-channel logout.

``/.ztproxy/logout``: GET shows a confirmation page, POST (with a token only the page
knows) ends the session here, clears the cookie, then passes through the IdP's
end_session endpoint so the IdP session ends too. A cross-site page can neither read the
token nor, with SameSite=Lax, post with the cookie.

``/.ztproxy/backchannel-logout``: the IdP posts a logout token (OIDC Back-Channel Logout
1.0); once it is verified and its jti has not been seen before, the sessions of that IdP
session (``sid``) or else of that user (``sub``) end.

``/.ztproxy/frontchannel-logout``: the IdP's sign-out page loads it in an iframe (OIDC
Front-Channel Logout 1.0) with ``iss`` and ``sid``; the sessions made from that IdP session
end. It works without the session cookie, which a cross-site iframe does not send
(SameSite=Lax); a missing or unknown ``iss`` or ``sid`` ends nothing. Only the issuer's
pages may frame its answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

import orjson
import structlog
from aiohttp import web
from authlib.common.urls import add_params_to_uri
from yarl import URL

from ztproxy import metrics
from ztproxy.cookies import CookieSettings, read_ticket
from ztproxy.errors import IdentityProviderUnavailable
from ztproxy.oidc.parameters import repeated
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.tokens import TokenInvalid
from ztproxy.pages import info
from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.sealing import Ticket

_IDP_LOGOUT = "signed out at the identity provider"
_log = structlog.get_logger("ztproxy.logout")

LOGOUT_PATH = "/.ztproxy/logout"
SIGNED_OUT_PATH = "/.ztproxy/signed-out"
BACKCHANNEL_PATH = "/.ztproxy/backchannel-logout"
FRONTCHANNEL_PATH = "/.ztproxy/frontchannel-logout"
_MAX_LOGOUT_TOKEN = 16 * 1024
_MAX_SID = 256


def _csrf_token(ticket: Ticket) -> str:
    # Derived from the secret session id: only a page served to this browser can know it.
    return hashlib.sha256(b"ztproxy-logout\0" + ticket.session_id).hexdigest()


class Logout:
    def __init__(self, *, providers: Mapping[str, Provider], sessions: SessionManager, cookies: CookieSettings,
                 public_url: str) -> None:
        self.providers = providers
        self.sessions = sessions
        self.cookies = cookies
        self.public_url = public_url

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ticket = read_ticket(request, self.cookies)
        if request.method == "POST":
            return await self._sign_out(request, ticket)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD, POST"})
        if ticket is None or await self.sessions.load(ticket, time.time()) is None:
            return signed_out_page()
        return info.render("Sign out?", info.paragraph("You will be signed out of every application behind this "
                                                       "proxy, and of your identity provider.")
                           + info.post_button(LOGOUT_PATH, "Sign out", {"csrf": _csrf_token(ticket)}),
                           kicker="Sign out")

    async def _sign_out(self, request: web.Request, ticket: Ticket | None) -> web.StreamResponse:
        form = await request.post()
        token = form.get("csrf")
        if ticket is None:
            return self._clear(_see_other(SIGNED_OUT_PATH))
        if not isinstance(token, str) or not hmac.compare_digest(token, _csrf_token(ticket)):
            _log.warning("logout_refused", reason="csrf")
            return info.render("Sign out?", info.paragraph("That sign-out request did not come from this "
                                                           "site's sign-out page. Confirm to sign out.")
                               + info.post_button(LOGOUT_PATH, "Sign out", {"csrf": _csrf_token(ticket)}),
                               kicker="Sign out", status=403)
        session = await self.sessions.load(ticket, time.time(), fresh=True)
        await self.sessions.end(ticket, None if session is None else Ending(
            "user", "signed out", session.provider, session.subject, session.email))
        location = f"{self.public_url}{SIGNED_OUT_PATH}"
        if session is not None:
            _log.info("session_ended", reason="logout", subject=session.subject, session=ticket.public_id)
            metrics.session_ended("logout")
            provider = self.providers.get(session.provider)
            if provider is not None:
                location = await self._end_session_url(provider, session.id_token) or location
        return self._clear(_see_other(location))

    async def _end_session_url(self, provider: Provider, id_token: str | None) -> str | None:
        try:
            metadata = await provider.metadata()
        except IdentityProviderUnavailable:
            return None  # signed out here at least; the page says so
        endpoint = metadata.get("end_session_endpoint")
        if not endpoint:
            return None
        # OIDC RP-Initiated Logout 1.0 section 2.
        params = [("client_id", provider.config.client_id),
                  ("post_logout_redirect_uri", f"{self.public_url}{SIGNED_OUT_PATH}")]
        if id_token:
            params.append(("id_token_hint", id_token))
        return str(add_params_to_uri(str(endpoint), params))

    def _clear(self, response: web.StreamResponse) -> web.StreamResponse:
        self.cookies.clear(response, self.cookies.session_name)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def backchannel(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        form = await request.post()
        # RFC 6749 3.1: no parameter more than once; which copy to believe is not for us to guess.
        if repeated(form, ("logout_token",)) is not None:
            _log.warning("backchannel_logout_refused", reason="repeated-parameter", parameter="logout_token")
            return _backchannel_error("the logout_token form field must not be repeated")
        token = form.get("logout_token")
        if not isinstance(token, str) or not token or len(token) > _MAX_LOGOUT_TOKEN:
            return _backchannel_error("a logout_token form field is required")
        provider = self._provider_for(token)
        if provider is None:
            return _backchannel_error("the logout token's issuer is not a configured identity provider")
        try:
            claims = await provider.validate_logout_token(token)
        except TokenInvalid as exc:
            _log.warning("backchannel_logout_refused", provider=provider.name, reason=exc.reason, error=str(exc))
            return _backchannel_error("the logout token is invalid")
        # Back-Channel Logout 1.0 2.6: a jti seen before is a replay.
        marker = "once:jti:" + hashlib.sha256(f"{provider.name}\0{claims.jti}".encode()).hexdigest()
        # Remembered as long as the token itself would be accepted; then its age refuses it.
        remember = max(1.0, claims.accept_until - time.time())
        if not await self.sessions.store.put(marker, b"", remember, only_new=True):
            _log.warning("backchannel_logout_refused", provider=provider.name, reason="jti-replayed")
            return _backchannel_error("the logout token was already used")
        ended = await self.sessions.end_matching(provider.name, subject=claims.sub, idp_session=claims.sid,
                                                 ending=Ending("user", _IDP_LOGOUT, provider.name, claims.sub))
        _log.info("backchannel_logout", provider=provider.name, subject=claims.sub, sessions_ended=ended)
        metrics.session_ended("backchannel", ended)
        return web.Response(status=200, headers={"Cache-Control": "no-store"})

    async def frontchannel(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})
        query = request.rel_url.query
        # RFC 6749 3.1 (the same rule for every request to the proxy's OIDC endpoints).
        if repeated(query, ("iss", "sid")) is not None:
            _log.warning("frontchannel_logout_refused", reason="repeated-parameter")
            return _frontchannel_page(None, status=400)
        issuer, sid = query.get("iss", ""), query.get("sid", "")
        provider = next((p for p in self.providers.values() if issuer and p.config.issuer == issuer), None)
        # Front-Channel Logout 1.0 2: iss and sid identify the IdP session; without both, nothing ends.
        if provider is None or not sid or len(sid) > _MAX_SID:
            _log.warning("frontchannel_logout_refused", reason="unknown-iss" if provider is None else "no-sid")
            return _frontchannel_page(provider, status=400)
        ended = await self.sessions.end_matching(provider.name, idp_session=sid,
                                                 ending=Ending("user", _IDP_LOGOUT, provider.name))
        _log.info("frontchannel_logout", provider=provider.name, sessions_ended=ended)
        metrics.session_ended("frontchannel", ended)
        return _frontchannel_page(provider, status=200)

    def _provider_for(self, token: str) -> Provider | None:
        issuer = _unverified_issuer(token)
        return next((p for p in self.providers.values() if p.config.issuer == issuer), None)


def _unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, read only to pick whose keys verify it; trusted for nothing else."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _backchannel_error(description: str) -> web.Response:
    # Back-Channel Logout 1.0 2.8: 400 with an OAuth error body.
    return web.json_response({"error": "invalid_request", "error_description": description}, status=400,
                             headers={"Cache-Control": "no-store"})


def _frontchannel_page(provider: Provider | None, *, status: int) -> web.Response:
    """The iframe's page: nothing to see, framed only by the issuer's pages."""
    response = info.render("Signed out", info.paragraph("This application's session has ended."),
                           kicker="Signed out", status=status)
    origin = "'none'" if provider is None else str(URL(provider.config.issuer).origin())
    # Front-Channel Logout 1.0 3: the RP's page is rendered in the OP's iframe; every other
    # page of the proxy refuses framing (pages.SECURITY_HEADERS).
    response.headers["Content-Security-Policy"] = f"default-src 'none'; style-src 'unsafe-inline'; " \
                                                  f"frame-ancestors {origin}; base-uri 'none'"
    return response


def signed_out_page() -> web.Response:
    return info.render("You are signed out", info.paragraph("Your session has ended. Close this window, or open "
                                                            "an application again to sign in."),
                       kicker="Signed out")
