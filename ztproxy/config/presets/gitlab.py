"""GitLab: groups from userinfo.

GitLab's userinfo answers, for the ``openid`` scope, a ``groups`` claim with the full paths of
the user's groups (the ID token has only ``groups_direct``); so userinfo must be read. GitLab
documents no ``acr`` or ``amr`` values. No aiohttp, no I/O.
"""

from __future__ import annotations

from typing import Any

from ztproxy.config.presets import Entry, Preset, Problem


def _defaults(_: Entry) -> dict[str, Any]:
    return {"scopes": ["openid", "email", "profile"], "groups_claim": "groups", "use_userinfo": True}


def _check(effective: Entry, _: Entry) -> list[Problem]:
    if effective.get("use_userinfo") is False and effective.get("groups_claim") == "groups":
        return [("use_userinfo", "GitLab sends the groups claim in userinfo only: keep use_userinfo true, or name "
                                 "another groups_claim (groups_direct is in the ID token)")]
    return []


GITLAB = Preset(name="gitlab", defaults=_defaults, check=_check)
