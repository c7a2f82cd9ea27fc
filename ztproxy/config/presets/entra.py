"""Microsoft Entra ID: a tenant's v2.0 issuer, groups from Microsoft Graph when the token has too many.

- The issuer is per tenant, ``https://login.microsoftonline.com/{tenant id}/v2.0``; ``entra.tenant``
  builds it. The multi-tenant ``common``, ``organizations`` and ``consumers`` endpoints are refused:
  their tokens' ``iss`` names each user's own tenant, so no single issuer can be checked. A
  tenant given by domain name is refused too: its discovery document names the tenant id.
- Groups: Entra puts at most about 200 group ids in a token; past that the ``groups`` claim is
  replaced by ``_claim_names: {groups: src1}`` (the "groups overage"). :func:`needs_graph`
  decides when the groups are read from Microsoft Graph instead (``ztproxy.oidc.graph`` reads
  them): on overage, always for display names (tokens carry ids), and at every refresh (Entra's
  userinfo carries no groups, so without Graph group changes would never apply).
- MFA: Entra ignores ``acr_values``; a second factor shows as ``mfa`` in ``amr``.

No aiohttp, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from ztproxy.config.presets import Entry, Preset, Problem, issuer_url, section
from ztproxy.config.values import HttpUrl, Model

DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
LOGIN_URL = "https://login.microsoftonline.com"
MULTI_TENANT = frozenset({"common", "organizations", "consumers"})
_TENANT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ISSUER_PATH = re.compile(r"/(?P<tenant>[^/]+)/v2\.0")
# Delegated Graph permissions: User.Read lets a user's token list the user's own memberships;
# the groups' names need the permission to read groups.
_SCOPES = ("openid", "email", "profile", "offline_access", "User.Read")
_NAMES_SCOPE = "GroupMember.Read.All"


class EntraOptions(Model):
    tenant: str | None = None  # the directory (tenant) id; builds the issuer
    group_names: Literal["ids", "display_names"] = "ids"  # what a group is called in rules
    graph_url: HttpUrl = DEFAULT_GRAPH_URL  # Microsoft Graph (national clouds have their own)


def needs_graph(options: EntraOptions, id_claims: Mapping[str, Any] | None) -> bool:
    """Whether the user's groups must be read from Graph; ``id_claims`` None at a refresh."""
    if id_claims is None or options.group_names == "display_names":
        return True
    names = id_claims.get("_claim_names")
    # OIDC Core 5.6.2: the claim is distributed (its value at another source), not in the token.
    return isinstance(names, dict) and "groups" in names and "groups" not in id_claims


def _defaults(entry: Entry) -> dict[str, Any]:
    options = section(entry, "entra")
    names = options.get("group_names") == "display_names"
    defaults: dict[str, Any] = {
        "scopes": [*_SCOPES, _NAMES_SCOPE] if names else list(_SCOPES),
        "groups_claim": "groups",
        "mfa": {"acr_values": [], "accepted_amr": ["mfa"]},
    }
    tenant = options.get("tenant")
    if isinstance(tenant, str) and tenant:
        defaults["issuer"] = f"{LOGIN_URL}/{tenant}/v2.0"
    return defaults


def _check(effective: Entry, written: Entry) -> list[Problem]:
    tenant = section(written, "entra").get("tenant")
    if isinstance(tenant, str):
        problem = _tenant_problem(tenant)
        if problem is not None:
            return [("entra.tenant", problem)]
    if "issuer" not in effective:
        return [("issuer", "preset entra needs entra.tenant (the directory id) or the issuer "
                           f"{LOGIN_URL}/<tenant id>/v2.0")]
    url = issuer_url(effective)
    if url is None:
        return []
    match = _ISSUER_PATH.fullmatch(url.path)
    if match is None:
        return [("issuer", f"{url} is not an Entra v2.0 issuer: expected {LOGIN_URL}/<tenant id>/v2.0 (the "
                           "v1.0 https://sts.windows.net/<tenant id>/ issuer signs other tokens)")]
    issuer_tenant = match.group("tenant")
    problem = _tenant_problem(issuer_tenant)
    if problem is not None:
        return [("issuer", problem)]
    if isinstance(tenant, str) and "issuer" in written and issuer_tenant.lower() != tenant.lower():
        return [("issuer", f"the issuer names tenant {issuer_tenant!r} but entra.tenant is {tenant!r}: "
                           "give one of them")]
    return []


def _tenant_problem(tenant: str) -> str | None:
    if tenant.lower() in MULTI_TENANT:
        return (f"the multi-tenant {tenant!r} endpoint cannot be used: its tokens' iss names each user's own "
                "tenant, so no issuer can be checked; give your tenant id (Entra admin center, Overview)")
    if not _TENANT_ID.fullmatch(tenant.lower()):
        return (f"{tenant!r} is not a tenant id: give the directory (tenant) id, a GUID such as "
                "00000000-0000-0000-0000-000000000000; a domain name's discovery document names the id, "
                "which would then not match")
    return None


ENTRA = Preset(name="entra", defaults=_defaults, check=_check, options="entra",
               groups="ztproxy.oidc.graph:GraphGroups.from_config")
