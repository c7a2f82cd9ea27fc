"""Sessions: where they are stored, the cookie that carries them, and how long they last.

:data:`STORES` names the built-in stores by import string (uvicorn's registry, STYLE 22):
validating ``sessions.store`` resolves it without this module importing ``ztproxy.sessions``
(which imports this one); ``ztproxy.sessions.store.open_store`` builds what it names.
This module imports no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import Field, field_validator

from ztproxy.config.values import Duration, Model, is_host_name
from ztproxy.imports import is_import_string, resolve

DEFAULT_COOKIE_NAME = "ztproxy_session"
DEFAULT_LIFETIME = 12 * 3600.0
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_REFRESH_INTERVAL = 300.0
DEFAULT_CACHE_TTL = 1.0
DEFAULT_LOGIN_TIMEOUT = 600.0
DEFAULT_STORE_TIMEOUT = 1.0
_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_SECRET_RE = re.compile(r"(?i)([?&][^=&]*password=)[^&]*")

# A store's short name, or a URL scheme with its "://" -> the class built from the SessionsConfig.
STORES: dict[str, str] = {
    "memory": "ztproxy.sessions.memory:MemoryStore",
    "redis://": "ztproxy.sessions.redis:RedisStore",
    "rediss://": "ztproxy.sessions.redis:RedisStore",
    "unix://": "ztproxy.sessions.redis:RedisStore",
    "redis+sentinel://": "ztproxy.sessions.redis:RedisStore",
    "redis+cluster://": "ztproxy.sessions.redis_cluster:RedisClusterStore",
}


class SessionsConfig(Model):
    # "memory" (one process), "redis://host:port/db", "rediss://...",
    # "redis+sentinel://host:port,host:port/master-name/db", "redis+cluster://host:port,host:port",
    # or "package.module:Class".
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
    # Also index new sessions under the names the release before reads (a rolling upgrade from it).
    legacy_indexes: bool = False

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
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


def resolve_store(spec: str) -> Callable[..., object]:
    """The class (or factory) that builds the store ``spec`` names; ValueError says what is wrong."""
    scheme = _SCHEME_RE.match(spec)
    if scheme is not None:
        prefix = scheme.group(0).lower()
        if prefix not in STORES:
            raise ValueError(f"unknown session store scheme {prefix!r}: expected {', '.join(STORES)} "
                             "or an import string package.module:Class")
        target = STORES[prefix]
    elif spec in STORES:
        target = STORES[spec]
    elif is_import_string(spec):
        target = spec
    else:
        raise ValueError(f"invalid session store {redact_url(spec)!r}: expected memory, a redis://, "
                         "redis+sentinel:// or redis+cluster:// URL, or an import string package.module:Class")
    factory = resolve(target)
    if not callable(factory):
        raise ValueError(f"session store {target!r} is not a class or factory")
    return factory


def check_store(spec: str) -> None:
    """Validate a store spec without opening anything; ValueError says what is wrong."""
    factory = resolve_store(spec)
    check_spec = getattr(factory, "check_spec", None)
    if callable(check_spec):
        check_spec(spec)


def redact_url(url: str) -> str:
    """``url`` fit for an error message or a log: user, password and password=... as ``***``."""
    at = url.rfind("@")
    if at >= 0:  # everything up to the last "@", in case the password holds an unencoded "/" or "@"
        start = url.find("://") + 3 if "://" in url[:at] else 0
        url = url[:start] + "***" + url[at:]
    return _QUERY_SECRET_RE.sub(r"\1***", url)
