"""The configuration schema: the sections of a config file, with defaults as named constants.

Field-level validation lives with the value types in :mod:`ztproxy.config.values` and the
rule models in :mod:`ztproxy.config.rules`; checks that span several fields or entries
(duplicate route names, unknown policy names) live in :mod:`ztproxy.config.checks`.
This module imports no aiohttp.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator
from yarl import URL

from ztproxy.config.assertion import AssertionConfig
from ztproxy.config.devices import DevicesConfig
from ztproxy.config.grants import GrantsConfig
from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.config.risk import Action, RiskConfig, Signal, check_rules
from ztproxy.config.rules import RuleEntry
from ztproxy.config.sessions import SessionsConfig
from ztproxy.config.signals import SignalsConfig
from ztproxy.config.tokens import DpopConfig, TokenIssuerConfig
from ztproxy.config.values import (
    ByteSize,
    Cidr,
    Duration,
    HttpUrl,
    ListenAddress,
    Model,
    PathPrefix,
    is_host_name,
    split_listen,
)
from ztproxy.config.workloads import WorkloadIdentityConfig
from ztproxy.origins import normalize_origin

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
DEFAULT_MAX_CONCURRENT_STREAMS = 100

_ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MIN_ADMIN_TOKEN_LENGTH = 32
_BEARER_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 2.1: b64token


class TlsConfig(Model):
    cert_file: str
    key_file: str
    # Devices: with a CA, the listener asks for (does not require) a client certificate.
    client_ca_file: str | None = None
    # TLS 1.2 clients must offer ECDHE with AES-GCM or ChaCha20-Poly1305 (forward secret, AEAD).
    min_version: Literal["1.2", "1.3"] = "1.2"


class LimitsConfig(Model):
    max_header_count: int = Field(default=DEFAULT_MAX_HEADER_COUNT, ge=1, le=1000)
    max_header_bytes: ByteSize = DEFAULT_MAX_HEADER_BYTES
    max_line_bytes: ByteSize = DEFAULT_MAX_LINE_BYTES
    header_timeout: Duration = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: Duration = DEFAULT_KEEPALIVE_TIMEOUT
    max_request_body: ByteSize | None = None


class Http2Config(Model):
    # HTTP/2 offered by ALPN ("h2" beside "http/1.1") on a TLS listener.
    enabled: bool = True
    # h2c with prior knowledge on a plain listener (RFC 9113 3.3): for a trusted hop in front
    # (a load balancer, a gRPC client inside the network); off, the preface is a bad request.
    cleartext: bool = False
    # SETTINGS_MAX_CONCURRENT_STREAMS: requests one connection may have in flight.
    max_concurrent_streams: int = Field(default=DEFAULT_MAX_CONCURRENT_STREAMS, ge=1, le=1000)


class ServerConfig(Model):
    listen: ListenAddress = DEFAULT_LISTEN
    public_url: HttpUrl | None = None
    admin_listen: ListenAddress | None = DEFAULT_ADMIN_LISTEN
    # Forward-auth decisions only (/.ztproxy/auth, /.ztproxy/denied, /healthz), for a calling proxy.
    auth_listen: ListenAddress | None = None
    # The bearer token of the admin API (better: admin_token_file); None: the admin API is off.
    admin_token: str | None = None
    trusted_proxies: tuple[Cidr, ...] = ()
    tls: TlsConfig | None = None
    shutdown_grace: Duration = DEFAULT_SHUTDOWN_GRACE
    drain_delay: Duration = 0.0
    watch_config: bool = False  # reload when the config file changes, as on SIGHUP (read at start)
    # A request header name with "_" or ".": dropped when it spells a protected name another
    # way (drop-protected), always dropped (drop-all, as nginx does), or the request refused (reject).
    headers_with_separators: Literal["drop-protected", "drop-all", "reject"] = "drop-protected"
    limits: LimitsConfig = LimitsConfig()
    http2: Http2Config = Http2Config()

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # The value itself is never repeated in a message: it is a secret.
        if not _BEARER_TOKEN_RE.fullmatch(value):
            raise ValueError("the admin token may hold only letters, digits and -._~+/ (then = padding), "
                             "e.g. the output of `openssl rand -hex 32`")
        if len(value) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(f"the admin token is too short: at least {MIN_ADMIN_TOKEN_LENGTH} characters, "
                             "e.g. the output of `openssl rand -hex 32`")
        return value


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = True
    flush_interval: Duration = DEFAULT_LOG_FLUSH_INTERVAL



class RouteConfig(Model):
    name: str
    host: str | None = None
    path: PathPrefix = "/"
    upstream: HttpUrl
    allow: tuple[RuleEntry, ...] = ()
    deny: tuple[RuleEntry, ...] = ()  # a rule that holds here refuses the request, whatever allow says
    shadow: tuple[RuleEntry, ...] | None = None  # evaluated and logged beside allow/deny, never enforced
    identity_provider: str | None = None  # which provider signs users in here; default the first
    # Besides the identity provider's, whose access tokens services may call here (token_issuers names).
    token_issuers: tuple[str, ...] = ()
    audience: str | None = None  # of the identity assertion; default the route's origin
    claim_headers: dict[str, str] = {}  # noqa: RUF012 -- header name -> identity claim, added upstream
    # The upstream receives the Host the request arrived with (apps' CSRF and Origin checks expect
    # it); false sends the upstream's own host:port, for upstreams that route on their own name.
    preserve_host: bool = True
    connect_timeout: Duration = DEFAULT_CONNECT_TIMEOUT
    read_timeout: Duration = DEFAULT_READ_TIMEOUT
    websockets: bool = True
    # Origins besides the route's own whose pages may open a WebSocket here (cross-site hijacking).
    websocket_origins: tuple[str, ...] = ()
    # Forward an unauthenticated CORS preflight (OPTIONS with Origin and Access-Control-Request-Method).
    cors_allow_preflight: bool = False
    risk: dict[Signal, Action] = {}  # noqa: RUF012 -- signal -> action here, over risk.rules
    # How requests reach the upstream: HTTP/1.1, or gRPC (HTTP/2: h2c for http://, TLS with
    # ALPN h2 for https://; trailers passed through; the proxy's refusals as gRPC statuses).
    upstream_protocol: Literal["http1", "grpc"] = "http1"

    @field_validator("risk")
    @classmethod
    def _check_risk(cls, value: dict[Signal, Action]) -> dict[Signal, Action]:
        check_rules(value)
        return value

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
        if not is_host_name(bare):
            raise ValueError(f"invalid host {value!r}: expected a host name such as wiki.corp.example "
                             "or a wildcard such as *.corp.example (ports are not part of a route host)")
        return host

    @field_validator("claim_headers")
    @classmethod
    def _check_claim_headers(cls, value: dict[str, str]) -> dict[str, str]:
        # Imported here: ztproxy.assertion imports the config package, which imports this module.
        from ztproxy.assertion.headers import claim_header_problem
        problems = [problem for name in value if (problem := claim_header_problem(name)) is not None]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("websocket_origins")
    @classmethod
    def _check_websocket_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [origin for origin in value if normalize_origin(origin) is None]
        if bad:
            raise ValueError(f"invalid origin(s) {', '.join(map(repr, bad))}: expected scheme://host[:port] such as "
                             "https://app.corp.example, no path ('null' would admit any sandboxed page)")
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
    identity_providers: tuple[IdentityProviderConfig, ...] = ()
    token_issuers: tuple[TokenIssuerConfig, ...] = ()  # authorization servers of services' tokens only
    dpop: DpopConfig = DpopConfig()  # proofs of DPoP-bound access tokens
    signals: SignalsConfig = SignalsConfig()  # security events from the IdP, EDR and MDM (SSF)
    sessions: SessionsConfig = SessionsConfig()
    devices: DevicesConfig = DevicesConfig()
    workload_identity: WorkloadIdentityConfig | None = None  # SPIFFE trust domains: X.509 SVIDs over mTLS
    assertion: AssertionConfig = AssertionConfig()
    risk: RiskConfig = RiskConfig()
    grants: GrantsConfig = GrantsConfig()  # just-in-time access: requests, approvals, webhooks
    # pydantic copies mutable defaults; ruff sees Model as a pydantic model only in its own file.
    policies: dict[str, tuple[RuleEntry, ...]] = {}  # noqa: RUF012
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
