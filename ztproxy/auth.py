"""The sign-in service the stages share: sessions, the IdP clients, the login and logout flows.

``Auth`` bundles everything a session needs, built from the config in a cleanup context
(``auth_ctx``) and kept under ``AUTH``; ``open_session`` turns a request's session cookie
into the signed-in caller, re-verified at the IdP when due. The authentication stage, the
proxy's own endpoints and ``/.ztproxy/me`` all go through it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from ztproxy import background, metrics
from ztproxy.config.schema import Config
from ztproxy.cookies import CookieSettings, read_ticket
from ztproxy.oidc.login import LoginFlow
from ztproxy.oidc.logout import Logout
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.redirects import ReturnUrls
from ztproxy.oidc.refresh import Refresher
from ztproxy.risk_seen import sign_in_context
from ztproxy.routing import RouteTable
from ztproxy.run_secrets import generate_cookie_secret
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import CookieSealer, Ticket, parse_secret
from ztproxy.sessions.store import SessionStore, open_store
from ztproxy.signals.effects import SignalEffects
from ztproxy.state import CONFIG, ROUTES, Person


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
    effects: SignalEffects  # this worker's copy of what security signals changed (kept current by signals_ctx)

    def provider_for(self, route_provider: str | None) -> Provider:
        return self.providers[route_provider or self.default_provider]


AUTH = web.AppKey[Auth | None]("auth")


async def open_session(request: web.Request, auth: Auth, route_provider: str | None) -> Person | None:
    """The live session the request's cookie opens, re-verified at the IdP when due."""
    ticket = read_ticket(request, auth.cookies)
    if ticket is None:
        return None
    return await open_ticket(auth, ticket, time.time(), route_provider)


async def open_ticket(auth: Auth, ticket: Ticket, now: float, route_provider: str | None) -> Person | None:
    """The live session of ``ticket``: loaded from the store, re-verified at the IdP when due."""
    session = await auth.sessions.load(ticket, now)
    if session is None:
        return None
    if auth.refresher.due(session, now):
        session = await auth.refresher.refresh(ticket, session, now)
        if session is None:
            return None
    return for_route(auth, ticket, session, route_provider)


def for_route(auth: Auth, ticket: Ticket, session: Session, route_provider: str | None) -> Person | None:
    # A session from another provider than the route's is no sign-in for this route.
    if session.provider != (route_provider or auth.default_provider):
        return None
    if auth.effects.active:  # a security signal may have taken MFA away or changed claims
        adjusted, applied = auth.effects.adjust(session)
        return Person(ticket, adjusted, applied)
    return Person(ticket, session)


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
    # Each IdP checked while sign-ins happen: none is sent to an IdP that cannot answer.
    watching = [asyncio.create_task(provider.reachability.watch()) for provider in auth.providers.values()]
    unwatch = metrics.watch_active_sessions(lambda: auth.sessions.active(time.time()))
    unwatch_idps = metrics.watch_idp_reachability(
        {name: provider.reachability for name, provider in auth.providers.items()})
    try:
        yield
    finally:
        unwatch()
        unwatch_idps()
        await background.stop(following, *watching)
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
    # `ztproxy run` fills one in first (shared by workers); apps built directly get their own.
    cookie_secrets = sessions_config.cookie_secrets or (generate_cookie_secret(),)
    secrets = [parse_secret(secret) for secret in cookie_secrets]
    return_urls = ReturnUrls(public_url, routes)
    return Auth(
        providers=providers,
        default_provider=config.identity_providers[0].name,
        sessions=sessions,
        refresher=Refresher(providers, sessions, sessions_config.refresh_interval),
        login=LoginFlow(providers=providers, sessions=sessions, sealer=CookieSealer(secrets), cookies=cookies,
                        return_urls=return_urls, public_url=public_url, login_timeout=sessions_config.login_timeout,
                        lifetime=sessions_config.lifetime,
                        context_of=sign_in_context if config.risk.enabled else None),
        logout=Logout(providers=providers, sessions=sessions, cookies=cookies, public_url=public_url),
        cookies=cookies,
        return_urls=return_urls,
        effects=SignalEffects(config.identity_providers),
    )
