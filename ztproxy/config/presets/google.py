"""Google Workspace: one issuer, the hosted domain asked for and then required of every ID token.

``google.hosted_domain`` goes to Google as the ``hd`` authorization parameter, which only
narrows the account chooser: anyone can edit it out of the URL. What counts is the ``hd``
claim of the signed ID token, which Google sets to the Workspace domain of the account (a
personal Google account has none): a sign-in without it, or with another domain, is refused.
``access_type=offline`` asks Google for a refresh token (it takes no ``offline_access`` scope).
Google's ID token carries no groups (the Directory API would need domain-wide delegation,
which ztproxy does not do) and no ``amr``. No aiohttp, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ztproxy.config.presets import Entry, Preset, Problem, Refusal, section
from ztproxy.config.values import EmailDomain, Model

if TYPE_CHECKING:
    from ztproxy.config.identity import IdentityProviderConfig

ISSUER = "https://accounts.google.com"


class GoogleOptions(Model):
    hosted_domain: EmailDomain  # the Workspace domain every account signing in must belong to


def _defaults(_: Entry) -> dict[str, Any]:
    return {"issuer": ISSUER, "scopes": ["openid", "email", "profile"]}


def _check(_: Entry, written: Entry) -> list[Problem]:
    if "hosted_domain" not in section(written, "google"):
        return [("google", "preset google needs google.hosted_domain (your Workspace domain): without it any "
                           "Google account could sign in, personal ones included")]
    return []


def _parameters(config: IdentityProviderConfig) -> dict[str, str]:
    assert config.google is not None  # the check requires it
    return {"hd": config.google.hosted_domain, "access_type": "offline"}


def _refusal(config: IdentityProviderConfig, claims: Mapping[str, Any]) -> Refusal | None:
    assert config.google is not None
    domain = claims.get("hd")
    if domain is None:
        return Refusal("hd-missing", "This Google account does not belong to the organisation's Google Workspace "
                                     f"({config.google.hosted_domain}). Sign in with your work account.")
    if not isinstance(domain, str) or domain.lower() != config.google.hosted_domain:
        return Refusal("hd-mismatch", "This Google account belongs to another organisation than "
                                      f"{config.google.hosted_domain}. Sign in with your work account.")
    return None


GOOGLE = Preset(name="google", defaults=_defaults, check=_check, options="google",
                authorization_parameters=_parameters, refusal=_refusal)
