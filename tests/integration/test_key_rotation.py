"""Key rotation end to end: two proxy processes share a key directory; apps never fail to verify."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, UpstreamFactory, free_port
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.integration.test_process import StartProcess
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import IdpClient
from ztproxy.verify import AssertionInvalid, Verifier


def keys(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "ztproxy", "keys", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=60, check=True)
    return result.stdout


async def test_rotation_across_two_proxies_without_a_verification_failure(
        tmp_path: Path, start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
        redis_factory: RedisFactory) -> None:
    upstream = await start_upstream()
    redis = redis_factory.start()
    key_dir = tmp_path / "keys"
    keys("generate", "--dir", str(key_dir))
    ports = [free_port(), free_port()]
    public = f"http://127.0.0.1:{ports[0]}"  # replicas behind one name: one issuer, one audience
    idp = await start_idp(clients=[IdpClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                             redirect_uris=(f"{public}/.ztproxy/callback",))])
    for port in ports:
        proxy_process(f"""
server: {{listen: 127.0.0.1:{port}, public_url: '{public}', admin_listen: 127.0.0.1:{free_port()}}}
identity_providers:
  - {{name: demo, issuer: '{idp.issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
sessions:
  store: '{redis.url}'
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
assertion: {{keys_dir: '{key_dir}', ttl: 5s, publish_before_use: 1s, verifier_leeway: 2s}}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
""")
    proxies = [f"http://127.0.0.1:{port}" for port in ports]  # each replica, by its own address
    verifier = Verifier(issuer=public, audience=public, jwks_url=f"{public}/.well-known/ztproxy/jwks.json")
    kids: set[str] = set()
    last: dict[str, str] = {}
    failures: list[str] = []
    async with UserAgent() as agent:
        assert (await agent.login(public + "/x", "alice", ALICE_PASSWORD)).status == 200
        rotated = False
        started = time.monotonic()
        # Long enough for both processes to re-read the directory (every 5s) and switch keys.
        while time.monotonic() - started < 9:
            if not rotated and time.monotonic() - started > 1:
                await asyncio.to_thread(keys, "rotate", "--dir", str(key_dir), "--force")
                rotated = True
            for proxy in proxies:
                async with agent.session.get(proxy + "/x", headers={"Accept": "application/json"}) as response:
                    assert response.status == 200
                    headers = dict((await response.json())["headers"])
                token = headers["X-Ztproxy-Jwt-Assertion"]
                try:
                    await verifier.averify(token)
                except AssertionInvalid as exc:
                    failures.append(f"{proxy}: {exc}")
                kids.add(_kid(token))
                last[proxy] = _kid(token)
            await asyncio.sleep(0.1)
    assert failures == []
    assert len(kids) == 2, kids
    assert len(set(last.values())) == 1 and len(last) == 2  # both proxies moved to the new key


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])
