"""A small OpenID Shared Signals transmitter: the demo's (an IdP or EDR stand-in) and the tests'.

    python -m ztproxy.demo.transmitter --port PORT --token MANAGEMENT_TOKEN --control-token TOKEN

It serves its SSF configuration (``/.well-known/ssf-configuration``), its JWKS and the stream
management API (``/ssf/stream``: POST creates the one stream, 409 when it exists; GET reads
it; PATCH replaces it; ``/ssf/verify``, ``/ssf/status``), all behind the management bearer
token, as a real transmitter does; ztproxy sets its stream up there and receives through its
real receiver path. Whoever holds the control token drives it: ``POST /-/push``
(``{"event": TYPE, "sub_id": SUBJECT, "payload": {...}}``) signs a SET with its key (ES256,
made at each start) and, for push delivery, pushes it to the stream's endpoint with the
stream's authorization header, answering with the receiver's status and body; for poll
delivery (RFC 8936) it queues it for ``POST /ssf/poll``, which hands out what is not yet
acknowledged and keeps the acknowledgements and errors (``GET /-/polled``). ``"raw": true``
sends the token given (``"token"``) as it is, to try forged ones; ``POST /-/status``
(``{"status": "disabled"}``) sets what the status endpoint says about the stream.

Loopback only; no state outlives the process.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
POLL = "urn:ietf:rfc:8936"


def build_app(issuer: str, management_token: str, control_token: str) -> web.Application:
    key = ECKey.generate_key("P-256", parameters={"kid": "ssf-1", "use": "sig", "alg": "ES256"})
    state: dict[str, Any] = {"stream": None, "queue": {}, "acked": [], "errors": {}, "status": "enabled",
                             "tasks": set()}

    def authorised(request: web.Request, token: str) -> bool:
        return request.headers.get("Authorization") == f"Bearer {token}"

    def unauthorised() -> web.Response:
        return web.json_response({"error": "unauthorized"}, status=401)

    async def configuration(request: web.Request) -> web.Response:
        return web.json_response({"issuer": issuer, "jwks_uri": f"{issuer}/jwks",
                                  "configuration_endpoint": f"{issuer}/ssf/stream",
                                  "verification_endpoint": f"{issuer}/ssf/verify",
                                  "status_endpoint": f"{issuer}/ssf/status",
                                  "delivery_methods_supported": ["urn:ietf:rfc:8935", POLL]})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [key.as_dict(private=False)]})

    async def stream(request: web.Request) -> web.Response:
        if not authorised(request, management_token):
            return unauthorised()
        if request.method == "GET":
            return web.json_response(state["stream"]) if state["stream"] else web.json_response({}, status=404)
        body = await request.json()
        if body.get("delivery", {}).get("method") == POLL:
            body["delivery"]["endpoint_url"] = f"{issuer}/ssf/poll"  # RFC 8936: the transmitter's own
        if request.method == "POST":
            if state["stream"] is not None:
                return web.json_response({"error": "conflict"}, status=409)
            state["stream"] = {**body, "stream_id": secrets.token_hex(8), "iss": issuer}
            return web.json_response(state["stream"], status=201)
        state["stream"] = {**(state["stream"] or {}), **body}
        return web.json_response(state["stream"])

    async def push(request: web.Request) -> web.Response:
        if not authorised(request, control_token):
            return unauthorised()
        return await deliver(await request.json())

    async def verify(request: web.Request) -> web.Response:
        # SSF 8.1.4: a verification event carrying the receiver's state, through the stream.
        if not authorised(request, management_token):
            return unauthorised()
        body = await request.json()
        # Delivered after this answer, as a transmitter's queue would: the receiver is waiting on us.
        order = {"event": VERIFICATION, "sub_id": {"format": "opaque", "id": body.get("stream_id", "")},
                 "payload": {"state": body.get("state", "")}}
        task = asyncio.get_running_loop().create_task(deliver(order))
        state["tasks"].add(task)
        task.add_done_callback(state["tasks"].discard)
        return web.Response(status=204)

    async def status(request: web.Request) -> web.Response:
        if not authorised(request, management_token):
            return unauthorised()
        return web.json_response({"stream_id": request.query.get("stream_id"), "status": state["status"]})

    async def set_status(request: web.Request) -> web.Response:
        if not authorised(request, control_token):
            return unauthorised()
        state["status"] = (await request.json())["status"]
        return web.Response(status=204)

    async def deliver(order: dict[str, Any]) -> web.Response:
        current = state["stream"]
        if current is None:
            return web.json_response({"error": "no stream"}, status=409)
        delivery = current["delivery"]
        jti = order.get("jti") or secrets.token_hex(12)
        token = order.get("token") if order.get("raw") else jwt.encode(
            {"alg": "ES256", "kid": "ssf-1", "typ": "secevent+jwt"},
            {"iss": issuer, "aud": order.get("aud", current["aud"]), "iat": int(order.get("iat", time.time())),
             "jti": jti, "sub_id": order["sub_id"], "events": {order["event"]: order.get("payload", {})}}, key)
        if delivery["method"] == POLL:
            state["queue"][jti] = token
            return web.json_response({"status": 202, "body": "queued", "jti": jti})
        headers = {"Content-Type": order.get("content_type", "application/secevent+jwt"),
                   "Authorization": order.get("authorization", delivery["authorization_header"])}
        async with aiohttp.ClientSession() as client:
            async with client.post(delivery["endpoint_url"], data=token, headers=headers) as response:
                text = await response.text()
                return web.json_response({"status": response.status, "body": text})

    async def poll(request: web.Request) -> web.Response:
        if not authorised(request, management_token):
            return unauthorised()
        body = await request.json()
        for jti in body.get("ack", []):
            state["queue"].pop(jti, None)
            state["acked"].append(jti)
        for jti, error in body.get("setErrs", {}).items():
            state["queue"].pop(jti, None)
            state["errors"][jti] = error
        return web.json_response({"sets": dict(state["queue"]), "moreAvailable": False})

    async def polled(request: web.Request) -> web.Response:
        if not authorised(request, control_token):
            return unauthorised()
        return web.json_response({"acked": state["acked"], "errors": state["errors"], "queued": list(state["queue"])})

    app = web.Application()
    app.router.add_post("/ssf/poll", poll)
    app.router.add_post("/ssf/verify", verify)
    app.router.add_get("/ssf/status", status)
    app.router.add_get("/-/polled", polled)
    app.router.add_get("/.well-known/ssf-configuration", configuration)
    app.router.add_get("/jwks", jwks)
    app.router.add_route("*", "/ssf/stream", stream)
    app.router.add_post("/-/push", push)
    app.router.add_post("/-/status", set_status)
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


if __name__ == "__main__":
    main()
