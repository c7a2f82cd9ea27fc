"""LemonLDAP::NG: the client secret in the form, since Basic credentials are not form-decoded.

RFC 6749 2.3.1 has the client id and secret form-encoded before the Basic encoding;
LemonLDAP::NG does not decode them, so a secret with a reserved character would fail, and
``client_secret_post`` is filled in. No aiohttp, no I/O.
"""

from __future__ import annotations

from typing import Any

from ztproxy.config.presets import Entry, Preset


def _defaults(_: Entry) -> dict[str, Any]:
    return {"scopes": ["openid", "email", "profile"], "token_endpoint_auth_method": "client_secret_post"}


LEMONLDAP = Preset(name="lemonldap", defaults=_defaults)
