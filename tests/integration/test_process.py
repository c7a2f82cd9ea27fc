"""``ztproxy`` as ops run it: CLI, logs, admin listener, workers, TLS, SIGTERM drain, demo."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import REPO, ProxyProcess, UpstreamFactory, free_port, wait_ready

pytestmark = pytest.mark.integration

StartProcess = Callable[..., ProxyProcess]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ztproxy", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=60)


def process_yaml(upstream_url: str, *, extra_server: str = "", allow: str = "[{public: true}]",
                 port: int | None = None) -> str:
    return f"""
server:
  listen: 127.0.0.1:{port or free_port()}
  admin_listen: 127.0.0.1:{free_port()}
  shutdown_grace: 10s
{extra_server}
routes:
  - name: app
    upstream: {upstream_url}
    allow: {allow}
"""


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("ztproxy ")


def test_check_reports_every_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  listen: nowhere\n  shutdown_grace: 15x\nroutes:\n"
                   "  - name: a\n    upstream: ftp://x\n  - name: a\n    upstream: http://127.0.0.1:1\n"
                   "    colour: blue\n")
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    for expected in ("server.listen", "server.shutdown_grace", "routes[0].upstream", "duplicate route name",
                     "routes[1]", "colour"):
        assert expected in result.stderr, expected
    assert "Traceback" not in result.stderr


def test_check_accepts_the_example_and_uses_env_config(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(REPO / "config" / "example.yaml"),
                     env={"ZTPROXY_EXAMPLE_UPSTREAM": "http://127.0.0.1:8000"})
    assert result.returncode == 0, result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("routes:\n  - {name: a, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}\n")
    result = run_cli("check", env={"ZTPROXY_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr
    missing = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr


async def test_access_log_is_one_json_event_per_request(start_upstream: UpstreamFactory,
                                                        proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    proxy = proxy_process(process_yaml(upstream.url))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/hello?x=1") as response:
            request_id = response.headers["X-Request-Id"]
            body = await response.read()
    await asyncio.sleep(0.3)
    events = [json.loads(line) for line in proxy.log_lines() if line.startswith("{")]
    access = [e for e in events if e.get("event") == "access"]
    assert len(access) == 1
    event = access[0]
    assert event["request_id"] == request_id
    assert event["client"] == "127.0.0.1"
    assert event["method"] == "GET"
    assert event["path"] == "/hello"
    assert event["route"] == "app"
    assert event["status"] == 200
    assert len(body) < event["bytes"] < len(body) + 1024  # bytes on the wire, headers included
    assert event["duration_ms"] >= 0
    assert event["host"].startswith("127.0.0.1")
    # The documented order (docs/operations.md), whatever renders the line.
    assert list(event) == ["request_id", "client", "method", "host", "path", "route", "decision", "status", "bytes",
                           "duration_ms", "event", "level", "timestamp"]


async def test_sigterm_drains_in_flight_requests_and_exits_0(start_upstream: UpstreamFactory,
                                                             proxy_process: StartProcess) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 10)
        return web.Response(text="finished")

    upstream = await start_upstream(slow)
    proxy = proxy_process(process_yaml(upstream.url))
    async with aiohttp.ClientSession() as client:
        in_flight = asyncio.create_task(client.get(f"{proxy.url}/slow"))
        while not upstream.requests:
            await asyncio.sleep(0.02)
        proxy.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # Draining: readiness fails and new connections are refused...
        with pytest.raises(OSError):
            await asyncio.to_thread(urllib.request.urlopen, f"{proxy.admin_url}/readyz", timeout=1)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(f"{proxy.url}/new")
        # ...while the request already in flight completes.
        release.set()
        response = await in_flight
        assert response.status == 200
        assert await response.text() == "finished"
    assert await asyncio.to_thread(proxy.process.wait, 15) == 0


async def test_workers_share_the_port_and_crashed_workers_restart(start_upstream: UpstreamFactory,
                                                                  proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    proxy = proxy_process(process_yaml(upstream.url), "--workers", "2")
    children = _children(proxy.process.pid)
    assert len(children) == 2
    async with aiohttp.ClientSession() as client:
        for _ in range(20):
            async with client.get(f"{proxy.url}/", headers={"Connection": "close"}) as response:
                assert response.status == 200
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = _children(proxy.process.pid)
            if len(now) == 2 and children[0] not in now:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("killed worker was not restarted")
        await asyncio.to_thread(wait_ready, proxy.admin_url, proxy.process)
        for _ in range(20):
            async with client.get(f"{proxy.url}/", headers={"Connection": "close"}) as response:
                assert response.status == 200
    proxy.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proxy.process.wait, 20) == 0
    assert not [pid for pid in children[1:] if Path(f"/proc/{pid}").exists()]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _make_cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ztproxy test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


async def test_tls_listener(tmp_path: Path, start_upstream: UpstreamFactory,
                            proxy_process: StartProcess) -> None:
    ca_path, cert_path, key_path = _make_cert(tmp_path)
    upstream = await start_upstream()
    port = free_port()
    yaml_text = process_yaml(upstream.url, port=port,
                             extra_server=f"  tls: {{cert_file: {cert_path}, key_file: {key_path}}}")
    proxy = proxy_process(yaml_text)
    assert proxy.url.startswith("https://")
    context = ssl.create_default_context(cafile=str(ca_path))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"https://localhost:{port}/", ssl=context) as response:
            assert response.status == 200
            data = await response.json()
    assert ["X-Forwarded-Proto", "https"] in data["headers"]
    # A client that does not trust the CA refuses the connection.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with aiohttp.ClientSession() as client:
            await client.get(f"https://localhost:{port}/", ssl=ssl.create_default_context())


def test_run_without_config_is_a_clear_error() -> None:
    result = run_cli("run", env={"ZTPROXY_CONFIG": ""})
    assert result.returncode == 2
    assert "pass -c FILE" in result.stderr
