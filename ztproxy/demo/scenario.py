"""What ``ztproxy demo`` runs: its users, its state directory and the proxy's configuration.

The state directory (``--state-dir``, default ``$XDG_STATE_HOME/ztproxy-demo`` or
``~/.local/state/ztproxy-demo``) keeps what should survive a restart:

- ``cookie-secret``: seals the proxy's login-state cookies (a sign-in under way survives);
- ``bob-totp-secret``: bob's second factor, so an authenticator app set up once keeps working;
- ``carol-totp-secret``: carol's, who approves access requests to /ledger (just-in-time access);
- ``assertion-keys/``: the keys signing ``X-Ztproxy-Jwt-Assertion`` (the proxy creates the first);
- ``idp/``: the demo OpenID Provider's configuration, users, signing keys and log;
- ``ztproxy.yaml``: the configuration the proxy runs, written at each start, to read;
- ``signals.json``: where the demo's security-signals transmitter listens, for ``--revoke``.

Sessions are in memory (``sessions.store: memory``): a restart signs everyone out.
Deleting the directory starts the demo afresh.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from ztproxy.demo.sample_app import DemoGuide, DemoUser
from ztproxy.demo_idp import IdpResource, IdpService, IdpUser

DEMO_HOST = "127.0.0.1"
CLIENT_ID = "ztproxy-demo"
TOTP_ISSUER = "ztproxy demo"
MAX_AUTH_AGE = "10m"  # how recent bob's sign-in with a second factor must be for /payroll
# A service calling /api with an access token (client credentials). Its secret is as public as
# alice's password: the demo's OpenID Provider listens on loopback only.
SERVICE = IdpService(client_id="reports-bot", client_secret="reports-bot", scopes=("reports.read",))
API_SCOPE = "reports.read"
_HEX_SECRET = re.compile(r"[0-9a-f]{64}")
_BASE32_SECRET = re.compile(r"[A-Z2-7]{32}")


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/ztproxy-demo``, else ``~/.local/state/ztproxy-demo`` (XDG Base Directory)."""
    base = env.get("XDG_STATE_HOME") or ""
    # XDG Base Directory spec: a relative path in $XDG_STATE_HOME is invalid and is ignored.
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "ztproxy-demo"


def write_private(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)


def _kept_secret(path: Path, pattern: re.Pattern[str], make: str) -> str:
    """The secret stored in ``path``; a new one (``make``) when the file is missing or unusable."""
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    if pattern.fullmatch(stored):
        return stored
    write_private(path, make + "\n")
    return make


@dataclass(frozen=True)
class DemoState:
    directory: Path
    cookie_secret: str
    totp_secret: str
    carol_totp_secret: str | None = None

    @property
    def idp_dir(self) -> Path:
        return self.directory / "idp"

    @property
    def keys_dir(self) -> Path:
        return self.directory / "assertion-keys"

    @property
    def config_path(self) -> Path:
        return self.directory / "ztproxy.yaml"


def prepare_state(directory: Path) -> DemoState:
    """Create the directory (owner only) and its secrets, or read the ones kept. Raises OSError."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cookie_secret = _kept_secret(directory / "cookie-secret", _HEX_SECRET, secrets.token_hex(32))
    # RFC 4226 4: a shared secret of at least 128 bits, 160 recommended; base32 for authenticator apps.
    totp_secret = _kept_secret(directory / "bob-totp-secret", _BASE32_SECRET,
                               base64.b32encode(secrets.token_bytes(20)).decode("ascii"))
    carol_totp_secret = _kept_secret(directory / "carol-totp-secret", _BASE32_SECRET,
                                     base64.b32encode(secrets.token_bytes(20)).decode("ascii"))
    return DemoState(directory=directory, cookie_secret=cookie_secret, totp_secret=totp_secret,
                     carol_totp_secret=carol_totp_secret)


def otpauth_uri(secret: str, account: str) -> str:
    """The Key Uri Format authenticator apps import (otpauth://totp/ISSUER:ACCOUNT?secret=...)."""
    label = quote(f"{TOTP_ISSUER}:{account}", safe=":")
    return f"otpauth://totp/{label}?{urlencode({'secret': secret, 'issuer': TOTP_ISSUER}, quote_via=quote)}"


def idp_users(totp_secret: str, carol_totp_secret: str | None = None) -> tuple[IdpUser, ...]:
    """alice and bob; with her secret, carol too, who approves access requests to /ledger."""
    carol = () if carol_totp_secret is None else (
        IdpUser(username="carol", password="carol", email="carol@corp.example", name="Carol Example",
                groups=("employees", "payroll-leads"), totp_secret=carol_totp_secret),)
    return (
        IdpUser(username="alice", password="alice", email="alice@corp.example", name="Alice Example",
                groups=("employees",)),
        IdpUser(username="bob", password="bob", email="bob@corp.example", name="Bob Example",
                groups=("employees", "payroll"), totp_secret=totp_secret),
        *carol,
    )


def api_resource(url: str) -> IdpResource:
    """The access tokens for /api: JWTs whose audience is the route's (its origin, the proxy's URL)."""
    return IdpResource(indicator=url, scopes=(API_SCOPE,))


def service_commands(url: str, issuer: str) -> tuple[str, str]:
    """The two shell commands of the tour: get a token as reports-bot, call /api with it."""
    get_token = (f"TOKEN=$(curl -s -u {SERVICE.client_id}:{SERVICE.client_secret} -d grant_type=client_credentials "
                 f"-d scope={API_SCOPE} -d resource={url} {issuer}/token "
                 "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")
    call = f'curl -H "Authorization: Bearer $TOKEN" {url}/api/reports'
    return get_token, call


def guide(users: tuple[IdpUser, ...], totp_secret: str) -> DemoGuide:
    return DemoGuide(
        users=[DemoUser(username=user.username, password=user.password, groups=user.groups,
                        second_factor="TOTP (authenticator app)" if user.totp_secret else None)
               for user in users],
        totp_secret=totp_secret, otpauth_uri=otpauth_uri(totp_secret, "bob"))


def _yaml_string(value: str) -> str:
    # A JSON string is a YAML scalar; "$${" keeps the loader from reading "${" as a variable.
    return json.dumps(value).replace("${", "$${")


def proxy_config_text(*, port: int, app_url: str, issuer: str, mfa_acr: str, client_secret: str,
                      state: DemoState, log_format: str, signals: str = "") -> str:
    """The demo's configuration: one host, path routes, sign-in at the demo IdP."""
    upstream = _yaml_string(app_url)
    return f"""\
# Written by `ztproxy demo` at each start, for reading: the IdP and the sample app it names
# run only while the demo does.
server:
  listen: {DEMO_HOST}:{port}
  public_url: http://{DEMO_HOST}:{port}
  admin_listen: null
  shutdown_grace: 2s
logging:
  format: {log_format}
identity_providers:
  - name: demo
    issuer: {_yaml_string(issuer)}
    client_id: {CLIENT_ID}
    client_secret: {_yaml_string(client_secret)}
    scopes: [openid, email, profile, groups]
    mfa: {{acr_values: [{_yaml_string(mfa_acr)}]}}
sessions:
  store: memory
  cookie_secrets: [{_yaml_string(state.cookie_secret)}]
assertion:
  keys_dir: {_yaml_string(str(state.keys_dir))}
{signals}routes:
  - name: portal
    path: /
    upstream: {upstream}
    allow: [{{public: true}}]
  - name: app
    path: /app
    upstream: {upstream}
    allow:
      - groups: [employees]
  - name: payroll
    path: /payroll
    upstream: {upstream}
    allow:
      - groups: [payroll]
        mfa: true
        max_auth_age: {MAX_AUTH_AGE}
  - name: ledger
    path: /ledger
    upstream: {upstream}
    allow:
      - groups: [employees]
        grant: {{approvers: {{groups: [payroll-leads]}}, max_duration: 1h}}
  - name: api
    path: /api
    upstream: {upstream}
    allow:
      - clients: [{SERVICE.client_id}]
        scopes: [{API_SCOPE}]
"""
