"""The admin API and ``ztproxy sessions`` against real ``ztproxy run`` processes, real IdP and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import REPO, ProxyProcess, UpstreamFactory, free_port
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.integration.test_revocation import ADMIN_TOKEN, World, WorldFactory, until
from tests.integration.test_revocation import start_replicas as start_replicas  # the fixture
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.posture import PostureSigner
from tests.support.user_agent import UserAgent
from ztproxy.cli import main
from ztproxy.demo_idp import IdpClient
from ztproxy.sessions.manager import device_index

pytestmark = pytest.mark.integration

StartProcess = Callable[..., ProxyProcess]


def sessions_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ztproxy sessions ...`` as its own process."""
    return subprocess.run([sys.executable, "-m", "ztproxy", "sessions", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


async def sessions_main(*args: str) -> subprocess.CompletedProcess[str]:
    """The same command through ``ztproxy.cli.main`` in a thread: no interpreter start per call."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(["sessions", *args])

    code = await asyncio.to_thread(run)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


async def admin_status(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as client:
        async with client.get(url + "/admin/sessions?user=alice", headers=headers) as response:
            body = await response.json()
            assert "Traceback" not in json.dumps(body)
            return response.status, body


async def test_the_token_guards_the_admin_api_of_a_supervisor(start_replicas: WorldFactory) -> None:
    world = await start_replicas(workers=(2,))
    async with world.agent:
        url = world.signed_in_on.process.admin_url
        assert (await admin_status(url, {}))[0] == 401
        assert (await admin_status(url, {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}))[0] == 401
        assert (await admin_status(url, {"Authorization": "Bearer " + ADMIN_TOKEN[:-1]}))[0] == 401
        status, body = await admin_status(url, {"Authorization": "Bearer " + ADMIN_TOKEN})
        assert status == 200 and [s["handle"] for s in body["sessions"]] == [world.ticket().public_id]
        log = world.signed_in_on.process.log_path.read_text()
        assert "admin_token_refused" in log and ADMIN_TOKEN not in log
        world.redis.stop()
        status, body = await admin_status(url, {"Authorization": "Bearer " + ADMIN_TOKEN})
        assert (status, body["error"]) == (503, "session-store-unavailable")  # fail closed, said plainly


async def test_without_a_token_the_admin_api_is_off(start_upstream: UpstreamFactory,
                                                    proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    proxy = proxy_process(f"""
server: {{listen: 127.0.0.1:{free_port()}, admin_listen: 127.0.0.1:{free_port()}}}
identity_providers:
  - {{name: demo, issuer: 'https://idp.corp.example', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{public: true}}]}}
""")
    for headers in ({}, {"Authorization": "Bearer " + ADMIN_TOKEN}):
        status, body = await admin_status(proxy.admin_url, headers)
        assert (status, body["error"]) == (403, "admin-api-disabled")
        assert "server.admin_token_file" in body["message"]


async def test_one_process_with_memory_sessions_lists_and_revokes(start_idp: IdpFactory,
                                                                  start_upstream: UpstreamFactory,
                                                                  proxy_process: StartProcess,
                                                                  tmp_path: Path) -> None:
    # The admin listener and the proxy share the process's memory store.
    upstream = await start_upstream()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[IdpClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                             redirect_uris=(f"{url}/.ztproxy/callback",))])
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN)
    config = tmp_path / "memory.yaml"
    config.write_text(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{free_port()}, admin_token_file: {token_file}}}
identity_providers:
  - {{name: demo, issuer: '{idp.issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
sessions: {{cache_ttl: 60s}}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
""")
    proxy_process(config.read_text())
    async with UserAgent() as agent:
        assert (await agent.login(url + "/app", "alice", ALICE_PASSWORD)).status == 200
        listed = sessions_cli("list", "--user", "alice", "-c", str(config))
        assert listed.returncode == 0, listed.stderr
        (line,) = listed.stdout.splitlines()
        handle = line.split()[0]
        revoked = sessions_cli("revoke", "--session", handle, "-c", str(config))
        assert (revoked.returncode, revoked.stdout) == (0, "revoked 1 session\n"), revoked.stderr
        async with agent.session.get(url + "/app", headers={"Accept": "application/json"}) as response:
            assert response.status == 401  # at once, though its cache_ttl is a minute


async def test_the_cli_end_to_end(start_replicas: WorldFactory, tmp_path: Path,
                                  posture_signer: PostureSigner) -> None:
    key_file = tmp_path / "posture.pem"
    key_file.write_text(posture_signer.public_pem)
    world = await start_replicas(workers=(1, 1), extra=f"devices: {{signed: {{public_key_file: {key_file}}}}}")
    a, b = world.replicas
    config = str(a.config_path)
    async with world.agent:
        # A second session of alice, then a request from her laptop with the first one.
        async with UserAgent() as other:
            assert (await other.login(a.process.url + "/app", "alice", ALICE_PASSWORD)).status == 200
            second = [c.value for c in other.cookie_jar if c.key == "ztproxy_session"]
        laptop = {"X-Device-Posture": posture_signer.token("laptop-7"), "Accept": "application/json"}
        async with world.agent.session.get(b.process.url + "/app", headers=laptop) as response:
            assert response.status == 200
        await until(lambda: world.redis.command("EXISTS", device_index("laptop-7")) == 1,
                    "the device to be recorded (in the background)", bound=5)

        listed = sessions_cli("list", "--user", "alice", "-c", config, "--json")
        assert listed.returncode == 0, listed.stderr
        handles = {s["handle"] for s in json.loads(listed.stdout)["sessions"]}
        assert world.ticket().public_id in handles and len(handles) == 2

        by_device = await sessions_main("revoke", "--device", "laptop-7", "--admin-url", b.process.admin_url,
                                 "--token-file", str(tmp_path / "admin-token"))
        assert (by_device.returncode, by_device.stdout) == (0, "revoked 1 session\n"), by_device.stderr
        assert await denied(world, b.process.url)
        assert await denied(world, a.process.url)
        left = await sessions_main("list", "--user", "alice", "-c", config)
        assert left.returncode == 0 and len(left.stdout.splitlines()) == 1 and second

        by_user = await sessions_main("revoke", "--user", "alice", "-c", config)
        assert (by_user.returncode, by_user.stdout) == (0, "revoked 1 session\n")
        nothing = await sessions_main("list", "--user", "alice", "-c", config)
        assert nothing.stdout == "no live sessions for alice\n"

        gone = await sessions_main("revoke", "--session", world.ticket().public_id, "-c", config)
        assert gone.returncode == 1 and "No live session has the handle" in gone.stderr

    wrong = tmp_path / "wrong-token"
    wrong.write_text("y" * 40)
    refused = await sessions_main("list", "--user", "alice", "--admin-url", a.process.admin_url,
                                  "--token-file", str(wrong))
    assert refused.returncode == 1 and "The admin token is not valid" in refused.stderr
    no_token = await sessions_main("list", "--user", "alice", "--admin-url", a.process.admin_url)
    assert no_token.returncode == 2 and "no admin token" in no_token.stderr
    unreachable = await sessions_main("list", "--user", "alice", "--admin-url", f"http://127.0.0.1:{free_port()}",
                               "--token-file", str(wrong))
    assert unreachable.returncode == 1 and "cannot reach the admin API" in unreachable.stderr
    for output in (refused, no_token, unreachable):
        assert "Traceback" not in output.stderr


async def denied(world: World, url: str) -> bool:
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        async with world.agent.session.get(url + "/app", headers={"Accept": "application/json"}) as response:
            if response.status == 401:
                return True
        await asyncio.sleep(0.01)
    return False
