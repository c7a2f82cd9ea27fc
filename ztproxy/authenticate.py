"""Authentication stage: who is asking. The session cookie -> a live, re-verified session.

Everything a session needs lives in one ``Auth`` bundle, built from the config in a
cleanup context (the store, the IdP clients, the login and logout flows). Routes whose
decision is known at load time (public) never look at cookies. A cookie that opens no
session (unknown, ended, expired, tampered, foreign) is the same as no cookie: the
request goes on anonymous and the policy decides what that means.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from ztproxy import metrics
from ztproxy.config.schema import Config
from ztproxy.cookies import CookieSettings, read_ticket
from ztproxy.oidc.login import LoginFlow
from ztproxy.oidc.logout import Logout
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.redirects import ReturnUrls
from ztproxy.oidc.refresh import Refresher
from ztproxy.routing import RouteTable
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import CookieSealer, Ticket, parse_secret
from ztproxy.sessions.store import SessionStore, open_store
from ztproxy.state import CONFIG, CONTEXT, ROUTES

_log = structlog.get_logger("ztproxy.auth")


@dataclass(frozen=True, slots=True)
class Auth:
    providers: Mapping[str, Provider]
    default_provider: str
    sessions: SessionManager
    refresher: Refresher
    login: LoginFlow
    logout: Logout
    cookies: CookieSettings
    return_urls: ReturnUrls

    def provider_for(self, route_provider: str | None) -> Provider:
        return self.providers[route_provider or self.default_provider]


@dataclass(frozen=True, slots=True)
class SignedIn:
    ticket: Ticket
    session: Session


AUTH = web.AppKey[Auth | None]("auth")
SIGNED_IN = web.RequestKey("signed_in", SignedIn)


def authenticate(request: web.Request) -> Awaitable[None] | None:
    """Pipeline stage; awaitable only when the store or the IdP must be asked."""
    ctx = request[CONTEXT]
    if not ctx.route.needs_identity:
        return None  # public (or closed) whatever the identity: no cookie, no store
    auth = request.app[AUTH]
    if auth is None:
        return None
    ticket = read_ticket(request, auth.cookies)
    if ticket is None:
        return None
    route_provider = ctx.route.config.identity_provider
    now = time.time()
    # The hot path: this worker's recent copy of the session, not yet due for a refresh.
    hit, session = auth.sessions.from_cache(ticket, now)
    if not hit or (session is not None and auth.refresher.due(session, now)):
        return _authenticate(request, auth, ticket, now, route_provider)
    if session is not None and (signed_in := _for_route(auth, ticket, session, route_provider)) is not None:
        request[SIGNED_IN] = signed_in
    return None


async def _authenticate(request: web.Request, auth: Auth, ticket: Ticket, now: float,
                        route_provider: str | None) -> None:
    signed_in = await _open(auth, ticket, now, route_provider)
    if signed_in is not None:
        request[SIGNED_IN] = signed_in


async def current_session(request: web.Request, auth: Auth, route_provider: str | None) -> SignedIn | None:
    """The live session the request's cookie opens, re-verified at the IdP when due."""
    ticket = read_ticket(request, auth.cookies)
    if ticket is None:
        return None
    return await _open(auth, ticket, time.time(), route_provider)


async def _open(auth: Auth, ticket: Ticket, now: float, route_provider: str | None) -> SignedIn | None:
    session = await auth.sessions.load(ticket, now)
    if session is None:
        return None
    if auth.refresher.due(session, now):
        session = await auth.refresher.refresh(ticket, session, now)
        if session is None:
            return None
    return _for_route(auth, ticket, session, route_provider)


def _for_route(auth: Auth, ticket: Ticket, session: Session, route_provider: str | None) -> SignedIn | None:
    # A session from another provider than the route's is no sign-in for this route.
    if session.provider != (route_provider or auth.default_provider):
        return None
    return SignedIn(ticket, session)


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if not config.identity_providers:
        app[AUTH] = None
        yield
        return
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 headers={"User-Agent": "ztproxy"})
    store = open_store(config.sessions)
    auth = build_auth(config, app[ROUTES], http, store=store)
    app[AUTH] = auth
    # Sessions ended by other workers and replicas leave this worker's cache at once.
    following = asyncio.create_task(auth.sessions.follow_revocations())
    unwatch = metrics.watch_active_sessions(lambda: auth.sessions.active(time.time()))
    try:
        yield
    finally:
        unwatch()
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await auth.sessions.close()
        await store.close()
        await http.close()


def build_auth(config: Config, routes: RouteTable[Any], http: aiohttp.ClientSession, *,
               store: SessionStore) -> Auth:
    sessions_config = config.sessions
    public_url = config.public_url
    providers = {p.name: Provider(p, http) for p in config.identity_providers}
    sessions = SessionManager(store, sessions_config)
    cookies = CookieSettings(session_name=sessions_config.cookie_name, domain=sessions_config.cookie_domain,
                             secure=public_url.startswith("https://"))
    secrets = [parse_secret(secret) for secret in sessions_config.cookie_secrets]
    if not secrets:  # `ztproxy run` fills one in first (shared by workers); apps built directly get their own
        _log.warning("cookie_secret_generated", hint="set sessions.cookie_secrets (or cookie_secrets_file) so "
                                                     "sign-ins in progress survive a restart")
        secrets = [os.urandom(32)]
    return_urls = ReturnUrls(public_url, routes)
    return Auth(
        providers=providers,
        default_provider=config.identity_providers[0].name,
        sessions=sessions,
        refresher=Refresher(providers, sessions, sessions_config.refresh_interval),
        login=LoginFlow(providers=providers, sessions=sessions, sealer=CookieSealer(secrets), cookies=cookies,
                        return_urls=return_urls, public_url=public_url, login_timeout=sessions_config.login_timeout,
                        lifetime=sessions_config.lifetime),
        logout=Logout(providers=providers, sessions=sessions, cookies=cookies, public_url=public_url),
        cookies=cookies,
        return_urls=return_urls,
    )
