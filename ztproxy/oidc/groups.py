"""Where a provider's groups come from when the tokens do not carry them: a preset's groups source.

A preset names a factory by import string (``Preset.groups``), resolved here by the one
resolver and called with the provider's configuration and the IdP client. The source is asked
at sign-in (with the verified ID token's claims) and at every refresh (with None); it answers
the groups, or None when the claims' own groups apply. Its failures are the IdP's:
``IdentityProviderUnavailable`` (or ``SignInMisconfigured``), so a sign-in never ends in a
session whose groups were silently left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import aiohttp

from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.config.presets import preset_of
from ztproxy.imports import resolve


class GroupsSource(Protocol):
    async def groups(self, access_token: str | None, id_claims: Mapping[str, Any] | None) -> tuple[str, ...] | None:
        """The user's groups; None: take them from the claims. ``id_claims`` is None at a refresh."""


GroupsFactory = Callable[[IdentityProviderConfig, aiohttp.ClientSession], GroupsSource]


def groups_source(config: IdentityProviderConfig, http: aiohttp.ClientSession) -> GroupsSource | None:
    """The provider's groups source, from its preset; None when the claims are all there is."""
    target = preset_of(config).groups
    if target is None:
        return None
    return cast("GroupsFactory", resolve(target, what="groups source"))(config, http)
