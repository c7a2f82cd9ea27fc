"""For app developers: trust the identity ztproxy injects, without trusting the network.

ztproxy signs every forwarded request's identity as ``X-Ztproxy-Jwt-Assertion`` (ES256,
short-lived, published at ``/.well-known/ztproxy/jwks.json``). Verify it with
:class:`Verifier`, or drop a middleware into your app:

- aiohttp: :func:`ztproxy.verify.aiohttp.middleware`
- ASGI (Starlette, FastAPI, Django ASGI...): :class:`ztproxy.verify.asgi.AssertionMiddleware`
- WSGI (Flask, Django...): :class:`ztproxy.verify.wsgi.AssertionMiddleware`

and unit-test your app without the proxy with :class:`ztproxy.verify.testing.TestIssuer`.
"""

from __future__ import annotations

from ztproxy.verify.verifier import ASSERTION_HEADER, AssertionInvalid, Identity, Verifier

__all__ = ["ASSERTION_HEADER", "AssertionInvalid", "Identity", "Verifier"]
