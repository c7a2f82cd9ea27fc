"""``/.ztproxy/me``: who the proxy thinks you are, how fresh your sign-in is, your device, your apps.

The list of applications is every route whose policy would let this user, from this
device, open its front page now (or would after a step-up); routes that refuse them are
not named, so the page reveals nothing about apps the user cannot use. HTML for people,
JSON for API clients. Never cached.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ztproxy.auth import Auth, open_session
from ztproxy.context import CompiledRoute, route_origin
from ztproxy.grants.html import when
from ztproxy.grants.model import person_key
from ztproxy.grants.pages import ACCESS_PATH
from ztproxy.grants.service import GRANTS
from ztproxy.oidc.logout import LOGOUT_PATH
from ztproxy.pages import info, wants_json
from ztproxy.policy import Outcome, RequestFacts, evaluate
from ztproxy.policy.model import Device
from ztproxy.posture.service import POSTURE, device_of
from ztproxy.risk import RiskState, level_of
from ztproxy.risk.engine import RECENT
from ztproxy.risk.words import what_happened
from ztproxy.state import CONFIG, RECORD, ROUTE_LIST, Person

ME_PATH = "/.ztproxy/me"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        count, unit = seconds, "second"
    elif seconds < 7200:
        count, unit = seconds // 60, "minute"
    else:
        count, unit = seconds // 3600, "hour"
    return f"{count} {unit}{'' if count == 1 else 's'} ago"


def _risk(state: RiskState | None, now: float) -> dict[str, Any]:
    """The session's context (prefixes only) and its recent signals."""
    if state is None:
        return {"level": "low", "signals": [], "signed_in_from": None, "network": None, "browser": None}
    return {"level": level_of(state, now),
            "signals": [{"signal": noted.signal, "action": noted.action, "at": int(noted.at)}
                        for noted in state.signals if now - noted.at < RECENT],
            "signed_in_from": state.signed_in_from, "network": state.network, "browser": str(state.browser)}


def _route_url(route: CompiledRoute, public_url: str) -> str:
    return route_origin(public_url, route.config.host) + route.config.path


def _reachable(request: web.Request, signed_in: Person | None, device: Device | None,
               granted: frozenset[str]) -> list[dict[str, str]]:
    ctx = request[RECORD].context
    now = datetime.now(UTC)
    public_url = request.app[CONFIG].public_url
    apps = []
    state = signed_in.session.risk if signed_in else None
    risk = level_of(state, now.timestamp()) if state is not None else "low"
    for route in request.app[ROUTE_LIST]:
        facts = RequestFacts(method="GET", path=route.config.path, client_ip=ctx.client_ip, now=now,
                             identity=signed_in.session.identity if signed_in else None, device=device, risk=risk,
                             granted=route.name in granted)
        decision = route.policy.constant or evaluate(route.policy, facts)
        if decision.outcome is Outcome.DENY:
            continue
        apps.append({"name": route.name, "url": _route_url(route, public_url),
                     "access": "yes" if decision.allowed else "after signing in again"})
    return apps


async def me(request: web.Request, auth: Auth | None) -> web.StreamResponse:
    signed_in = await open_session(request, auth, None) if auth is not None else None
    posture = request.app[POSTURE]
    subject = signed_in.subject if signed_in is not None else None
    device = await device_of(request, posture, subject) if posture is not None else None
    if device is not None and auth is not None:
        device = auth.effects.device(device)  # as the device stage sees it: a signal may say it is not compliant
    now = time.time()
    data: dict[str, Any] = {"signed_in": signed_in is not None}
    if signed_in is not None:
        session = signed_in.session
        data.update(subject=session.subject, email=session.email, name=session.name, groups=list(session.groups),
                    provider=session.provider, mfa=session.mfa, acr=session.acr, amr=list(session.amr),
                    auth_time=None if session.auth_time is None else int(session.auth_time),
                    session_started=int(session.created),
                    session=signed_in.ticket.public_id)
        data["risk"] = _risk(session.risk, now)
    if device is not None:
        data["device"] = {"id": device.id, "managed": device.managed, "disk_encrypted": device.disk_encrypted,
                          "platform": device.platform, "os_version": device.os_version, "score": device.score,
                          "last_seen": device.last_seen.isoformat() if device.last_seen else None}
    grants = request.app[GRANTS]
    held = [] if grants is None or signed_in is None else \
        grants.view.active_for(person_key(signed_in.session.provider, signed_in.subject), now)
    data["grants"] = [{"route": route, "ends_at": int(ends_at)} for route, ends_at in held]
    data["applications"] = _reachable(request, signed_in, device, frozenset(route for route, _ in held))
    headers = {"Cache-Control": "no-store"}
    if wants_json(request.headers.get("Accept", ""), request.headers.get("X-Requested-With", "")):
        return web.json_response(data, headers=headers)
    body = []
    if signed_in is not None:
        session = signed_in.session
        body.append(info.table([
            ("User", session.subject), ("Email", session.email or "-"), ("Name", session.name or "-"),
            ("Groups", ", ".join(session.groups) or "-"),
            ("Signed in", "unknown" if session.auth_time is None else _age(now - session.auth_time)),
            ("Second factor", "yes" if session.mfa else "no"),
            ("Session started", _age(now - session.created)),
        ]))
        risk = data["risk"]
        body.append(info.table([
            ("Risk", risk["level"]),
            ("Signed in from network", risk["signed_in_from"] or "-"),
            ("Network now", risk["network"] or "-"),
            ("Browser", risk["browser"] or "-"),
            ("Recent signals", "; ".join(f"{what_happened(signal['signal'])} ({signal['action']}, "
                                         f"{_age(now - signal['at'])})" for signal in risk["signals"]) or "none"),
        ]))
    else:
        body.append(info.paragraph("You are not signed in. Open an application below to sign in."))
    if device is not None:
        body.append(info.table([
            ("Device", device.id), ("Managed", "yes" if device.managed else "no"),
            ("Disk encrypted", "yes" if device.disk_encrypted else "no"),
            ("System", " ".join(filter(None, [device.platform, device.os_version])) or "-"),
            ("Posture reported", _age(now - device.last_seen.timestamp()) if device.last_seen else "-"),
        ]))
    else:
        body.append(info.paragraph("No device information: this browser presented no device certificate or "
                                   "posture report."))
    apps = data["applications"]
    body.append(info.paragraph("Applications you can use:" if apps else "No application is open to you right now."))
    if apps:
        body.append(info.link_table(((app["name"], app["url"]), app["access"]) for app in apps))
    if held:
        body.append(info.paragraph("Access granted to you for a while (just-in-time access):"))
        body.append(info.table((route, f"until {when(ends_at)}") for route, ends_at in held))
    if grants is not None and signed_in is not None:
        body.append(info.link_button(ACCESS_PATH, "Access requests: yours, and those you may decide"))
    if signed_in is not None:
        body.append(info.link_button(LOGOUT_PATH, "Sign out"))
    return info.render("Your access", "".join(body), kicker="ztproxy")
