"""Keycloak: a realm's issuer, groups from a "Group Membership" mapper.

The issuer is ``{base}/realms/{realm}`` (``{base}/auth/realms/{realm}`` before Keycloak 17).
Groups reach the token through a mapper of type Group Membership named ``groups``; step-up
uses the realm's "ACR to LoA" mapping, whose values each realm chooses, so none is filled in.
No aiohttp, no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from ztproxy.config.presets import Entry, Preset, Problem, issuer_url

_REALM = re.compile(r"(/[^/]+)*/realms/[^/]+")


def _defaults(_: Entry) -> dict[str, Any]:
    return {"scopes": ["openid", "email", "profile"], "groups_claim": "groups"}


def _check(effective: Entry, _: Entry) -> list[Problem]:
    url = issuer_url(effective)
    if url is None or _REALM.fullmatch(url.path):
        return []
    return [("issuer", f"{url} is not a Keycloak realm's issuer: expected https://<host>/realms/<realm> "
                       "(https://<host>/auth/realms/<realm> before Keycloak 17), without an endpoint's path")]


KEYCLOAK = Preset(name="keycloak", defaults=_defaults, check=_check)
