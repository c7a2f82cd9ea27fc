"""The app's side of just-in-time access: the registry, this worker's view, the webhooks, under ``GRANTS``.

Built in a cleanup context when a route has a grant rule and people sign in; otherwise
``GRANTS`` is None and no request pays anything for grants. The terms of each route's grants
are read from the configuration in force, so after a reload a route that lost its grant
rule admits nobody by a grant, and its open requests can no longer be decided.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from ztproxy import background, metrics
from ztproxy.config.schema import Config
from ztproxy.context import route_entries
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.grants.registry import GrantRegistry
from ztproxy.grants.view import GrantsView
from ztproxy.grants.webhooks import Webhooks
from ztproxy.policy.criteria.grant import Grant
from ztproxy.sessions.store import SessionStore, open_store
from ztproxy.state import CONFIG, ROUTE_LIST
from ztproxy.telemetry import get_logger

_log = get_logger("ztproxy.grants")


@dataclass(frozen=True, slots=True)
class Grants:
    registry: GrantRegistry
    view: GrantsView
    terms: Mapping[str, Grant]  # route name -> the terms of its grants (routes with a grant rule only)

    def terms_of(self, route: str) -> Grant | None:
        return self.terms.get(route)


GRANTS = web.AppKey[Grants | None]("grants")


def terms_by_route(config: Config) -> dict[str, Grant]:
    """The grant terms of every route that has a grant rule."""
    return {route.name: route.grant for _, _, route in route_entries(config) if route.grant is not None}


def build_registry(config: Config, store: SessionStore, terms: Mapping[str, Grant],
                   http: aiohttp.ClientSession | None,
                   view: GrantsView | None = None) -> tuple[GrantRegistry, Webhooks | None]:
    """The registry, telling the configured webhooks of each step (with an HTTP client to send them),
    keeping ``view`` in step with the store."""
    webhooks = None
    if config.grants.webhooks and http is not None:
        webhooks = Webhooks(config.grants.webhooks, http, terms.get)
    registry = GrantRegistry(store, config.grants, notify=webhooks.notify if webhooks else None, view=view,
                             poll_every=float(config.sessions.cache_ttl))
    return registry, webhooks


def webhook_client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


async def grants_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: grants on this worker, when a route has a grant rule and people sign in."""
    config = app[CONFIG]
    terms = {route.name: route.grant for route in app[ROUTE_LIST] if route.grant is not None}
    if not terms or not config.identity_providers:
        app[GRANTS] = None
        yield
        return
    store = open_store(config.sessions)
    http = webhook_client() if config.grants.webhooks else None
    view = GrantsView()
    registry, webhooks = build_registry(config, store, terms, http, view)
    app[GRANTS] = Grants(registry, view, terms)
    try:
        await registry.reload()
    except SessionStoreUnavailable:
        _log.warning("grants_unavailable", loaded=False)
    following = asyncio.create_task(registry.follow())
    unwatch = metrics.watch_active_grants(view.active_count)
    try:
        yield
    finally:
        unwatch()
        await background.stop(following)
        if webhooks is not None:
            await webhooks.close()
        if http is not None:
            await http.close()
        await store.close()


def now() -> float:
    """The wall clock grants are judged by (every replica reads the same ends_at)."""
    return time.time()
