"""Revoked services and tokens: refused on every worker and replica, tokens issued before and after.

An operator revokes an OAuth client (``client_id``: every token it holds or will be given),
a workload (``service``: its SPIFFE ID) or one token (``jti``) through the admin API. The
session store is the authority: a revocation is an entry of the table :data:`TABLE` (a
client's or a service's kept until lifted; a token's until that token expires: its ``exp``
when the operator gives it, else :data:`TOKEN_BOUND`). Each change then writes a new
generation under :data:`GENERATION_KEY` and is announced on :data:`CHANNEL`.

Every worker keeps the whole table in three dicts (:class:`RevokedServices`) and checks each
service request against them: dict lookups, no I/O, for tokens served from the verified-token
cache of ``ztproxy.bearer`` too. An announcement of a revocation adds it at once (a message
can only add a refusal, never lift one) and makes the worker read the table again, as it
does at every (re)subscription and when the generation it reads every ``sessions.cache_ttl``
has changed: a worker that missed an
announcement (pub/sub is at most once) refuses within ``cache_ttl``, as for sessions. Until a
worker has read the table once, it answers service requests 503 (fail closed); a store that
goes away later leaves the last table read in force (the mechanics are
:class:`~ztproxy.sessions.shared_table.SharedTable`). No aiohttp but the app's cleanup context.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import orjson
import structlog
from aiohttp import web

from ztproxy import background, metrics
from ztproxy.errors import SessionStoreUnavailable, TokenServiceUnavailable
from ztproxy.policy import reasons
from ztproxy.policy.model import Service
from ztproxy.sessions.shared_table import SharedTable, announced_entry
from ztproxy.sessions.store import SessionStore, open_store
from ztproxy.state import CONFIG, ROUTE_LIST

TABLE = "services:revoked"
GENERATION_KEY = f"{TABLE}:generation"
CHANNEL = f"ztproxy:{TABLE}"
KINDS = ("client_id", "service", "jti")
TOKEN_BOUND = 24 * 3600.0  # how long a jti stays revoked when the token's exp is not given
MIN_POLL = 0.1  # seconds between reads of the generation, at least (cache_ttl may be 0)

_log = structlog.get_logger("ztproxy.services")


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revoked client, service or token; ``expires_at`` None: until lifted (Unix seconds)."""

    kind: str  # one of KINDS
    value: str
    revoked_at: float
    expires_at: float | None = None

    @property
    def entry(self) -> str:
        """Its name in the store's table."""
        return f"{self.kind}:{self.value}"

    def to_bytes(self) -> bytes:
        return orjson.dumps({"revoked_at": self.revoked_at, "expires_at": self.expires_at})

    @classmethod
    def from_entry(cls, entry: str, value: bytes) -> Revocation | None:
        """The revocation a table entry holds; None for anything this version cannot read."""
        kind, _, name = entry.partition(":")
        try:
            fields = orjson.loads(value)
            revoked_at, expires_at = float(fields["revoked_at"]), fields.get("expires_at")
            expires = None if expires_at is None else float(expires_at)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return cls(kind, name, revoked_at, expires) if kind in KINDS and name else None


class RevokedServices:
    """This worker's copy of the table, checked on every service request."""

    def __init__(self) -> None:
        self.loaded = False  # until the table was read once, nothing can be vouched for
        self._clients: dict[str, Revocation] = {}
        self._services: dict[str, Revocation] = {}
        self._tokens: dict[str, Revocation] = {}
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change of the table here; returns how to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in tuple(self._listeners):
            listener()

    def replace(self, revocations: Iterable[Revocation]) -> None:
        by_kind: dict[str, dict[str, Revocation]] = {kind: {} for kind in KINDS}
        for revocation in revocations:
            by_kind[revocation.kind][revocation.value] = revocation
        self._clients, self._services, self._tokens = by_kind["client_id"], by_kind["service"], by_kind["jti"]
        self.loaded = True
        self._changed()

    def add(self, revocation: Revocation) -> None:
        """One revocation announced, in force here before the table is read again."""
        {"client_id": self._clients, "service": self._services, "jti": self._tokens}[revocation.kind][
            revocation.value] = revocation
        self._changed()

    def refusal(self, service: Service, now: float) -> str | None:
        """The reason ``service`` is refused (``token-revoked``, ``service-revoked``), or None."""
        if not self.loaded:
            raise TokenServiceUnavailable()
        found = None
        if service.token_id is not None:
            found = self._tokens.get(service.token_id)
            if found is not None and found.expires_at is not None and found.expires_at <= now:
                found = None
        reason = reasons.TOKEN_REVOKED
        if found is None:
            reason = reasons.SERVICE_REVOKED
            if service.client_id is not None:
                found = self._clients.get(service.client_id)
            if found is None and service.spiffe_id is not None:
                found = self._services.get(service.spiffe_id)
            if found is None:
                return None
        metrics.revocation_enforced("service:" + found.entry, found.revoked_at, now)
        return reason


class ServiceRevocations:
    """The table in the store, and this process's copy of it (see the module docstring)."""

    def __init__(self, store: SessionStore, *, poll_every: float) -> None:
        self.store = store
        self.revoked = RevokedServices()
        self.table = SharedTable(store, TABLE, poll_every=poll_every, on_loaded=self._loaded,
                                 on_announced=self._announced)

    async def revoke(self, revocation: Revocation, now: float) -> None:
        """Store ``revocation`` (replacing one of the same kind and value), then announce it."""
        ttl = None if revocation.expires_at is None else revocation.expires_at - now
        if ttl is not None and ttl <= 0:
            raise ValueError("the token has expired already")
        await self.table.write(revocation.entry, revocation.to_bytes(), ttl)

    async def lift(self, kind: str, value: str) -> bool:
        """Forget a revocation; False when there was none."""
        return await self.table.remove(f"{kind}:{value}")

    async def listed(self) -> list[Revocation]:
        """Every revocation in force, oldest first."""
        return _revocations(await self.table.entries())

    async def reload(self) -> None:
        await self.table.reload()

    async def follow(self) -> None:
        """Keep this worker's copy current until cancelled (the app runs this as a task)."""
        await self.table.follow(unavailable_event="service_revocations_unavailable")

    def _loaded(self, entries: dict[str, bytes]) -> None:
        self.revoked.replace(_revocations(entries))

    def _announced(self, entry: str, value: bytes) -> None:
        revocation = Revocation.from_entry(entry, value)
        if revocation is not None:
            self.revoked.add(revocation)


def _revocations(entries: dict[str, bytes]) -> list[Revocation]:
    found = (Revocation.from_entry(entry, value) for entry, value in entries.items())
    return sorted((r for r in found if r is not None), key=lambda r: (r.revoked_at, r.kind, r.value))


def _announced(message: bytes) -> Revocation | None:
    """The revocation an announcement carries, if it carries one this version reads."""
    announced = announced_entry(message)
    return None if announced is None else Revocation.from_entry(*announced)


REVOKED_SERVICES = web.AppKey[RevokedServices | None]("revoked_services")


async def revocations_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: this worker's copy of the revocations, kept current, when a route takes services."""
    if not any(route.accepts_tokens for route in app[ROUTE_LIST]):
        app[REVOKED_SERVICES] = None
        yield
        return
    config = app[CONFIG].sessions
    store = open_store(config)
    revocations = ServiceRevocations(store, poll_every=max(float(config.cache_ttl), MIN_POLL))
    app[REVOKED_SERVICES] = revocations.revoked
    try:
        await revocations.reload()
    except SessionStoreUnavailable:
        _log.warning("service_revocations_unavailable", loaded=False)
    following = asyncio.create_task(revocations.follow())
    try:
        yield
    finally:
        await background.stop(following)  # within a bound, though the follower may lose a cancellation
        await store.close()
