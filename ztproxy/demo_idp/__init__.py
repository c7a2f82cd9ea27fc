"""The demo OpenID Provider: starts ``idp.mjs`` (npm ``oidc-provider``) on a loopback port.

Used by ``ztproxy demo`` and the integration tests. The OpenID Provider itself is the
``oidc-provider`` library; ``idp.mjs`` configures it and serves the sign-in pages (see the
comment at its top for the behaviour relying parties can count on). This module writes its
configuration, users and keys into a work directory, runs ``node`` and waits until discovery
answers::

    async with DemoIdp(workdir=tmp, port=9000, clients=[...], users=[...]) as idp:
        idp.issuer                      # http://127.0.0.1:9000
        idp.update_user("alice", groups=("employees", "payroll"))   # seen at the next refresh
        await idp.end_sessions("alice") # OP logout + back-channel logout to the clients

Node.js and the npm packages (``./dev demo`` or ``npm ci`` installs them) must be present.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any
from urllib.parse import quote

import aiohttp

from ztproxy.errors import ZtproxyError

DEFAULT_PWD_ACR = "urn:ztproxy:pwd"
DEFAULT_MFA_ACR = "urn:ztproxy:mfa"
# Seconds. Tests may shorten any of them through ``ttl=``.
DEFAULT_TTL: Mapping[str, int] = MappingProxyType({
    "AccessToken": 600,
    "IdToken": 600,
    "RefreshToken": 24 * 3600,
    "Session": 24 * 3600,  # refresh tokens also stop working when the OP session ends
    "Grant": 24 * 3600,
    "Interaction": 600,  # how long a sign-in page stays usable
})
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LOG_TAIL_CHARS = 4000
SERVER_SCRIPT = Path(__file__).resolve().with_name("idp.mjs")
REQUIRED_NPM_PACKAGES = ("oidc-provider", "otplib")


class IdpStartError(ZtproxyError):
    """The demo IdP could not start (no node, no npm packages, port taken, bad config...)."""

    code = "demo-idp-start-failed"


class IdpControlError(ZtproxyError):
    """A control request to the running demo IdP failed."""

    code = "demo-idp-control-failed"


@dataclass(frozen=True)
class IdpUser:
    username: str
    password: str
    email: str
    name: str
    groups: tuple[str, ...] = ()
    totp_secret: str | None = None  # base32; the user then can (and, when asked for MFA, must) use TOTP
    disabled: bool = False  # cannot sign in; refresh and userinfo fail
    claims: Mapping[str, Any] = field(default_factory=dict)  # extra claims, released with `profile`

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"password": self.password, "email": self.email, "name": self.name,
                                 "groups": list(self.groups), "disabled": self.disabled,
                                 "claims": dict(self.claims)}
        if self.totp_secret:
            entry["totp_secret"] = self.totp_secret
        return entry


@dataclass(frozen=True)
class IdpClient:
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    token_endpoint_auth_method: str = "client_secret_basic"  # or client_secret_post, private_key_jwt
    jwks: Mapping[str, Any] | None = None  # the client's public keys, for private_key_jwt

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "redirect_uris": list(self.redirect_uris),
                "post_logout_redirect_uris": list(self.post_logout_redirect_uris),
                "backchannel_logout_uri": self.backchannel_logout_uri,
                "token_endpoint_auth_method": self.token_endpoint_auth_method,
                "jwks": None if self.jwks is None else dict(self.jwks)}


@dataclass(frozen=True)
class IdpService:
    """A machine client: it gets access tokens for itself (client credentials grant, RFC 6749 4.4)."""

    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ()  # the scopes it may ask for (of the resources' own)
    certificate_bound: bool = False  # its tokens are bound to its client certificate (RFC 8705)

    def to_json(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "client_secret": self.client_secret, "scopes": list(self.scopes),
                "certificate_bound": self.certificate_bound}


@dataclass(frozen=True)
class IdpResource:
    """An API that access tokens are issued for (RFC 8707 resource indicator = its audience)."""

    indicator: str  # e.g. the route's audience, https://api.corp.example
    scopes: tuple[str, ...]
    token_format: str = "jwt"  # "jwt" (RFC 9068, verified locally) or "opaque" (introspection, RFC 7662)
    token_ttl: int = 300

    def to_json(self) -> dict[str, Any]:
        return {"indicator": self.indicator, "scopes": list(self.scopes), "token_format": self.token_format,
                "token_ttl": self.token_ttl}


@dataclass(frozen=True)
class BackchannelDelivery:
    """One logout token the IdP POSTed (or failed to POST) to a client's backchannel_logout_uri."""

    client_id: str
    sid: str
    delivered: bool
    error: str | None = None


def find_node_modules(*starts: Path) -> Path:
    """The nearest ``node_modules`` holding the demo IdP's npm packages, above any of ``starts``."""
    starts = starts or (Path(__file__).resolve().parent, Path.cwd())
    for start in starts:
        for directory in (start, *start.parents):
            candidate = directory / "node_modules"
            if all((candidate / package / "package.json").is_file() for package in REQUIRED_NPM_PACKAGES):
                return candidate
    raise IdpStartError(
        "the demo IdP's npm packages are not installed (no node_modules with "
        f"{' and '.join(REQUIRED_NPM_PACKAGES)} above {' or '.join(map(str, starts))}): "
        "run ./dev demo, or npm ci in the ztproxy repository")


def _check_loopback(host: str) -> None:
    # The demo IdP has demo passwords and a plain-http control endpoint: never on a network.
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the demo IdP only listens on loopback addresses, not {host!r}")


def _write_json_atomically(path: Path, data: Any) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
    os.replace(partial, path)  # readers see the old file or the new one, never half of one


class DemoIdp:
    """One ``node idp.mjs`` process; an async context manager that starts and stops it."""

    def __init__(self, *, workdir: Path, port: int, clients: Sequence[IdpClient], users: Sequence[IdpUser],
                 host: str = "127.0.0.1", ttl: Mapping[str, int] | None = None, node: str = "node",
                 pwd_acr: str = DEFAULT_PWD_ACR, mfa_acr: str = DEFAULT_MFA_ACR,
                 start_timeout: float = START_TIMEOUT, public_port: int | None = None,
                 services: Sequence[IdpService] = (), resources: Sequence[IdpResource] = ()) -> None:
        _check_loopback(host)
        unknown = sorted(set(ttl or {}) - set(DEFAULT_TTL))
        if unknown:
            raise ValueError(f"unknown ttl name(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_TTL)}")
        self.ttl: Mapping[str, int] = {**DEFAULT_TTL, **(ttl or {})}
        if any(not isinstance(value, int) or value <= 0 for value in self.ttl.values()):
            raise ValueError("ttl values must be positive integers (seconds)")
        self.workdir = workdir
        self.host = host
        self.port = port
        # Where clients reach it: its own port, or a relay's in front of it (``public_port``).
        self.issuer = f"http://{host}:{public_port or port}"
        self.clients = tuple(clients)
        self.services = tuple(services)
        self.resources = tuple(resources)
        self.users: dict[str, IdpUser] = {user.username: user for user in users}
        self.node = node
        self.pwd_acr = pwd_acr
        self.mfa_acr = mfa_acr
        self.start_timeout = start_timeout
        self.config_path = workdir / "idp-config.json"
        self.users_path = workdir / "idp-users.json"
        self.keys_path = workdir / "idp-keys.json"  # kept across restarts: same keys, same kids
        self.log_path = workdir / "idp.log"
        self._control_token = secrets.token_urlsafe(32)
        self._process: asyncio.subprocess.Process | None = None

    async def client_credentials(self, service: IdpService, resource: str, scopes: Sequence[str] = (), *,
                                 dpop_proof: str | None = None, client_certificate: str | None = None) -> str:
        """An access token for ``service`` at ``resource``, from the token endpoint as a service gets one.

        ``dpop_proof`` (a DPoP proof for POST {issuer}/token) binds it to that key;
        ``client_certificate`` (PEM) is the certificate a certificate-bound service shows.
        """
        form = {"grant_type": "client_credentials", "resource": resource}
        if scopes:
            form["scope"] = " ".join(scopes)
        headers = {"Authorization": aiohttp.encode_basic_auth(service.client_id, service.client_secret)}
        if dpop_proof is not None:
            headers["DPoP"] = dpop_proof
        if client_certificate is not None:
            headers["X-Client-Cert"] = quote(client_certificate, safe="")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.issuer}/token", data=form, headers=headers) as response:
                body = await response.json()
                if response.status != 200:
                    raise IdpControlError(f"client credentials for {service.client_id} refused: {body}")
        token = body["access_token"]
        assert isinstance(token, str)
        return token

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def __aenter__(self) -> DemoIdp:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Run node and wait (bounded) until discovery answers; IdpStartError with its output if not."""
        if self._process and self._process.returncode is None:
            return
        node = shutil.which(self.node)
        if node is None:
            raise IdpStartError(f"the demo IdP needs Node.js 20 ({self.node!r} not found on PATH)")
        self._write_files(find_node_modules())
        log_file = self._open_log()
        try:
            # stdin stays open and unused: idp.mjs exits when it closes, so the IdP never
            # outlives this process even if it is killed without a chance to stop it.
            self._process = await asyncio.create_subprocess_exec(
                node, str(SERVER_SCRIPT), str(self.config_path),
                stdin=asyncio.subprocess.PIPE, stdout=log_file, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise IdpStartError(f"cannot run {node}: {exc}") from exc
        finally:
            log_file.close()
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """SIGTERM the node process (by PID), SIGKILL it after a bound. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()

    def update_user(self, username: str, **changes: Any) -> None:
        """Change a user (any IdpUser field but username); the IdP reads it at its next lookup."""
        if "username" in changes:
            raise TypeError("a user's username cannot change")
        user = dataclasses.replace(self.users[username], **changes)
        self.users[username] = dataclasses.replace(user, groups=tuple(user.groups))
        self._write_users()

    async def end_sessions(self, username: str) -> tuple[BackchannelDelivery, ...]:
        """End the user's OP sessions; the IdP POSTs logout tokens to the clients they used."""
        url = f"{self.issuer}/-/control/logout"
        headers = {"Authorization": f"Bearer {self._control_token}"}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
                async with session.post(url, json={"username": username}, headers=headers) as response:
                    body = await response.text()
                    if response.status != 200:
                        raise IdpControlError(f"{url} answered {response.status}: {body[:500]}")
        except aiohttp.ClientError as exc:
            raise IdpControlError(f"{url} failed: {exc}") from exc
        return tuple(BackchannelDelivery(client_id=entry["client_id"], sid=entry["sid"],
                                         delivered=entry["delivered"], error=entry.get("error"))
                     for entry in json.loads(body)["backchannel"])

    def log_tail(self) -> str:
        """The end of the IdP's output (for error messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return ""

    def _write_files(self, node_modules: Path) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_users()
        _write_json_atomically(self.config_path, {
            "host": self.host,
            "port": self.port,
            "issuer": self.issuer,
            "node_modules": str(node_modules),
            "users_file": str(self.users_path),
            "keys_file": str(self.keys_path),
            "control_token": self._control_token,
            "exit_with_parent": True,
            "pwd_acr": self.pwd_acr,
            "mfa_acr": self.mfa_acr,
            "ttl": dict(self.ttl),
            "clients": [client.to_json() for client in self.clients],
            "services": [service.to_json() for service in self.services],
            "resources": [resource.to_json() for resource in self.resources],
        })

    def _write_users(self) -> None:
        _write_json_atomically(self.users_path, {name: user.to_json() for name, user in self.users.items()})

    def _open_log(self) -> IO[bytes]:
        return open(self.log_path, "ab")  # handed to the child; start() closes our copy

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                process = self._process
                if process is None or process.returncode is not None:
                    code = process.returncode if process else None
                    raise IdpStartError(f"the demo IdP exited with code {code} before it was ready:\n"
                                        f"{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(self.discovery_url) as response:
                        if response.status == 200 and (await response.json()).get("issuer") == self.issuer:
                            return
                if loop.time() > deadline:
                    raise IdpStartError(f"the demo IdP did not answer {self.discovery_url} within "
                                        f"{self.start_timeout:g} s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
