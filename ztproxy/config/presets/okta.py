"""Okta: the org authorization server or a custom one, the ``groups`` scope, step-up by ``acr_values``.

The org authorization server's issuer is the Okta domain itself (``https://{org}.okta.com``)
and it has a ``groups`` scope; a custom authorization server's issuer is
``https://{org}.okta.com/oauth2/{server id}`` (``default`` included), which has no such scope:
its groups claim is defined on the server. Okta Identity Engine takes
``acr_values=urn:okta:loa:2fa:any`` for a second factor and reports the methods in ``amr``.
No aiohttp, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ztproxy.config.presets import Entry, Preset, Problem, issuer_url

MFA_ACR = "urn:okta:loa:2fa:any"
_CUSTOM_SERVER = re.compile(r"/oauth2/(?P<server>[^/]+)")


def _org_server(entry: Entry) -> bool:
    url = issuer_url(entry)
    return url is not None and url.path in ("", "/")


def _defaults(entry: Entry) -> dict[str, Any]:
    scopes = ["openid", "email", "profile", "offline_access"]
    # Okta's /logout takes no sign-out without id_token_hint.
    return {"scopes": [*scopes, "groups"] if _org_server(entry) else scopes, "groups_claim": "groups",
            "mfa": {"acr_values": [MFA_ACR]}, "logout_id_token_hint": True}


def _check(effective: Entry, _: Entry) -> list[Problem]:
    url = issuer_url(effective)
    if url is None or url.path in ("", "/"):
        return []
    match = _CUSTOM_SERVER.fullmatch(url.path)
    if match is None or match.group("server") == "v1":
        return [("issuer", f"{url} is not an Okta issuer: expected https://<org>.okta.com (the org authorization "
                           "server) or https://<org>.okta.com/oauth2/<server id> (a custom one, e.g. default), "
                           "without /v1 or an endpoint's path")]
    return []


OKTA = Preset(name="okta", defaults=_defaults, check=_check)
