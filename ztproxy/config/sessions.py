"""Sessions: where they are stored, the cookie that carries them, and how long they last.

This module imports no aiohttp.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from ztproxy.config.values import Duration, Model, is_host_name

DEFAULT_COOKIE_NAME = "ztproxy_session"
DEFAULT_LIFETIME = 12 * 3600.0
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_REFRESH_INTERVAL = 300.0
DEFAULT_CACHE_TTL = 1.0
DEFAULT_LOGIN_TIMEOUT = 600.0
DEFAULT_STORE_TIMEOUT = 1.0
_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SessionsConfig(Model):
    # "memory" (one process), "redis://host:port/db", "rediss://...",
    # "redis+sentinel://host:port,host:port/master-name/db", or "package.module:Class".
    store: str = "memory"
    store_timeout: Duration = Field(default=DEFAULT_STORE_TIMEOUT, gt=0)  # each store operation; then 503, fail closed
    # Secrets sealing the proxy's own short-lived cookies (login state), newest first: 32+ bytes
    # each, hex or base64 or plain text. Without one, each start generates a fresh secret (a
    # login in progress during a restart then has to start over). Workers share it.
    cookie_secrets: tuple[str, ...] = ()
    cookie_name: str = DEFAULT_COOKIE_NAME
    cookie_domain: str | None = None  # e.g. corp.example: one login for every route host under it
    lifetime: Duration = Field(default=DEFAULT_LIFETIME, gt=0)  # absolute, from login
    idle_timeout: Duration = Field(default=DEFAULT_IDLE_TIMEOUT, gt=0)
    refresh_interval: Duration = Field(default=DEFAULT_REFRESH_INTERVAL, gt=0)  # re-verify at the IdP
    cache_ttl: Duration = DEFAULT_CACHE_TTL  # how long a worker trusts its in-process copy
    login_timeout: Duration = Field(default=DEFAULT_LOGIN_TIMEOUT, gt=0)  # from redirect to callback

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        # Imported here: ztproxy.sessions.store imports this module.
        from ztproxy.sessions.store import check_store
        check_store(value)
        return value

    @field_validator("cookie_secrets")
    @classmethod
    def _check_secrets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from ztproxy.sessions.sealing import parse_secret
        for secret in value:
            parse_secret(secret)
        return value

    @field_validator("cookie_name")
    @classmethod
    def _check_cookie_name(cls, value: str) -> str:
        if not _COOKIE_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid cookie name {value!r}: use letters, digits, '_' and '-'")
        return value

    @field_validator("cookie_domain")
    @classmethod
    def _check_cookie_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        domain = value.strip().lower().strip(".")
        if not is_host_name(domain) or "." not in domain:
            raise ValueError(f"invalid cookie domain {value!r}: expected a domain such as corp.example")
        return domain
