"""The admin API in process (memory store): the token guard, every endpoint, and its errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.unit.test_session_manager import make_session
from ztproxy.admin import build_admin_app
from ztproxy.config import load_text
from ztproxy.config.schema import Config
from ztproxy.errors import ConfigError
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.memory import MemoryStore
from ztproxy.sessions.sealing import Ticket
from ztproxy.state import Readiness

TOKEN = "admin-token-0123456789abcdef-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


def config_yaml(server: str = f"admin_token: {TOKEN}", providers: bool = True) -> str:
    idps = """
identity_providers:
  - {name: corp, issuer: 'https://idp.corp.example', client_id: ztproxy, client_secret: s}
  - {name: partner, issuer: 'https://idp.partner.example', client_id: ztproxy, client_secret: s}
""" if providers else ""
    return f"""
server:
  listen: 127.0.0.1:18080
  {server}
{idps}
routes:
  - {{name: app, upstream: 'http://127.0.0.1:9', allow: [{{public: true}}]}}
"""


class Admin:
    def __init__(self, client: Client, config: Config) -> None:
        self.client = client
        # The same configuration object: the process's memory store, which the admin API sees too.
        self.sessions = SessionManager(MemoryStore.open(config.sessions), config.sessions)

    async def sign_in(self, subject: str = "alice", provider: str = "corp") -> Ticket:
        return await self.sessions.start(make_session(subject=subject, provider=provider, created=time.time()),
                                         time.time())

    async def call(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                   **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        async with self.client.request(method, path, headers=AUTH if headers is None else headers,
                                       **kwargs) as response:
            assert response.content_type == "application/json", await response.text()
            assert response.headers["Cache-Control"] == "no-store"
            body = await response.json()
            return response.status, body, response.headers


@pytest.fixture
async def admin(aiohttp_client: ClientFactory) -> AsyncIterator[Admin]:
    config = load_text(config_yaml())
    client = await aiohttp_client(build_admin_app(Readiness(), config))
    world = Admin(client, config)
    yield world
    await world.sessions.store.close()


def assert_error(status: int, body: dict[str, Any], expected_status: int, code: str) -> None:
    assert (status, body["error"]) == (expected_status, code), body
    assert set(body) == {"error", "message"} and body["message"]
    assert "Traceback" not in body["message"]


# --- the token guard ---


async def test_without_a_configured_token_the_api_is_refused(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_admin_app(Readiness(), load_text(config_yaml(server=""))))
    for method, path in [("GET", "/admin/sessions?user=alice"), ("DELETE", "/admin/sessions/0123456789abcdef"),
                         ("POST", "/admin/sessions/revoke"), ("GET", "/admin/anything")]:
        for headers in ({}, AUTH, {"Authorization": "Bearer "}):
            async with client.request(method, path, headers=headers) as response:
                body = await response.json()
                assert_error(response.status, body, 403, "admin-api-disabled")
                assert "admin_token_file" in body["message"]
    async with client.get("/healthz") as response:  # the rest of the listener is unchanged
        assert response.status == 200


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic " + TOKEN, TOKEN])
async def test_a_missing_token_is_401_with_a_challenge(admin: Admin, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, response_headers = await admin.call("GET", "/admin/sessions?user=alice", headers=headers)
    assert_error(status, body, 401, "unauthorized")
    assert response_headers["WWW-Authenticate"] == 'Bearer realm="ztproxy-admin"'


@pytest.mark.parametrize("token", [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * len(TOKEN), f"{TOKEN} {TOKEN}"])
async def test_a_wrong_token_is_401_invalid_token(admin: Admin, token: str) -> None:
    ticket = await admin.sign_in()
    for method, path in [("GET", "/admin/sessions?user=alice"), ("DELETE", f"/admin/sessions/{ticket.public_id}"),
                         ("GET", "/admin/no-such-thing")]:
        status, body, headers = await admin.call(method, path, headers={"Authorization": f"Bearer {token}"})
        assert_error(status, body, 401, "invalid-token")
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert await admin.sessions.load(ticket, time.time(), fresh=True) is not None  # nothing was revoked


async def test_the_scheme_is_case_insensitive(admin: Admin) -> None:
    status, _, _ = await admin.call("GET", "/admin/sessions?user=alice", headers={"Authorization": f"bearer {TOKEN}"})
    assert status == 200


# --- the endpoints ---


async def test_list_revoke_one_then_the_rest(admin: Admin) -> None:
    first, second = await admin.sign_in(), await admin.sign_in()
    partner = await admin.sign_in(provider="partner")
    bob = await admin.sign_in("bob")
    status, body, _ = await admin.call("GET", "/admin/sessions?user=alice")
    assert status == 200 and body["user"] == "alice"
    assert sorted((s["handle"], s["provider"]) for s in body["sessions"]) == sorted(
        [(first.public_id, "corp"), (second.public_id, "corp"), (partner.public_id, "partner")])
    assert all(0 < s["expires_in"] <= 3600 and s["expires_at"].endswith("Z") for s in body["sessions"])
    _, body, _ = await admin.call("GET", "/admin/sessions?user=alice&provider=partner")
    assert [s["handle"] for s in body["sessions"]] == [partner.public_id]

    status, body, _ = await admin.call("DELETE", f"/admin/sessions/{first.public_id}")
    assert (status, body) == (200, {"revoked": 1, "handle": first.public_id})
    assert await admin.sessions.load(first, time.time(), fresh=True) is None
    status, body, _ = await admin.call("DELETE", f"/admin/sessions/{first.public_id}")
    assert_error(status, body, 404, "not-found")

    status, body, _ = await admin.call("POST", "/admin/sessions/revoke", json={"user": "alice", "provider": "corp"})
    assert (status, body) == (200, {"revoked": 1, "user": "alice"})
    assert await admin.sessions.load(partner, time.time(), fresh=True) is not None
    _, body, _ = await admin.call("POST", "/admin/sessions/revoke", json={"user": "alice"})
    assert body["revoked"] == 1
    _, body, _ = await admin.call("GET", "/admin/sessions?user=alice")
    assert body["sessions"] == []
    assert await admin.sessions.load(bob, time.time(), fresh=True) is not None


async def test_revoke_a_device(admin: Admin) -> None:
    ticket = await admin.sign_in()
    admin.sessions.note_device(ticket.store_key, make_session(created=time.time()), "laptop-7", time.time())
    await asyncio.gather(*admin.sessions._tasks)  # the record, written in the background
    status, body, _ = await admin.call("POST", "/admin/sessions/revoke", json={"device": "laptop-7"})
    assert (status, body) == (200, {"revoked": 1, "device": "laptop-7"})
    assert await admin.sessions.load(ticket, time.time(), fresh=True) is None
    _, body, _ = await admin.call("POST", "/admin/sessions/revoke", json={"device": "laptop-7"})
    assert body["revoked"] == 0


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("GET", "/admin/sessions", {}, 400, "bad-request"),
    ("GET", "/admin/sessions?user=", {}, 400, "bad-request"),
    ("GET", "/admin/sessions?user=a%00b", {}, 400, "bad-request"),
    ("GET", "/admin/sessions?user=" + "x" * 1025, {}, 400, "bad-request"),
    ("GET", "/admin/sessions?user=alice&provider=nope", {}, 400, "unknown-provider"),
    ("DELETE", "/admin/sessions/not-a-handle", {}, 400, "bad-handle"),
    ("DELETE", "/admin/sessions/0123456789ABCDEF", {}, 400, "bad-handle"),
    ("DELETE", "/admin/sessions/0123456789abcdef", {}, 404, "not-found"),
    ("POST", "/admin/sessions/revoke", {"data": b"not json"}, 400, "bad-json"),
    ("POST", "/admin/sessions/revoke", {"json": ["alice"]}, 400, "bad-json"),
    ("POST", "/admin/sessions/revoke", {"json": {}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"user": "alice", "device": "d"}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"user": "alice", "admin": True}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"user": 42}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"user": "alice", "provider": 1}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"device": "d", "provider": "corp"}}, 400, "bad-request"),
    ("POST", "/admin/sessions/revoke", {"json": {"user": "alice", "provider": "nope"}}, 400, "unknown-provider"),
    ("POST", "/admin/sessions/revoke", {"data": b"{" * 20000}, 413, "payload-too-large"),
    ("PUT", "/admin/sessions", {}, 405, "method-not-allowed"),
    ("GET", "/admin/sessions/revoke", {}, 405, "method-not-allowed"),
    ("GET", "/admin/", {}, 404, "not-found"),
    ("GET", "/admin/../admin/x", {}, 404, "not-found"),
])
async def test_bad_requests_get_a_clear_json_error(admin: Admin, method: str, path: str, kwargs: dict[str, Any],
                                                    status: int, code: str) -> None:
    ticket = await admin.sign_in()
    got, body, _ = await admin.call(method, path, **kwargs)
    assert_error(got, body, status, code)
    assert await admin.sessions.load(ticket, time.time(), fresh=True) is not None


async def test_without_identity_providers_there_are_no_sessions(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(build_admin_app(Readiness(), load_text(config_yaml(providers=False))))
    async with client.get("/admin/sessions?user=alice", headers=AUTH) as response:
        assert_error(response.status, await response.json(), 404, "no-sessions")


@pytest.mark.parametrize(("token", "problem"), [("short-token", "too short"), ("x" * 40 + " y", "may hold only"),
                                                ("x" * 40 + "\u00e9", "may hold only")])
def test_a_weak_or_unusable_token_is_a_config_error(token: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(config_yaml(server=f"admin_token: '{token}'"))
    rendered = raised.value.render()
    assert "server.admin_token" in rendered and problem in rendered
    assert token not in rendered  # a secret, even a bad one, is never echoed


def test_the_token_is_read_from_a_file(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert load_text(config_yaml(server=f"admin_token_file: {path}")).server.admin_token == TOKEN
