"""The demo's sample app: shows the identity it receives from ztproxy, and checks it.

It plays the app developer's part: it reads the plain ``X-Ztproxy-User/-Email/-Groups``
headers and verifies ``X-Ztproxy-Jwt-Assertion`` with :class:`ztproxy.verify.Verifier`
(the proxy's JWKS, its public URL as issuer, the route's origin as audience), then
renders the verified claims, or the reason the assertion was refused. ``/`` is the
demo's portal: the users, the routes to try, bob's TOTP secret.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ztproxy.assertion import EMAIL_HEADER, GROUPS_HEADER, USER_HEADER
from ztproxy.verify import ASSERTION_HEADER, AssertionInvalid, Identity, Verifier

# The claims a newcomer should look at first, in this order; the others follow, sorted.
_KEY_CLAIMS = ("sub", "email", "name", "groups", "acr", "amr", "auth_time", "iat", "exp", "iss", "aud", "route")
_TIME_CLAIMS = frozenset({"auth_time", "iat", "nbf", "exp"})

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .8rem .3rem 0;text-align:left;vertical-align:top}
code{background:#f4f4f4;padding:0 .2rem;word-break:break-all}
nav a{margin-right:1rem}
.ok{color:#17631b}.bad{color:#a11d1d}.muted{color:#666}
"""


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    groups: tuple[str, ...]
    second_factor: str | None = None  # how this user proves a second factor, if they can


@dataclass(frozen=True)
class DemoGuide:
    """What the portal page tells the visitor."""

    users: Sequence[DemoUser]
    totp_secret: str
    otpauth_uri: str


@dataclass(frozen=True)
class AppPage:
    title: str
    policy: str  # the route's rule, in words


# Path prefix -> the page the app shows there; the proxy's routes in ztproxy.demo.setup match these.
APP_PAGES: Mapping[str, AppPage] = {
    "/app": AppPage("Employees' app", "open to the group employees (alice and bob)."),
    "/payroll": AppPage("Payroll", "open to the group payroll (bob only), signed in with a second factor "
                                   "within the last 10 minutes (else ztproxy asks for it: step-up)."),
    "/ledger": AppPage("Ledger", "open to employees while an approver (carol) has granted them access "
                                 "for a while: just-in-time access."),
}


@dataclass(frozen=True)
class Verification:
    """What became of the request's assertion: verified, refused, or absent."""

    identity: Identity | None = None
    error: str | None = None


async def verify_request(verifier: Verifier, headers: Mapping[str, str]) -> Verification:
    token = headers.get(ASSERTION_HEADER)
    if not token:
        return Verification()
    try:
        return Verification(identity=await verifier.averify(token))
    except AssertionInvalid as exc:
        return Verification(error=str(exc))


def _when(value: Any, now: float) -> str:
    """A unix time as UTC plus how far it is from ``now``: "12:00:05 UTC (3 min ago)"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return repr(value)
    delta = round(value - now)
    span = abs(delta)
    amount = f"{span} s" if span < 120 else f"{span // 60} min" if span < 7200 else f"{span // 3600} h"
    relative = "now" if delta == 0 else f"in {amount}" if delta > 0 else f"{amount} ago"
    try:
        moment = f"{datetime.fromtimestamp(value, UTC):%Y-%m-%d %H:%M:%S} UTC"
    except (OverflowError, OSError, ValueError):  # outside what datetime can show
        moment = repr(value)
    return f"{moment} ({relative})"


def _claim_text(name: str, value: Any, now: float) -> str:
    if name in _TIME_CLAIMS:
        return _when(value, now)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "(none)"
    return str(value)


def claims_table(claims: Mapping[str, Any], now: float) -> str:
    names = [name for name in _KEY_CLAIMS if name in claims]
    names += sorted(name for name in claims if name not in _KEY_CLAIMS)
    rows = "".join(f"<tr><th><code>{html.escape(name)}</code></th>"
                   f"<td>{html.escape(_claim_text(name, claims[name], now))}</td></tr>" for name in names)
    return f"<table>{rows}</table>"


def how_it_verifies(verifier: Verifier, jwks_url: str) -> str:
    code = (f"from ztproxy.verify import Verifier\n\nverifier = Verifier(issuer={verifier.issuer!r},\n"
            f"                    audience={verifier.audience!r},\n                    jwks_url={jwks_url!r})\n"
            "identity = verifier.verify(request.headers.get(\"X-Ztproxy-Jwt-Assertion\"))")
    return (f"<details><summary>How this app checks the assertion</summary><pre><code>{html.escape(code)}"
            "</code></pre><p>The issuer is the proxy's public URL, the audience the route's origin, the keys "
            "the proxy's JWKS. Middlewares for aiohttp, ASGI and WSGI apps do the same: see "
            "<code>ztproxy.verify</code>.</p></details>")


def identity_section(headers: Mapping[str, str], verification: Verification, now: float) -> str:
    if verification.identity is not None:
        assertion = ("<p class='ok'><b>Verified.</b> The signature matches a key of the proxy's JWKS; "
                     "issuer, audience and lifetime are right. The app can trust these claims:</p>"
                     + claims_table(verification.identity.claims, now))
    elif verification.error is not None:
        assertion = (f"<p class='bad'><b>Refused:</b> {html.escape(verification.error)}</p>"
                     "<p>The app must not trust this request's identity.</p>")
    else:
        assertion = ("<p class='muted'>No assertion: this request carried no "
                     f"<code>{ASSERTION_HEADER}</code> header.</p>")
    rows = "".join(f"<tr><th><code>{name}</code></th><td>{html.escape(headers[name])}</td></tr>"
                   for name in (USER_HEADER, EMAIL_HEADER, GROUPS_HEADER) if name in headers)
    plain = (f"<table>{rows}</table><p class='muted'>Plain headers are only as trustworthy as the network: "
             "an app may rely on them only when nothing but the proxy can reach it.</p>"
             if rows else "<p class='muted'>None received.</p>")
    return (f"<h2>The signed identity assertion</h2>{assertion}"
            f"<h2>Plain identity headers</h2>{plain}")


def all_headers_section(headers: Mapping[str, str]) -> str:
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td><code>{html.escape(value)}</code></td></tr>"
                   for name, value in headers.items())
    return ("<details><summary>Every header the app received (what the proxy added, and that any "
            f"<code>X-Ztproxy-*</code> a client sent is gone)</summary><table>{rows}</table></details>")


def portal_section(guide: DemoGuide) -> str:
    users = "".join(
        f"<tr><td><code>{html.escape(user.username)}</code></td><td><code>{html.escape(user.password)}</code></td>"
        f"<td>{html.escape(', '.join(user.groups))}</td><td>{html.escape(user.second_factor or 'none')}</td></tr>"
        for user in guide.users)
    pages = "".join(f"<li><a href='{path}'>{path}</a>: {html.escape(page.title)}, {html.escape(page.policy)}</li>"
                    for path, page in APP_PAGES.items())
    return (
        "<p>Every request to this address passes through ztproxy, which signs users in at the demo's "
        "OpenID Provider and checks each route's policy. This page is public.</p>"
        f"<h2>Try</h2><ul>{pages}<li><a href='/.ztproxy/logout'>/.ztproxy/logout</a>: sign out, "
        "then try as the other user.</li></ul>"
        "<p>Sign in as alice at /app, then open /payroll: refused, she is not in payroll. Sign out, "
        "sign in as bob at /app with his password, then open /payroll: ztproxy sends him back to "
        "the IdP to sign in with his one-time code too (step-up).</p>"
        "<h2>Users</h2><table><tr><th>user</th><th>password</th><th>groups</th><th>second factor</th></tr>"
        f"{users}</table>"
        f"<p>Bob's TOTP secret: <code>{html.escape(guide.totp_secret)}</code>. Add it to an authenticator "
        f"app (or run <code>oathtool --totp -b {html.escape(guide.totp_secret)}</code>); as a URI: "
        f"<code>{html.escape(guide.otpauth_uri)}</code></p>"
    )


def render_page(title: str, body: str) -> str:
    links = "<a href='/'>portal</a>" + "".join(f"<a href='{path}'>{path}</a>"
                                                for path in (*APP_PAGES, "/.ztproxy/logout"))
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)} - ztproxy demo</title><style>{_STYLE}</style></head>"
            f"<body><nav>{links}</nav><h1>{html.escape(title)}</h1>{body}</body></html>")


def _page_for(path: str) -> AppPage | None:
    return next((page for prefix, page in APP_PAGES.items() if path == prefix or path.startswith(prefix + "/")),
                None)


def build_sample_app(verifier: Verifier, guide: DemoGuide, *, jwks_url: str) -> web.Application:
    """The sample app; ``verifier`` checks the assertions it receives (keys from ``jwks_url``)."""
    explanation = how_it_verifies(verifier, jwks_url)

    async def api(request: web.Request) -> web.Response:
        # An API answers services in JSON: who called, as the verified assertion says.
        verification = await verify_request(verifier, request.headers)
        identity = verification.identity
        if identity is None:
            return web.json_response({"error": verification.error or "no assertion"}, status=401)
        return web.json_response({
            "path": request.path, "called_by": identity.subject, "caller": "service" if identity.is_service
            else "person", "client_id": identity.client_id, "scopes": list(identity.scopes)})

    async def show(request: web.Request) -> web.Response:
        page = _page_for(request.path)
        if page is None and request.path != "/":
            return web.Response(status=404, text=render_page("Not found", "<p>This sample app has no such "
                                                             "page.</p>"), content_type="text/html")
        verification = await verify_request(verifier, request.headers)
        now = time.time()
        who = (identity_section(request.headers, verification, now) + explanation
               + all_headers_section(request.headers))
        if page is None:
            body = portal_section(guide) + who
            title = "ztproxy demo"
        else:
            body = (f"<p><b>Policy:</b> {html.escape(page.policy)}</p>"
                    f"<p>ztproxy let you in, and told this app who you are.</p>{who}")
            title = page.title
        return web.Response(text=render_page(title, body), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_route("*", "/api{path:(/.*)?}", api)
    app.router.add_route("*", "/{path:.*}", show)
    return app
