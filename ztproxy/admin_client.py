"""A small client of the admin API (``ztproxy.admin_api``), for ``ztproxy sessions``, ``services`` and ``grants``.

Synchronous and stdlib-only (urllib): a CLI call makes one or two requests and exits.
Every failure is an :class:`AdminApiError` with a message fit for an operator.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from ztproxy.config.values import split_listen

DEFAULT_TIMEOUT = 10.0
_MAX_ANSWER = 4 * 1024 * 1024


class AdminApiError(Exception):
    """The admin API could not be asked, or said no; ``str()`` says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def admin_url(listen: str) -> str:
    """The URL of an admin listener bound to ``listen`` (a wildcard address means this host)."""
    host, port = split_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AdminSetupError(Exception):
    """The admin API cannot even be looked for: no URL, no token, an unreadable file (a usage error)."""


def reach(url: str | None, token_file: str | None, config_path: str | None) -> AdminClient:
    """The client of ``--admin-url`` and ``--token-file``, else of ``-c FILE``'s admin listener and token."""
    token = None
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise AdminSetupError(f"cannot read --token-file {token_file}: {error}") from None
    if (url is None or token is None) and config_path:
        from ztproxy.config import load

        server = load(config_path).server  # a ConfigError is the caller's to render
        url = url or (admin_url(server.admin_listen) if server.admin_listen else None)
        token = token or server.admin_token
    if not url:
        raise AdminSetupError("no admin URL: pass --admin-url URL or -c FILE with server.admin_listen")
    if not token:
        raise AdminSetupError("no admin token: pass --token-file FILE or -c FILE with server.admin_token_file")
    if not token.isprintable() or not token.isascii() or " " in token:
        # It goes into a header: a file of several lines (a config file passed by mistake) cannot.
        raise AdminSetupError("the admin token is not one line of letters, digits and -._~+/= "
                              "(is --token-file the file holding the token?)")
    try:
        return AdminClient(url, token)
    except AdminApiError as error:
        raise AdminSetupError(str(error)) from None


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise AdminApiError(f"the admin URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def list_sessions(self, user: str, provider: str | None = None) -> dict[str, Any]:
        query = {"user": user, **({"provider": provider} if provider else {})}
        return self._call("GET", "/admin/sessions?" + urllib.parse.urlencode(query))

    def revoke_session(self, handle: str) -> dict[str, Any]:
        return self._call("DELETE", "/admin/sessions/" + urllib.parse.quote(handle, safe=""))

    def revoke_user(self, user: str, provider: str | None = None) -> dict[str, Any]:
        return self._call("POST", "/admin/sessions/revoke", {"user": user, **({"provider": provider} if provider
                                                                               else {})})

    def revoke_device(self, device: str) -> dict[str, Any]:
        return self._call("POST", "/admin/sessions/revoke", {"device": device})

    def revoke_service(self, kind: str, value: str, exp: float | None = None) -> dict[str, Any]:
        """``kind``: client_id, service or jti; ``exp`` (a jti's token expiry, Unix seconds) if known."""
        return self._call("POST", "/admin/services/revoke", {kind: value, **({"exp": exp} if exp is not None else {})})

    def service_revocations(self) -> dict[str, Any]:
        return self._call("GET", "/admin/services/revocations")

    def lift_service(self, kind: str, value: str) -> dict[str, Any]:
        return self._call("POST", "/admin/services/lift", {kind: value})

    def grants(self, state: str | None = None) -> dict[str, Any]:
        return self._call("GET", "/admin/grants" + (f"?{urllib.parse.urlencode({'state': state})}" if state else ""))

    def decide_grant(self, request_id: str, action: str, comment: str = "") -> dict[str, Any]:
        """``action``: approve, deny or revoke."""
        return self._call("POST", f"/admin/grants/{urllib.parse.quote(request_id, safe='')}/{action}",
                          {"comment": comment})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # http(s): checked above
                return _answer(response.read(_MAX_ANSWER))
        except urllib.error.HTTPError as error:
            with error:
                answer = _answer(error.read(_MAX_ANSWER), strict=False)
            message = answer.get("message") or f"HTTP {error.code} {error.reason}"
            raise AdminApiError(str(message), error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise AdminApiError(f"cannot reach the admin API at {self.base_url}: {reason}") from None


def _answer(raw: bytes, *, strict: bool = True) -> dict[str, Any]:
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        return answer
    if strict:
        raise AdminApiError("the admin API answered something other than a JSON object "
                            "(is the URL the admin listener's?)")
    return {}
