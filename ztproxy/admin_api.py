"""The admin API on the admin listener: list a user's sessions; revoke a session, a user, a device,
a service, a client or a token.

    GET    /admin/sessions?user=SUB[&provider=NAME]  -> {"sessions": [{"handle", "provider", "expires_at", ...}]}
    DELETE /admin/sessions/{handle}                  -> {"revoked": 1}           (404 if no such live session)
    POST   /admin/sessions/revoke  {"user": SUB[, "provider": NAME]} | {"device": ID}  -> {"revoked": N}
    POST   /admin/services/revoke  {"client_id": ID} | {"service": SPIFFE_ID} | {"jti": ID[, "exp": UNIX]}
                                                     -> {"revoked": {"kind", "value", "revoked_at", "expires_at"}}
    GET    /admin/services/revocations               -> {"revocations": [{"kind", "value", ...}]}
    POST   /admin/services/lift    (the same bodies, without exp) -> {"lifted": 1}  (404 if none)
    GET    /admin/grants[?state=...], POST /admin/grants/{id}/approve|deny|revoke  (ztproxy.grants.admin)

Every ``/admin/`` request needs ``Authorization: Bearer <server.admin_token>``, compared in
constant time; without a configured token the whole API answers 403 (never open). Answers
are JSON, errors too (``{"error": code, "message": ...}``), never a stack trace.

The API works on what the store shows without opening a session (it has no session key,
by design): the user, handle and device indexes, and the store's expiries. A session's
handle is its public id, the ``session=`` of the logs and the ``sid`` of assertions.
Revocations go through :class:`~ztproxy.sessions.manager.SessionManager`: deleted in the
store, then announced to every worker and replica; those of services through
:class:`~ztproxy.service_revocations.ServiceRevocations`: kept in the store, then announced.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from ztproxy import metrics
from ztproxy.config.schema import Config
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.grants.admin import add_grant_routes
from ztproxy.grants.model import GrantRefused
from ztproxy.service_revocations import KINDS, TOKEN_BOUND, Revocation, ServiceRevocations
from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.store import open_store
from ztproxy.signals.outbox import transmitting
from ztproxy.signing import KEYRING
from ztproxy.state import CONFIG
from ztproxy.telemetry import get_logger

log = get_logger("ztproxy.admin")

PREFIX = "/admin/"
MAX_ID_LENGTH = 1024  # of a subject or device id in a request; OIDC subjects are at most 255
MAX_BODY = 16 * 1024
_HANDLE_RE = re.compile(r"[0-9a-f]{16}")
_REALM = 'Bearer realm="ztproxy-admin"'

_BY_ADMIN = "revoked by an administrator"
ADMIN_SESSIONS = web.AppKey("admin_sessions", SessionManager)
ADMIN_SERVICES = web.AppKey("admin_services", ServiceRevocations)
_TOKEN_DIGEST = web.AppKey("admin_token_digest", bytes)


class ApiError(Exception):
    """An answer other than 200, as JSON: ``{"error": code, "message": message}``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def add_admin_api(app: web.Application, config: Config) -> None:
    """Register the admin API on the admin listener's app (``ztproxy.admin.build_admin_app``)."""
    token = config.server.admin_token
    if token is not None:
        app[_TOKEN_DIGEST] = _digest(token)
    app.middlewares.append(_guard)
    app.router.add_get("/admin/sessions", list_sessions)
    app.router.add_delete("/admin/sessions/{handle}", revoke_session)
    app.router.add_post("/admin/sessions/revoke", revoke_sessions)
    app.router.add_post("/admin/services/revoke", revoke_service)
    app.router.add_get("/admin/services/revocations", list_service_revocations)
    app.router.add_post("/admin/services/lift", lift_service_revocation)
    if token is not None and config.identity_providers:
        app.cleanup_ctx.append(_sessions_ctx)
    if token is not None:
        app.cleanup_ctx.append(_services_ctx)
    if token is not None and config.identity_providers:
        add_grant_routes(app)


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    # Its own store connection; with `store: memory` the proxy's own store, in this process.
    store = open_store(app[CONFIG].sessions)
    sessions = SessionManager(store, app[CONFIG].sessions)
    app[ADMIN_SESSIONS] = sessions
    try:
        # Apps that subscribe hear of the sessions an administrator ends (signals.receivers).
        async with transmitting(app[CONFIG], sessions, lambda: app[KEYRING]):
            yield
    finally:
        await sessions.close()
        await store.close()


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[CONFIG].sessions)
    app[ADMIN_SERVICES] = ServiceRevocations(store, poll_every=float(app[CONFIG].sessions.cache_ttl))
    try:
        yield
    finally:
        await store.close()


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    if not request.path.startswith(PREFIX):
        return await handler(request)
    try:
        _authorize(request)
        return await handler(request)
    except ApiError as error:
        return _error(error)
    except GrantRefused as refused:  # the grants routes' refusals (ztproxy.grants.admin)
        return _error(ApiError(refused.status, refused.code, refused.message))
    except web.HTTPNotFound:
        return _error(ApiError(404, "not-found", "No such admin endpoint: see GET /admin/sessions, "
                                                 "DELETE /admin/sessions/{handle}, POST /admin/sessions/revoke, "
                                                 "POST /admin/services/revoke, GET /admin/services/revocations, "
                                                 "POST /admin/services/lift, GET /admin/grants, "
                                                 "POST /admin/grants/{id}/approve|deny|revoke."))
    except web.HTTPException as exc:  # 405, 413... raised by aiohttp itself
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return _error(ApiError(exc.status, _http_code(exc.status), exc.reason, allow))
    except SessionStoreUnavailable:
        return _error(ApiError(503, "session-store-unavailable", "The session store cannot be reached; "
                                    "nothing was changed. Try again once it is back."))
    except Exception:
        log.exception("admin_api_failed", method=request.method, path=request.path[:256])
        return _error(ApiError(500, "internal-error", "The request failed; the admin listener's log says why."))


def _authorize(request: web.Request) -> None:
    expected = request.app.get(_TOKEN_DIGEST)
    if expected is None:
        raise ApiError(403, "admin-api-disabled", "The admin API is off: set server.admin_token_file "
                                                  "(a file holding a random token) and restart ztproxy.")
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # RFC 7235 2.1: the scheme is case-insensitive.
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "Send the admin token: Authorization: Bearer <token>.",
                       {"WWW-Authenticate": _REALM})
    # Digests of equal length, compared in constant time: neither content nor length leaks.
    if not hmac.compare_digest(_digest(presented.strip()), expected):
        log.warning("admin_token_refused", client=request.remote)
        raise ApiError(401, "invalid-token", "The admin token is not valid.",
                       # RFC 6750 3.1
                       {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'})


async def list_sessions(request: web.Request) -> web.Response:
    sessions = _sessions(request)
    subject = _identifier(request.query.get("user"), "user")
    providers = _providers(request, request.query.get("provider"))
    now = time.time()
    found = [entry for provider in providers for entry in await sessions.sessions_of(provider, subject)]
    return _json({"user": subject, "sessions": [
        {"handle": entry.handle, "provider": entry.provider, "expires_at": _iso(now + entry.expires_in),
         "expires_in": round(entry.expires_in, 1)} for entry in found]})


async def revoke_session(request: web.Request) -> web.Response:
    sessions = _sessions(request)
    handle = request.match_info["handle"]
    if not _HANDLE_RE.fullmatch(handle):
        raise ApiError(400, "bad-handle", "A session handle is 16 lowercase hexadecimal characters, "
                                          "as GET /admin/sessions lists them.")
    if not await sessions.end_handle(handle, Ending("admin", _BY_ADMIN)):
        raise ApiError(404, "not-found", f"No live session has the handle {handle}.")
    log.info("sessions_revoked", by="admin", handle=handle, sessions_ended=1)
    metrics.session_ended("admin")
    return _json({"revoked": 1, "handle": handle})


async def revoke_sessions(request: web.Request) -> web.Response:
    sessions = _sessions(request)
    body = await _json_body(request)
    unknown = sorted(set(body) - {"user", "provider", "device"})
    if unknown:
        raise ApiError(400, "bad-request", f"Unknown field {unknown[0]!r}: give user (and provider) or device.")
    if ("user" in body) == ("device" in body):
        raise ApiError(400, "bad-request", "Give exactly one of user or device.")
    if "device" in body:
        if "provider" in body:
            raise ApiError(400, "bad-request", "provider goes with user, not with device.")
        device = _identifier(body["device"], "device")
        ended = await sessions.end_device(device, Ending("admin", _BY_ADMIN))
        log.info("sessions_revoked", by="admin", device=device, sessions_ended=ended)
        metrics.session_ended("admin", ended)
        return _json({"revoked": ended, "device": device})
    subject = _identifier(body["user"], "user")
    provider = body.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ApiError(400, "bad-request", "provider must be a string.")
    ended = 0
    for name in _providers(request, provider):
        ended += await sessions.end_matching(name, subject=subject,
                                             ending=Ending("admin", _BY_ADMIN, name, subject))
    log.info("sessions_revoked", by="admin", subject=subject, provider=provider, sessions_ended=ended)
    metrics.session_ended("admin", ended)
    return _json({"revoked": ended, "user": subject})


async def revoke_service(request: web.Request) -> web.Response:
    services = request.app[ADMIN_SERVICES]
    body = await _json_body(request)
    kind, value = _service_target(body, extra=("exp",))
    now = time.time()
    expires_at: float | None = None
    if kind == "jti":
        exp = body.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now):
            raise ApiError(400, "bad-request", "exp must be the token's expiry in Unix seconds, in the future.")
        # A token lives until its exp; without it, TOKEN_BOUND (the docs tell operators so).
        expires_at = float(exp) if exp is not None else now + TOKEN_BOUND
    elif "exp" in body:
        raise ApiError(400, "bad-request", "exp goes with jti: a client or a service is revoked until lifted.")
    revocation = Revocation(kind, value, now, expires_at)
    await services.revoke(revocation, now)
    log.info("service_revoked", by="admin", kind=kind, value=value,
             expires_at=_iso(expires_at) if expires_at is not None else None)
    return _json({"revoked": _revocation(revocation)})


async def list_service_revocations(request: web.Request) -> web.Response:
    listed = await request.app[ADMIN_SERVICES].listed()
    return _json({"revocations": [_revocation(revocation) for revocation in listed]})


async def lift_service_revocation(request: web.Request) -> web.Response:
    kind, value = _service_target(await _json_body(request), extra=())
    if not await request.app[ADMIN_SERVICES].lift(kind, value):
        raise ApiError(404, "not-found", f"No revocation of {kind} {value[:200]!r} is in force.")
    log.info("service_revocation_lifted", by="admin", kind=kind, value=value)
    return _json({"lifted": 1, "kind": kind, "value": value})


def _service_target(body: dict[str, Any], *, extra: tuple[str, ...]) -> tuple[str, str]:
    """The one kind (client_id, service, jti) and value a services body names."""
    unknown = sorted(set(body) - {*KINDS, *extra})
    if unknown:
        raise ApiError(400, "bad-request", f"Unknown field {unknown[0]!r}: give client_id, service or jti.")
    named = [kind for kind in KINDS if kind in body]
    if len(named) != 1:
        raise ApiError(400, "bad-request", "Give exactly one of client_id, service or jti.")
    kind = named[0]
    value = _identifier(body[kind], kind)
    if kind == "service" and not value.startswith("spiffe://"):
        raise ApiError(400, "bad-request", "service is a SPIFFE ID: spiffe://trust-domain/path.")
    return kind, value


def _revocation(revocation: Revocation) -> dict[str, Any]:
    expires_at = revocation.expires_at
    return {"kind": revocation.kind, "value": revocation.value, "revoked_at": _iso(revocation.revoked_at),
            "expires_at": _iso(expires_at) if expires_at is not None else None}


def _sessions(request: web.Request) -> SessionManager:
    sessions = request.app.get(ADMIN_SESSIONS)
    if sessions is None:
        raise ApiError(404, "no-sessions", "This proxy signs no one in (no identity_providers): "
                                           "there are no sessions.")
    return sessions


def _providers(request: web.Request, name: str | None) -> list[str]:
    configured = [provider.name for provider in request.app[CONFIG].identity_providers]
    if name is None:
        return configured
    if name not in configured:
        raise ApiError(400, "unknown-provider", f"No identity provider is named {name[:100]!r}; "
                                                f"configured: {', '.join(configured)}.")
    return [name]


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(400, "bad-request", f"{field} is required (a non-empty string).")
    if len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise ApiError(400, "bad-request", f"{field} must be printable and at most {MAX_ID_LENGTH} characters.")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "payload-too-large", f"The body may be at most {MAX_BODY} bytes.")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, "payload-too-large", f"The body may be at most {MAX_BODY} bytes.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "bad-json", "The body must be a JSON object, e.g. {\"user\": \"alice\"}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad-json", "The body must be a JSON object, e.g. {\"user\": \"alice\"}.")
    return body


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogateescape")).digest()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_code(status: int) -> str:
    return {405: "method-not-allowed", 413: "payload-too-large"}.get(status, "bad-request" if status < 500 else
                                                                     "internal-error")


def _json(data: dict[str, Any]) -> web.Response:
    return web.json_response(data, headers={"Cache-Control": "no-store"})


def _error(error: ApiError) -> web.Response:
    return web.json_response({"error": error.code, "message": error.message}, status=error.status,
                             headers={"Cache-Control": "no-store", **error.headers})
