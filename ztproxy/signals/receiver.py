"""The Shared Signals receiver: streams at the transmitters, the push endpoint, and what events do.

At start ztproxy creates its stream at each transmitter (or, when one exists, replaces its
delivery), asking for the events it acts on, pushed (RFC 8935) to
``{public_url}/.ztproxy/ssf/events`` with an ``Authorization`` header holding a push secret
made once and kept in the session store, so every replica accepts what any one registered;
or polled (RFC 8936) at the endpoint the transmitter gives, each SET acknowledged only
once its effect is applied (a restart asks again for what it had not acknowledged, and a
SET seen before changes nothing the second time).

``/.ztproxy/ssf/events`` answers 202 to an accepted SET, else 400 with ``{"err", "description"}``
(RFC 8935 2.3). What an accepted event does is in ``ztproxy.signals.actions``; the lasting
effects (MFA lost, claims changed, a device not compliant) are a table every worker of every
replica follows (``ztproxy.signals.effects``), set up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from yarl import URL

from ztproxy import background, metrics
from ztproxy.auth import AUTH, Auth
from ztproxy.config.schema import Config
from ztproxy.config.signals import TransmitterConfig
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.fetch import BodyTooLarge, FetchFailed, get_json, json_client, read_bounded
from ztproxy.oidc.access_tokens import unverified_issuer
from ztproxy.oidc.tokens import UnknownSigningKey
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.shared_table import SharedTable
from ztproxy.signals import events as ev
from ztproxy.signals.actions import FOREVER, Actions, short_name
from ztproxy.signals.effects import TABLE
from ztproxy.signals.events import SecurityEvent, SetRefused
from ztproxy.signals.outbox import transmitting
from ztproxy.signing import KEYRING
from ztproxy.state import CONFIG

_log = structlog.get_logger("ztproxy.signals")

SSF_EVENTS_PATH = "/.ztproxy/ssf/events"
_MAX_SET = 64 * 1024
_MAX_DOCUMENT = 1024 * 1024
_SECRET_KEY = "ssf:push-secret"
_RETRY = 5.0  # seconds between attempts to set up a stream the transmitter could not be asked about
_SEEN_BEFORE = "this SET was accepted before"
_STATUS_INTERVAL = 60.0  # seconds between checks of a stream's status
MIN_POLL = 0.1  # seconds between reads of the effects table's generation, at least (cache_ttl may be 0)


def configuration_url(config: TransmitterConfig) -> str:
    """SSF 1.0: /.well-known/ssf-configuration between the issuer's host and its path."""
    if config.configuration_url is not None:
        return config.configuration_url
    issuer = URL(config.issuer)
    path = issuer.path.rstrip("/")
    return str(issuer.with_path(f"/.well-known/ssf-configuration{path}"))


class Transmitter:
    """One transmitter: its SSF configuration and keys (cached), and our stream there."""

    def __init__(self, config: TransmitterConfig, http: aiohttp.ClientSession, provider: str) -> None:
        self.config = config
        self.provider = provider  # whose users its subjects name
        self._http = http
        self._document: Mapping[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched = float("-inf")

    async def document(self) -> Mapping[str, Any]:
        if self._document is None or time.monotonic() - self._fetched > self.config.metadata_ttl:
            status, document = await get_json(self._http, configuration_url(self.config), max_bytes=_MAX_DOCUMENT)
            if status != 200 or not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
                raise FetchFailed(f"no SSF configuration for {self.config.issuer} (status {status})")
            self._document, self._fetched, self._keys = document, time.monotonic(), None
        return self._document

    async def keys(self, *, refetch: bool = False) -> KeySet:
        if self._keys is None or refetch:
            document = await self.document()
            status, jwks = await get_json(self._http, str(document.get("jwks_uri", "")), max_bytes=_MAX_DOCUMENT)
            try:
                self._keys = KeySet.import_key_set(jwks)
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise FetchFailed(f"the transmitter's keys are unusable (status {status})") from exc
        return self._keys

    async def ensure_stream(self, endpoint: str, secret: str) -> dict[str, Any]:
        """Create our stream, or replace the delivery of the one there (another replica's, an old one);
        the stream as the transmitter describes it."""
        document = await self.document()
        url = document.get("configuration_endpoint")
        if not isinstance(url, str):
            raise FetchFailed("the transmitter offers no stream management")
        headers = {"Authorization": f"Bearer {self.config.bearer_token}"} if self.config.bearer_token else {}
        delivery: dict[str, str] = {"method": "urn:ietf:rfc:8936"} if self.config.delivery == "poll" else {
            "method": "urn:ietf:rfc:8935", "endpoint_url": endpoint, "authorization_header": f"Bearer {secret}"}
        stream = {"aud": self.config.audience, "events_requested": list(ev.ACTED_ON), "delivery": delivery}
        async with self._http.post(url, json=stream, headers=headers, allow_redirects=False) as response:
            status = response.status
            created = orjson.loads(await read_bounded(response, _MAX_DOCUMENT)) if status in (200, 201) else None
        if status == 409:  # SSF 8.1.1.1: a stream exists for this receiver: take it over
            status, existing = await get_json(self._http, url, max_bytes=_MAX_DOCUMENT, headers=headers)
            current = existing[0] if isinstance(existing, list) and existing else existing
            if status != 200 or not isinstance(current, dict):
                raise FetchFailed(f"reading the existing stream answered {status}")
            update = {**stream, "stream_id": current.get("stream_id")}
            async with self._http.patch(url, json=update, headers=headers, allow_redirects=False) as response:
                status = response.status
                await response.read()
            if status not in (200, 202):
                raise FetchFailed(f"updating the stream answered {status}")
            created = {**current, **update, "delivery": {**current.get("delivery", {}), **delivery}}
        elif status not in (200, 201):
            raise FetchFailed(f"creating the stream answered {status}")
        _log.info("ssf_stream_ready", transmitter=self.config.name, delivery=self.config.delivery,
                  stream_id=str((created or {}).get("stream_id", ""))[:100])
        return created if isinstance(created, dict) else {}

    async def request_verification(self, stream_id: str, state: str) -> None:
        """SSF 8.1.4: ask the transmitter to send a verification event carrying ``state``."""
        url = (await self.document()).get("verification_endpoint")
        if not isinstance(url, str):
            return
        headers = {"Authorization": f"Bearer {self.config.bearer_token}"} if self.config.bearer_token else {}
        async with self._http.post(url, json={"stream_id": stream_id, "state": state}, headers=headers,
                                   allow_redirects=False) as response:
            await response.read()
            if response.status not in (200, 204):
                raise FetchFailed(f"requesting verification answered {response.status}")

    async def status(self, stream_id: str) -> str | None:
        """SSF 8.1.2: the stream's status at the transmitter (enabled, paused, disabled)."""
        url = (await self.document()).get("status_endpoint")
        if not isinstance(url, str):
            return None
        headers = {"Authorization": f"Bearer {self.config.bearer_token}"} if self.config.bearer_token else {}
        status, answer = await get_json(self._http, URL(url).with_query(stream_id=stream_id), max_bytes=_MAX_DOCUMENT,
                                        headers=headers)
        value = answer.get("status") if status == 200 and isinstance(answer, dict) else None
        return value if isinstance(value, str) else None

    async def poll(self, url: str, acks: list[str], errors: dict[str, dict[str, str]]) -> dict[str, str]:
        """One poll (RFC 8936 2.4): acknowledge ``acks``, report ``errors``; the SETs returned, by jti."""
        headers = {"Authorization": f"Bearer {self.config.bearer_token}"} if self.config.bearer_token else {}
        body = {"ack": acks, "maxEvents": 100, "returnImmediately": True, **({"setErrs": errors} if errors else {})}
        async with self._http.post(url, json=body, headers=headers, allow_redirects=False) as response:
            status = response.status
            answer = orjson.loads(await read_bounded(response, _MAX_DOCUMENT)) if status == 200 else None
        if not isinstance(answer, dict):
            raise FetchFailed(f"polling answered {status}")
        sets = answer.get("sets", {})
        return {str(jti): token for jti, token in sets.items() if isinstance(token, str)} \
            if isinstance(sets, dict) else {}


@dataclass
class Signals:
    """The receiver: the transmitters by issuer, and the sessions its events act on."""

    transmitters: Mapping[str, Transmitter]
    sessions: SessionManager
    actions: Actions
    secret: str

    async def receive(self, request: web.Request) -> web.Response:
        try:
            event, transmitter = await self._accept(request)
        except SetRefused as refused:
            _log.warning("ssf_event_refused", err=refused.err, description=refused.description)
            metrics.signal_received("-", "rejected", refused.err)
            return web.json_response({"err": refused.err, "description": refused.description}, status=400)
        outcome = await self.apply(event, transmitter, time.time())
        metrics.signal_received(short_name(event.event_type), outcome)
        _log.info("ssf_event", transmitter=transmitter.config.name, event_type=event.event_type, jti=event.jti[:64],
                  outcome=outcome)
        return web.Response(status=202)

    async def _accept(self, request: web.Request) -> tuple[SecurityEvent, Transmitter]:
        # RFC 8935 2: the push is authorised by the header the stream was given, on any replica.
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.secret}".encode()):
            raise SetRefused("authentication_failed", "the Authorization header is not this receiver's")
        if request.content_type != "application/secevent+jwt":
            raise SetRefused("invalid_request", "the body must be application/secevent+jwt")
        try:
            body = await read_bounded_request(request)
        except BodyTooLarge as exc:
            raise SetRefused("invalid_request", "the SET is too large") from exc
        return await self.read(body.decode("ascii", errors="replace").strip())

    async def read(self, token: str) -> tuple[SecurityEvent, Transmitter]:
        """A SET's event and transmitter (pushed or polled), once: SetRefused otherwise."""
        issuer = unverified_issuer(token)
        if issuer is None:  # RFC 8935 2.3: not a JWT at all (or one that names no issuer)
            raise SetRefused("invalid_request", "the body is not a signed JWT naming its issuer")
        transmitter = self.transmitters.get(issuer)
        if transmitter is None:
            raise SetRefused("invalid_issuer", "the SET is not from a transmitter of this receiver")
        config = transmitter.config
        now = time.time()
        try:
            try:
                event = ev.read_set(token, keys=await transmitter.keys(), issuer=config.issuer,
                                    audience=config.audience, algorithms=config.algorithms, now=now)
            except UnknownSigningKey:
                event = ev.read_set(token, keys=await transmitter.keys(refetch=True), issuer=config.issuer,
                                    audience=config.audience, algorithms=config.algorithms, now=now)
        except UnknownSigningKey as exc:
            raise SetRefused("invalid_key", "the SET is signed with a key the transmitter does not publish") from exc
        except (FetchFailed, aiohttp.ClientError, TimeoutError) as exc:
            # The transmitter is down: refused (it pushes again later, RFC 8935 2.4), logged and counted.
            _log.warning("ssf_keys_unavailable", transmitter=config.name, error=str(exc)[:200])
            metrics.signal_stream_problem(config.name, "keys-unavailable")
            raise SetRefused("invalid_key", "the transmitter's keys cannot be read now") from exc
        # RFC 8417 2.2 / RFC 8935 2.3: a jti accepted by any replica is a replay.
        if not await self.sessions.store.put(f"ssf:jti:{config.issuer}:{event.jti}", b"", 2 * ev.MAX_AGE,
                                             only_new=True):
            raise SetRefused("invalid_request", _SEEN_BEFORE)
        return event, transmitter

    async def apply(self, event: SecurityEvent, transmitter: Transmitter, accepted: float) -> str:
        """What the event (accepted at ``accepted``) did: ``applied``, ``ignored`` (older than one
        applied, unknown), ``unmatched`` (no session or device of this subject here)."""
        store = self.sessions.store
        if event.event_type == ev.VERIFICATION:
            # SSF 8.1.4: the transmitter answers our verification request with the state we sent.
            expected = await store.get(_verification_key(transmitter))
            if expected is not None and hmac.compare_digest(str(event.payload.get("state", "")).encode(), expected):
                _log.info("ssf_stream_verified", transmitter=transmitter.config.name)
                return "applied"
            return "ignored"
        return await self.actions.apply(event, transmitter.provider, transmitter.config.name, accepted)


async def read_bounded_request(request: web.Request) -> bytes:
    if (request.content_length or 0) > _MAX_SET:
        raise BodyTooLarge(f"larger than {_MAX_SET} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(16384):
        body += chunk
        if len(body) > _MAX_SET:
            raise BodyTooLarge(f"larger than {_MAX_SET} bytes")
    return bytes(body)


SIGNALS = web.AppKey[Signals | None]("signals")


async def _set_up(signals: Signals, endpoint: str, secret: str) -> None:
    """Each stream, retried until its transmitter answers (a receiver must not need it to start);
    then, for poll delivery, the polling."""
    pending = dict(signals.transmitters)
    polls: list[asyncio.Task[None]] = []
    try:
        while pending:
            for issuer, transmitter in list(pending.items()):
                try:
                    stream = await transmitter.ensure_stream(endpoint, secret)
                except (FetchFailed, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    _log.warning("ssf_stream_setup_failed", transmitter=transmitter.config.name, error=str(exc)[:200])
                    metrics.signal_stream_problem(transmitter.config.name, "setup-failed")
                    continue
                del pending[issuer]
                poll_url = stream.get("delivery", {}).get("endpoint_url") if transmitter.config.delivery == "poll" \
                    else None
                if isinstance(poll_url, str):
                    polls.append(asyncio.create_task(_poll(signals, transmitter, poll_url)))
                polls.append(asyncio.create_task(_watch(signals, transmitter, str(stream.get("stream_id", "")))))
            if pending:
                await asyncio.sleep(_RETRY)
        await asyncio.gather(*polls)
    finally:
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)


def _verification_key(transmitter: Transmitter) -> str:
    return f"ssf:verify:{transmitter.config.name}"


async def _watch(signals: Signals, transmitter: Transmitter, stream_id: str) -> None:
    """Verify the stream once (the state shared by the replicas), then check its status now and then:
    a stream the transmitter paused or disabled delivers nothing, which must not go unnoticed."""
    state = secrets.token_urlsafe(16)
    try:
        await signals.sessions.store.put(_verification_key(transmitter), state.encode(), FOREVER)
        await transmitter.request_verification(stream_id, state)
    except (FetchFailed, aiohttp.ClientError, TimeoutError, ValueError) as exc:
        _log.warning("ssf_verification_failed", transmitter=transmitter.config.name, error=str(exc)[:200])
        metrics.signal_stream_problem(transmitter.config.name, "verification-failed")
    while True:
        try:
            status = await transmitter.status(stream_id)
        except (FetchFailed, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _log.warning("ssf_status_failed", transmitter=transmitter.config.name, error=str(exc)[:200])
            metrics.signal_stream_problem(transmitter.config.name, "status-failed")
        else:
            if status is not None and status != "enabled":
                _log.warning("ssf_stream_not_enabled", transmitter=transmitter.config.name, status=status[:40])
                metrics.signal_stream_problem(transmitter.config.name,
                                              status if status in ("paused", "disabled") else "not-enabled")
        await asyncio.sleep(_STATUS_INTERVAL)


async def _poll(signals: Signals, transmitter: Transmitter, url: str) -> None:
    """RFC 8936: ask for SETs, apply each, acknowledge it at the next poll; errors reported likewise."""
    acks: list[str] = []
    errors: dict[str, dict[str, str]] = {}
    while True:
        try:
            sets = await transmitter.poll(url, acks, errors)
        except (FetchFailed, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _log.warning("ssf_poll_failed", transmitter=transmitter.config.name, error=str(exc)[:200])
            metrics.signal_stream_problem(transmitter.config.name, "poll-failed")
            await asyncio.sleep(_RETRY)
            continue
        acks, errors = [], {}
        for jti, token in sets.items():
            try:
                event, source = await signals.read(token)
            except SetRefused as refused:
                if refused.description == _SEEN_BEFORE:
                    acks.append(jti)  # applied before (a poll cut short, a restart): acknowledge it now
                    continue
                errors[jti] = {"err": refused.err, "description": refused.description}
                metrics.signal_received("-", "rejected", refused.err)
                continue
            outcome = await signals.apply(event, source, time.time())
            metrics.signal_received(short_name(event.event_type), outcome)
            _log.info("ssf_event", transmitter=source.config.name, event_type=event.event_type,
                      jti=event.jti[:64], outcome=outcome, delivery="poll")
            acks.append(jti)
        if not sets and not acks and not errors:
            await asyncio.sleep(transmitter.config.poll_interval)


async def signals_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx, after ``auth_ctx``: the receiver, when transmitters are configured; the pushes
    to ``signals.receivers`` of the sessions this worker ends."""
    config = app[CONFIG]
    auth: Auth | None = app[AUTH]
    app[SIGNALS] = None
    if auth is None:
        yield
        return
    async with transmitting(config, auth.sessions, lambda: app[KEYRING]):
        if not config.signals.transmitters:
            yield
            return
        async with _receiving(app, config, auth) as signals:
            app[SIGNALS] = signals
            yield


@contextlib.asynccontextmanager
async def _receiving(app: web.Application, config: Config, auth: Auth) -> AsyncIterator[Signals]:
    store = auth.sessions.store
    await store.put(_SECRET_KEY, secrets.token_urlsafe(32).encode(), FOREVER, only_new=True)
    secret = (await store.get(_SECRET_KEY) or b"").decode()
    default = config.identity_providers[0].name
    timeout = max(transmitter.http_timeout for transmitter in config.signals.transmitters)
    # The effects table, followed by this worker as by every other (a restart reads it again).
    table = SharedTable(store, TABLE, poll_every=max(float(config.sessions.cache_ttl), MIN_POLL),
                        on_loaded=auth.effects.replace, on_announced=auth.effects.add)
    actions = Actions(auth.sessions, table, auth.effects, lifetime=config.sessions.lifetime)
    with contextlib.suppress(SessionStoreUnavailable):  # then the follower reads it once the store is back
        await table.reload()
    following = asyncio.create_task(table.follow(unavailable_event="signal_effects_unavailable"))
    async with json_client(timeout) as http:
        transmitters = {t.issuer: Transmitter(t, http, t.identity_provider or default)
                        for t in config.signals.transmitters}
        signals = Signals(transmitters, auth.sessions, actions, secret)
        setup = asyncio.create_task(_set_up(signals, f"{config.public_url}{SSF_EVENTS_PATH}", secret))
        try:
            yield signals
        finally:
            await background.stop(setup, following)
