"""The user's groups from Microsoft Graph, for Entra ID (preset entra).

``GET {graph_url}/v1.0/me/transitiveMemberOf?$select=id,displayName,securityEnabled``, with the
user's access token, page after page (``@odata.nextLink``), keeping the security groups. Why
this call: it is transitive, as the groups claim is; it gives ids and names in one answer (the
overage claim's ``getMemberObjects`` gives ids only); it needs only the delegated ``User.Read``
permission for ids (a group's name needs ``GroupMember.Read.All``, or Graph leaves it out).
When to read Graph is decided by :func:`ztproxy.config.presets.entra.needs_graph` (pure).

Each page is read bounded by ``max_response`` within ``http_timeout``; at most ``MAX_PAGES``
pages; a next page only at Graph's own origin (the access token goes nowhere else). Any
failure is an ``IdentityProviderUnavailable`` with an event saying why; Graph refusing the
token (401, 403: the permission is not granted) is ``SignInMisconfigured``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.config.presets.entra import EntraOptions, needs_graph
from ztproxy.errors import IdentityProviderUnavailable, SignInMisconfigured
from ztproxy.fetch import BodyTooLarge, read_bounded

_log = structlog.get_logger("ztproxy.oidc")

MAX_PAGES = 100  # 999 groups a page: far more than anyone is in
PAGE_SIZE = 999  # Graph's largest page for this call
_GROUP_TYPE = "#microsoft.graph.group"
_REMEDY = ("grant the app registration the delegated Microsoft Graph permission User.Read (group ids) or "
           "GroupMember.Read.All (group names), with admin consent")


class GraphGroups:
    """A :class:`ztproxy.oidc.groups.GroupsSource` reading Microsoft Graph."""

    def __init__(self, provider: str, options: EntraOptions, http: aiohttp.ClientSession, *, timeout: float,
                 max_response: int) -> None:
        self.provider = provider
        self.options = options
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_response = max_response
        self._origin = URL(options.graph_url).origin()

    @classmethod
    def from_config(cls, config: IdentityProviderConfig, http: aiohttp.ClientSession) -> GraphGroups:
        return cls(config.name, config.entra or EntraOptions(), http, timeout=config.http_timeout,
                   max_response=config.max_response)

    async def groups(self, access_token: str | None, id_claims: Mapping[str, Any] | None) -> tuple[str, ...] | None:
        if not needs_graph(self.options, id_claims):
            return None
        if access_token is None:
            _log.error("graph_no_access_token", provider=self.provider)
            raise IdentityProviderUnavailable()
        names = self.options.group_names == "display_names"
        url: URL | None = URL(self.options.graph_url) / "v1.0" / "me" / "transitiveMemberOf" % {
            "$select": "id,displayName,securityEnabled", "$top": str(PAGE_SIZE)}
        found: set[str] = set()
        for _ in range(MAX_PAGES):
            if url is None:
                return tuple(sorted(found))
            page = await self._page(url, access_token)
            found.update(_groups(page["value"], names=names, provider=self.provider))
            url = self._next(page.get("@odata.nextLink"))
        if url is None:
            return tuple(sorted(found))
        _log.warning("graph_too_many_pages", provider=self.provider, pages=MAX_PAGES)
        raise IdentityProviderUnavailable()

    def _next(self, link: Any) -> URL | None:
        if link is None:
            return None
        try:
            url = URL(link) if isinstance(link, str) else None
        except ValueError:
            url = None
        if url is None or not url.absolute or url.origin() != self._origin:
            _log.warning("graph_bad_next_link", provider=self.provider, link=str(link)[:200])
            raise IdentityProviderUnavailable()
        return url

    async def _page(self, url: URL, access_token: str) -> Mapping[str, Any]:
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        try:
            async with self._http.get(url, headers=headers, timeout=self._timeout, allow_redirects=False) as response:
                status = response.status
                body = await read_bounded(response, self._max_response) if status == 200 else b""
        except BodyTooLarge as exc:
            _log.warning("graph_response_too_large", provider=self.provider, limit=self._max_response)
            raise IdentityProviderUnavailable() from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning("graph_unreachable", provider=self.provider, error=repr(exc)[:200])
            raise IdentityProviderUnavailable() from exc
        if status in (401, 403):
            _log.error("graph_refused", provider=self.provider, status=status, remedy=_REMEDY)
            raise SignInMisconfigured()
        if status != 200:
            _log.warning("graph_bad_status", provider=self.provider, status=status)
            raise IdentityProviderUnavailable()
        try:
            page = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            _log.warning("graph_bad_answer", provider=self.provider, error="not JSON")
            raise IdentityProviderUnavailable() from exc
        if not isinstance(page, dict) or not isinstance(page.get("value"), list):
            _log.warning("graph_bad_answer", provider=self.provider, error="no value list")
            raise IdentityProviderUnavailable()
        return page


def _groups(entries: list[Any], *, names: bool, provider: str) -> set[str]:
    """The ids (or names) of the security groups among one page's directory objects."""
    found: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("@odata.type") != _GROUP_TYPE \
                or entry.get("securityEnabled") is False:
            continue  # directory roles, administrative units, Microsoft 365 groups
        value = entry.get("displayName" if names else "id")
        if not isinstance(value, str) or not value:
            # Graph leaves out what the token may not read: a group we cannot name is no group to drop.
            _log.error("graph_group_unreadable", provider=provider, remedy=_REMEDY)
            raise SignInMisconfigured()
        found.add(value)
    return found
