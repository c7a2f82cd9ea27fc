"""Test fixtures: the demo OpenID Provider (``ztproxy.demo_idp``, npm oidc-provider) on loopback.

- ``start_idp``: a factory ``await start_idp(clients=[...], users=[...], ttl={...})`` -> DemoIdp,
  started on a free loopback port and stopped (by PID) at teardown;
- ``ALICE`` (password only, group employees) and ``BOB`` (employees + payroll, with TOTP): the
  default users; ``DEFAULT_USERS`` is both. ``CAROL`` (employees + payroll-leads, with TOTP)
  approves access requests where a test adds her.

Every IdP of a test run starts with the same signing keys (generated once), which keeps starts fast.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import pytest

from tests.conftest import free_port
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService, IdpUser

ALICE_PASSWORD = "alice-demo-password"
BOB_PASSWORD = "bob-demo-password"
BOB_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # base32, as authenticator apps take it
CAROL_PASSWORD = "carol-demo-password"
CAROL_TOTP_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"

ALICE = IdpUser(username="alice", password=ALICE_PASSWORD, email="alice@corp.example", name="Alice Example",
                groups=("employees",))
BOB = IdpUser(username="bob", password=BOB_PASSWORD, email="bob@corp.example", name="Bob Example",
              groups=("employees", "payroll"), totp_secret=BOB_TOTP_SECRET)
# Carol approves payroll's access requests (just-in-time access); not among the default users.
CAROL = IdpUser(username="carol", password=CAROL_PASSWORD, email="carol@corp.example", name="Carol Example",
                groups=("employees", "payroll-leads"), totp_secret=CAROL_TOTP_SECRET)
DEFAULT_USERS = (ALICE, BOB)

IdpFactory = Callable[..., Awaitable[DemoIdp]]


@pytest.fixture(scope="session")
def idp_signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the first IdP's signing keys are kept, so later ones skip generating RSA keys."""
    return tmp_path_factory.mktemp("idp-keys") / "keys.json"


@pytest.fixture
async def start_idp(tmp_path: Path, idp_signing_keys: Path) -> AsyncIterator[IdpFactory]:
    """Start demo IdPs for this test; each gets its own work directory and port."""
    started: list[DemoIdp] = []

    async def start(*, clients: Sequence[IdpClient], users: Sequence[IdpUser] = DEFAULT_USERS,
                    ttl: Mapping[str, int] | None = None, port: int | None = None,
                    public_port: int | None = None, services: Sequence[IdpService] = (),
                    resources: Sequence[IdpResource] = ()) -> DemoIdp:
        workdir = tmp_path / f"idp-{len(started)}"
        idp = DemoIdp(workdir=workdir, port=port or free_port(), clients=clients, users=users, ttl=ttl,
                      public_port=public_port, services=services, resources=resources)
        workdir.mkdir(parents=True)
        if idp_signing_keys.exists():
            shutil.copyfile(idp_signing_keys, idp.keys_path)
        started.append(idp)
        await idp.start()
        if not idp_signing_keys.exists():
            shutil.copyfile(idp.keys_path, idp_signing_keys)
        return idp

    yield start
    for idp in started:
        await idp.stop()
