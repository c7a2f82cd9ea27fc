"""A Shared Signals transmitter for the tests, run as a process of its own (as an IdP's or EDR's is).

    python -m tests.support.ssf_transmitter --port PORT --token MANAGEMENT_TOKEN --control-token TOKEN

It serves its SSF configuration (``/.well-known/ssf-configuration``), its JWKS and the stream
management API (``/ssf/stream``: POST creates the one stream, 409 when it exists; GET reads
it; PATCH replaces it), all behind the management bearer token. A test drives it through
``POST /-/push`` (with the control token): ``{"event": TYPE, "sub_id": SUBJECT, "event": {...}}``
signs a SET with its key, pushes it to the stream's endpoint with the stream's
authorization header, and answers with the receiver's status and body. ``"raw": true`` lets
a test send the token it gives as it is (``"token"``), to try forged ones.

``start_transmitter`` (a fixture) starts it on a free loopback port and stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

REPO = Path(__file__).resolve().parents[2]


def build_app(issuer: str, management_token: str, control_token: str) -> web.Application:
    key = ECKey.generate_key("P-256", parameters={"kid": "ssf-1", "use": "sig", "alg": "ES256"})
    state: dict[str, Any] = {"stream": None}

    def authorised(request: web.Request, token: str) -> bool:
        return request.headers.get("Authorization") == f"Bearer {token}"

    async def configuration(request: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "jwks_uri": f"{issuer}/jwks",
                                  "configuration_endpoint": f"{issuer}/ssf/stream",
                                  "delivery_methods_supported": ["urn:ietf:rfc:8935"]})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.as_dict(private=False)]})

    async def stream(request: web.Request) -> web.Response:
        if not authorised(request, management_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.method == "GET":
            return web.json_response(state["stream"]) if state["stream"] else web.json_response({}, status=404)
        body = await request.json()
        if request.method == "POST":
            if state["stream"] is not None:
                return web.json_response({"error": "conflict"}, status=409)
            state["stream"] = {**body, "stream_id": secrets.token_hex(8), "iss": issuer}
            return web.json_response(state["stream"], status=201)
        state["stream"] = {**(state["stream"] or {}), **body}
        return web.json_response(state["stream"])

    async def push(request: web.Request) -> web.Response:
        if not authorised(request, control_token):
            return web.json_response({"error": "unauthorized"}, status=401)
        order = await request.json()
        current = state["stream"]
        if current is None:
            return web.json_response({"error": "no stream"}, status=409)
        delivery = current["delivery"]
        token = order.get("token") if order.get("raw") else jwt.encode(
            {"alg": "ES256", "kid": "ssf-1", "typ": "secevent+jwt"},
            {"iss": issuer, "aud": order.get("aud", current["aud"]), "iat": int(order.get("iat", time.time())),
             "jti": order.get("jti", secrets.token_hex(12)), "sub_id": order["sub_id"],
             "events": {order["event"]: order.get("payload", {})}}, key)
        headers = {"Content-Type": order.get("content_type", "application/secevent+jwt"),
                   "Authorization": order.get("authorization", delivery["authorization_header"])}
        async with aiohttp.ClientSession() as client:
            async with client.post(delivery["endpoint_url"], data=token, headers=headers) as response:
                text = await response.text()
                return web.json_response({"status": response.status, "body": text})

    app = web.Application()
    app.router.add_get("/.well-known/ssf-configuration", configuration)
    app.router.add_get("/jwks", jwks)
    app.router.add_route("*", "/ssf/stream", stream)
    app.router.add_post("/-/push", push)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--control-token", required=True)
    args = parser.parse_args()
    issuer = f"http://127.0.0.1:{args.port}"
    web.run_app(build_app(issuer, args.token, args.control_token), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


@dataclass
class RunningTransmitter:
    issuer: str
    management_token: str
    control_token: str
    process: subprocess.Popen[bytes]

    async def push(self, **order: Any) -> tuple[int, str]:
        """Have the transmitter push one SET; the receiver's status and body."""
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{self.issuer}/-/push", json=order,
                                   headers={"Authorization": f"Bearer {self.control_token}"}) as response:
                assert response.status == 200, await response.text()
                answer = await response.json()
        return int(answer["status"]), str(answer["body"])

    async def stream(self) -> dict[str, Any] | None:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{self.issuer}/ssf/stream",
                                  headers={"Authorization": f"Bearer {self.management_token}"}) as response:
                return await response.json() if response.status == 200 else None


TransmitterFactory = Callable[[], Awaitable[RunningTransmitter]]


@pytest.fixture
async def start_transmitter() -> AsyncIterator[TransmitterFactory]:
    from tests.conftest import free_port

    started: list[RunningTransmitter] = []

    async def start() -> RunningTransmitter:
        port = free_port()
        management, control = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        # --name=value: a token may begin with "-", which argparse would read as an option.
        process = subprocess.Popen([sys.executable, "-m", "tests.support.ssf_transmitter", f"--port={port}",
                                    f"--token={management}", f"--control-token={control}"], cwd=REPO)
        transmitter = RunningTransmitter(f"http://127.0.0.1:{port}", management, control, process)
        started.append(transmitter)
        async with asyncio.timeout(15):
            while True:
                try:
                    async with aiohttp.ClientSession() as client:
                        async with client.get(f"{transmitter.issuer}/jwks") as response:
                            if response.status == 200:
                                return transmitter
                except aiohttp.ClientError:
                    pass
                assert process.poll() is None, "the transmitter exited"
                await asyncio.sleep(0.05)

    yield start
    for transmitter in started:
        if transmitter.process.poll() is None:
            transmitter.process.terminate()
            transmitter.process.wait(timeout=10)


if __name__ == "__main__":
    main()
