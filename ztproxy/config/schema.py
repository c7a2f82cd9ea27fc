"""The configuration schema: frozen models with defaults as named constants.

Field-level validation lives here (types, durations, URLs, addresses); checks that
span several fields or entries (duplicate route names, unknown policy names) live in
:mod:`ztproxy.config.checks`. Every model forbids unknown keys. A key ``foo_file``
next to a string field ``foo`` reads ``foo`` from that file (for secrets).
This module imports no aiohttp.
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from yarl import URL

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9090"
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
DEFAULT_MAX_HEADER_COUNT = 100
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
DEFAULT_MAX_LINE_BYTES = 8 * 1024
DEFAULT_LOG_FLUSH_INTERVAL = 0.1

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BYTES_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
                "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_BYTES_RE = re.compile(r"(\d+)\s*([a-z]*)")
_ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# RFC 3986 3.3 pchar and "/": the characters ztproxy.routing keeps as they are in a canonical path.
_PATH_RE = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


# Validators raise ValueError even for a wrong type: pydantic reports a ValueError as a
# validation error, while a TypeError would escape as a crash (hence the TRY004 noqa).
def parse_duration(value: Any) -> float:
    """``90``, ``"500ms"``, ``"15m"``, ``"1h30m"`` -> seconds. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m or 12h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError("expected a duration such as 30s, 15m or 12h, got an empty string")
        parts = _DURATION_RE.findall(text)
        if "".join(n + u for n, u in parts) != text:
            if re.fullmatch(r"\d+(\.\d+)?", text):
                seconds = float(text)
                parts = []
            else:
                raise ValueError(f"invalid duration {value!r}: use a number with a unit "
                                 "ms, s, m, h or d, e.g. 30s, 15m, 1h30m")
        else:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30s, 15m or 12h")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_byte_size(value: Any) -> int:
    """``1048576``, ``"64KiB"``, ``"10MB"`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _BYTES_RE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _BYTES_UNITS:
            raise ValueError(f"invalid size {value!r}: use a number with a unit B, KiB, MiB or GiB")
        size = int(match.group(1)) * _BYTES_UNITS[match.group(2)]
    else:
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def split_listen(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"invalid port {number} in {address!r}")
    return host, number


def _check_listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    split_listen(value)
    return value


def _check_http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a URL such as http://127.0.0.1:8000")
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"invalid URL {value!r}: scheme must be http or https")
    if not url.host:
        raise ValueError(f"invalid URL {value!r}: a host is required")
    try:
        url.port  # noqa: B018 -- raises on an out-of-range port
    except ValueError as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.user or url.password:
        raise ValueError(f"invalid URL {value!r}: credentials in URLs are not allowed")
    if url.query_string or url.fragment:
        raise ValueError(f"invalid URL {value!r}: no query or fragment allowed")
    return value.rstrip("/")


def _check_cidr(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR {value!r}: expected e.g. 10.0.0.0/8 or 192.0.2.7") from None


def _policy_reference(value: Any) -> Any:
    """An ``allow`` entry may be the name of a policy instead of an inline rule."""
    return {"policy": value} if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
ListenAddress = Annotated[str, BeforeValidator(_check_listen)]
HttpUrl = Annotated[str, BeforeValidator(_check_http_url)]
Cidr = Annotated[str, BeforeValidator(_check_cidr)]


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys are errors, ``*_file`` secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _read_file_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        resolved = dict(data)
        for key in list(data):
            if not isinstance(key, str) or not key.endswith("_file") or key in fields:
                continue
            target = key[: -len("_file")]
            if target not in fields:
                continue
            if target in data:
                raise ValueError(f"give either {target} or {key}, not both")
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"{key}: expected a file path")
            try:
                resolved[target] = Path(data[key]).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{key}: cannot read {data[key]!r}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ValueError(f"{key}: cannot read {data[key]!r}: not UTF-8 text") from None
            del resolved[key]
        return resolved


class TlsConfig(Model):
    cert_file: str
    key_file: str
    min_version: Literal["1.2", "1.3"] = "1.2"


class LimitsConfig(Model):
    max_header_count: int = Field(default=DEFAULT_MAX_HEADER_COUNT, ge=1, le=1000)
    max_header_bytes: ByteSize = DEFAULT_MAX_HEADER_BYTES
    max_line_bytes: ByteSize = DEFAULT_MAX_LINE_BYTES
    header_timeout: Duration = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: Duration = DEFAULT_KEEPALIVE_TIMEOUT
    max_request_body: ByteSize | None = None


class ServerConfig(Model):
    listen: ListenAddress = DEFAULT_LISTEN
    public_url: HttpUrl | None = None
    admin_listen: ListenAddress | None = DEFAULT_ADMIN_LISTEN
    trusted_proxies: tuple[Cidr, ...] = ()
    tls: TlsConfig | None = None
    shutdown_grace: Duration = DEFAULT_SHUTDOWN_GRACE
    drain_delay: Duration = 0.0
    limits: LimitsConfig = LimitsConfig()


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = True
    flush_interval: Duration = DEFAULT_LOG_FLUSH_INTERVAL


class Rule(Model):
    """One ``allow`` rule: it holds when every criterion in it holds."""

    public: bool = False
    policy: str | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Rule:
        # An empty rule would hold for everyone: default deny means a rule must say something.
        if not self.public and self.policy is None:
            raise ValueError("an allow rule needs at least one criterion (e.g. public: true)")
        if self.public and self.policy is not None:
            raise ValueError("a policy reference stands alone; write it as its own allow entry")
        return self


RuleEntry = Annotated[Rule, BeforeValidator(_policy_reference)]


class RouteConfig(Model):
    name: str
    host: str | None = None
    path: str = "/"
    upstream: HttpUrl
    allow: tuple[RuleEntry, ...] = ()
    preserve_host: bool = False
    connect_timeout: Duration = DEFAULT_CONNECT_TIMEOUT
    read_timeout: Duration = DEFAULT_READ_TIMEOUT
    websockets: bool = True

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _ROUTE_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid route name {value!r}: use lowercase letters, digits, '.', '_' and '-'")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.strip().lower().rstrip(".")
        bare = host.removeprefix("*.")
        try:
            address = ipaddress.ip_address(bare.strip("[]"))
        except ValueError:
            pass
        else:
            if bare != host:
                raise ValueError(f"invalid host {value!r}: a wildcard needs a host name, not an address")
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
                raise ValueError(f"invalid host {value!r}: zone ids are not allowed in a host")
            # The form ztproxy.routing.normalize_host gives request hosts: IPv6 bracketed, compressed.
            return f"[{address.compressed}]" if address.version == 6 else address.compressed
        if not bare or len(bare) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in bare.split(".")):
            raise ValueError(f"invalid host {value!r}: expected a host name such as wiki.corp.example "
                             "or a wildcard such as *.corp.example (ports are not part of a route host)")
        return host

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        # Only paths ztproxy.routing treats as already canonical; ";" params count for dot
        # segments because servlet containers strip them ("/..;/admin").
        if not _PATH_RE.fullmatch(value) or "//" in value \
                or any(seg.partition(";")[0] in (".", "..") for seg in value.split("/")):
            raise ValueError(f"invalid path prefix {value!r}: a plain path starting with '/', "
                             "without '.', '..' segments, '//', '?', '#', '%', spaces or non-ASCII")
        return value

    @field_validator("upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        if URL(value).path not in ("", "/"):
            raise ValueError(f"invalid upstream {value!r}: give only scheme, host and port "
                             "(the request path is forwarded as it is)")
        return value


class Config(Model):
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    policies: dict[str, tuple[RuleEntry, ...]] = {}
    routes: tuple[RouteConfig, ...] = Field(min_length=1)

    @property
    def public_url(self) -> str:
        """The externally visible base URL (defaults to the listen address)."""
        if self.server.public_url:
            return self.server.public_url
        host, port = split_listen(self.server.listen)
        scheme = "https" if self.server.tls else "http"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"
