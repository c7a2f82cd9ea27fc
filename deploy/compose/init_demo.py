"""The compose demo's one-shot setup: the secrets, keys and OpenID Provider files it shares.

The ``init`` service of compose.yaml runs this (in the ztproxy image) before anything else
starts, with the ``demo-state`` volume as STATE_DIR::

    python init_demo.py STATE_DIR

It writes, keeping what an earlier run made (so sign-ins, keys and bob's authenticator
survive ``docker compose down`` / ``up`` until the volume is removed):

- ``cookie-secret``, ``bob-totp-secret``, ``carol-totp-secret``: as ``ztproxy demo`` does
  (``ztproxy.demo.scenario``);
- ``oidc-client-secret``: the secret the IdP and ztproxy share for the ``ztproxy-demo`` client;
- ``assertion-keys/``: the keys signing identity assertions (``ztproxy keys rotate``: a first
  key, a new one once a week, expired ones removed);
- ``idp/idp-config.json`` and ``idp/idp-users.json``: the demo OpenID Provider's configuration
  (``ztproxy/demo_idp/idp.mjs`` reads it) with the same users as ``ztproxy demo``.

Then it prints where to go and how to sign in. Every file is written for the owner only; every
container of the stack runs as the image's user (10001).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ztproxy import cli
from ztproxy.demo import scenario
from ztproxy.demo_idp import DEFAULT_MFA_ACR, DEFAULT_PWD_ACR, DEFAULT_TTL, IdpClient

# How the browser and the containers reach each service: *.localhost names resolve to the
# loopback in browsers, and compose.yaml gives the same names to the services inside the network.
PUBLIC_URL = "http://ztproxy.localhost:8080"
ISSUER = "http://idp.localhost:9000"
IDP_PORT = 9000
# Where the IdP image (deploy/compose/idp/Dockerfile) installed its npm packages.
IDP_NODE_MODULES = "/opt/idp/node_modules"
_CLIENT_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


def _write_json(path: Path, data: Any) -> None:
    scenario.write_private(path, json.dumps(data, indent=2) + "\n")


def idp_config(state_dir: Path, client_secret: str) -> dict[str, Any]:
    """What idp.mjs reads: the keys DemoIdp writes, for a server inside a container."""
    idp_dir = state_dir / "idp"
    client = IdpClient(
        client_id=scenario.CLIENT_ID, client_secret=client_secret,
        redirect_uris=(f"{PUBLIC_URL}/.ztproxy/callback",),
        post_logout_redirect_uris=(f"{PUBLIC_URL}/.ztproxy/signed-out",),
        backchannel_logout_uri=f"{PUBLIC_URL}/.ztproxy/backchannel-logout")
    return {
        # Every interface of its container: the browser comes through the published port.
        "host": "0.0.0.0",
        "port": IDP_PORT,
        "issuer": ISSUER,
        "node_modules": IDP_NODE_MODULES,
        "users_file": str(idp_dir / "idp-users.json"),
        "keys_file": str(idp_dir / "idp-keys.json"),
        # Nobody calls the control endpoint in this stack: a fresh random token at each start.
        "control_token": secrets.token_urlsafe(32),
        # A container's stdin is closed: idp.mjs must not take that as its launcher leaving.
        "exit_with_parent": False,
        "pwd_acr": DEFAULT_PWD_ACR,
        "mfa_acr": DEFAULT_MFA_ACR,
        "ttl": dict(DEFAULT_TTL),
        "clients": [client.to_json()],
    }


def prepare(state_dir: Path) -> scenario.DemoState:
    """Write (or keep) the secrets and the IdP's files; raises OSError."""
    state = scenario.prepare_state(state_dir)
    # Kept like the demo's other secrets (scenario keeps a secret file that is well-formed).
    client_secret = scenario._kept_secret(state_dir / "oidc-client-secret", _CLIENT_SECRET,
                                          secrets.token_urlsafe(32))
    idp_dir = state_dir / "idp"
    idp_dir.mkdir(mode=0o700, exist_ok=True)
    users = scenario.idp_users(state.totp_secret, state.carol_totp_secret)
    _write_json(idp_dir / "idp-users.json", {user.username: user.to_json() for user in users})
    _write_json(idp_dir / "idp-config.json", idp_config(state_dir, client_secret))
    return state


def banner(state: scenario.DemoState) -> str:
    secret = state.totp_secret
    return f"""
  ztproxy compose demo: open {PUBLIC_URL}/ once the stack is up

    {PUBLIC_URL}/app       employees (alice / alice, bob / bob)
    {PUBLIC_URL}/payroll   payroll group with a second factor: bob, with his one-time code
    {PUBLIC_URL}/ledger    employees, while an approver grants them access: bob asks for it,
                           carol (carol / carol, with her code) approves at {PUBLIC_URL}/.ztproxy/access/
    {PUBLIC_URL}/.ztproxy/logout

  bob's TOTP secret  {secret}
    (an authenticator app, or: oathtool --totp -b {secret})
    as URI  {scenario.otpauth_uri(secret, "bob")}
  carol's TOTP secret  {state.carol_totp_secret}   (oathtool --totp -b {state.carol_totp_secret})
  The OpenID Provider: {ISSUER}
"""


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python init_demo.py STATE_DIR", file=sys.stderr)
        return 2
    os.umask(0o077)
    try:
        state = prepare(Path(argv[0]))
    except OSError as exc:
        print(f"init_demo: cannot write the demo's state in {argv[0]}: {exc}", file=sys.stderr)
        return 1
    # The same command ops run to rotate keys; it says what it added or removed (or why it failed).
    if cli.main(["keys", "rotate", "--dir", str(state.keys_dir)]) != 0:
        return 1
    print(banner(state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
