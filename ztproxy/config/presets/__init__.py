"""Identity provider presets: the known quirks of the IdPs companies use, as data and small functions.

``identity_providers[].preset: NAME`` picks a :class:`Preset` from :data:`PRESETS` (short
name -> import string, resolved by :func:`ztproxy.imports.resolve`, STYLE 22), or one of the
operator's own by import string. A preset only

- fills defaults: keys the provider's entry leaves out (``defaults``, read from what the
  entry says, e.g. the issuer built from a tenant); whatever the entry sets wins;
- adds checks (``check``): each a ``(key, message)`` that ``ztproxy check`` reports at
  ``identity_providers[N].key`` with the other configuration errors;
- and, at sign-in, may add authorization parameters, refuse an ID token's claims
  (``refusal``), and name a groups source at the edge (``groups``, an import string of
  ``ztproxy.oidc``, where the I/O lives).

Without a preset the provider is the generic one: :data:`GENERIC` does nothing. This module
imports no aiohttp, and nothing of ``ztproxy.oidc``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yarl import URL

from ztproxy.imports import is_import_string, resolve

if TYPE_CHECKING:
    from ztproxy.config.identity import IdentityProviderConfig

# Short name -> the Preset it names. Resolved when a configuration uses it.
PRESETS: dict[str, str] = {
    "entra": "ztproxy.config.presets.entra:ENTRA",
    "google": "ztproxy.config.presets.google:GOOGLE",
    "okta": "ztproxy.config.presets.okta:OKTA",
    "keycloak": "ztproxy.config.presets.keycloak:KEYCLOAK",
    "auth0": "ztproxy.config.presets.auth0:AUTH0",
    "gitlab": "ztproxy.config.presets.gitlab:GITLAB",
    "lemonldap": "ztproxy.config.presets.lemonldap:LEMONLDAP",
}

Entry = Mapping[str, Any]  # a provider's entry as written in the file (plain data, unvalidated)
Problem = tuple[str, str]  # (the key of the provider's entry it is about, dotted when nested; the message)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the claims of a verified ID token are not accepted: a stable reason and words for the user."""

    reason: str
    detail: str


def _no_defaults(_: Entry) -> dict[str, Any]:
    return {}


def _no_problems(_: Entry, __: Entry) -> list[Problem]:
    return []


def _no_parameters(_: IdentityProviderConfig) -> dict[str, str]:
    return {}


def _no_refusal(_: IdentityProviderConfig, __: Mapping[str, Any]) -> Refusal | None:
    return None


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    # The entry as written -> keys it lacks, with the preset's values ("mfa" merged key by key).
    defaults: Callable[[Entry], dict[str, Any]] = _no_defaults
    # (the entry with the defaults, the entry as written) -> problems; both plain, possibly malformed, data.
    check: Callable[[Entry, Entry], list[Problem]] = _no_problems
    # The key of the preset's own options section in the entry (entra: {...}), if it has one.
    options: str | None = None
    # The issuer is compared as written, a trailing "/" included (Auth0); else one is dropped.
    keep_issuer_slash: bool = False
    authorization_parameters: Callable[[IdentityProviderConfig], dict[str, str]] = _no_parameters
    refusal: Callable[[IdentityProviderConfig, Mapping[str, Any]], Refusal | None] = _no_refusal
    # "package.module:factory" called with (config, http client): a ztproxy.oidc.groups.GroupsSource.
    groups: str | None = None


GENERIC = Preset(name="generic")


def resolve_preset(name: str) -> Preset:
    """The preset ``name`` (a short name or an import string) names; ValueError says what is wrong."""
    if name in PRESETS:
        target = PRESETS[name]
    elif is_import_string(name):
        target = name
    else:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)} "
                         "or an import string package.module:PRESET")
    preset = resolve(target, what="preset")
    if not isinstance(preset, Preset):
        raise ValueError(f"{target!r} is not a ztproxy.config.presets.Preset")
    return preset


def preset_of(config: IdentityProviderConfig) -> Preset:
    """The provider's preset; the generic one without."""
    return GENERIC if config.preset is None else resolve_preset(config.preset)


def option_sections() -> dict[str, str]:
    """The options section of each built-in preset that has one -> the preset's name."""
    return {preset.options: name for name in PRESETS
            if (preset := resolve_preset(name)).options is not None}


def with_defaults(preset: Preset, entry: Entry) -> dict[str, Any]:
    """``entry`` with the keys it lacks filled from ``preset``; what it sets (or reads from a file) wins."""
    merged = dict(entry)
    for key, value in preset.defaults(entry).items():
        if key == "mfa" and isinstance(entry.get("mfa"), dict):
            merged["mfa"] = {**value, **entry["mfa"]}
        elif key not in entry and f"{key}_file" not in entry:
            merged[key] = value
    return merged


# --- helpers for the presets' checks (plain data in, plain words out) ----------------------

def issuer_url(entry: Entry) -> URL | None:
    """The entry's issuer as a URL, None when it is missing or malformed (pydantic reports that)."""
    issuer = entry.get("issuer")
    if not isinstance(issuer, str):
        return None
    try:
        url = URL(issuer)
    except (ValueError, TypeError):
        return None
    return url if url.scheme in ("http", "https") and url.host else None


def section(entry: Entry, key: str) -> dict[str, Any]:
    """The mapping under ``key``, or an empty one (a malformed one is pydantic's to report)."""
    value = entry.get(key)
    return value if isinstance(value, dict) else {}
