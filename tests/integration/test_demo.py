"""``ztproxy demo`` as a newcomer meets it: one process, sign-in, step-up, the identity the app sees.

The demo runs as its own process (``python -m ztproxy.demo``, what ``ztproxy demo`` calls) on a
free port with a temporary state directory; ``UserAgent`` plays the browser. The demo is stopped
with SIGTERM or SIGINT (Ctrl+C), and its OpenID Provider (a ``node`` child) must be gone with it.
"""

from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.conftest import REPO, free_port
from tests.support.user_agent import Form, Response, UserAgent
from ztproxy.verify.testing import TestIssuer

pytestmark = pytest.mark.integration

READY_LINE = "Ctrl+C to stop."
START_TIMEOUT = 20.0


@dataclass
class RunningDemo:
    process: subprocess.Popen[bytes]
    url: str
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(encoding="utf-8", errors="replace")

    def banner_value(self, pattern: str) -> str:
        match = re.search(pattern, self.output())
        assert match is not None, f"{pattern!r} not in the banner:\n{self.output()}"
        return match.group(1)

    @property
    def totp_secret(self) -> str:
        return self.banner_value(r"secret\s+([A-Z2-7]{32})\s")

    @property
    def app_url(self) -> str:
        return self.banner_value(r"sample app (http://127\.0\.0\.1:\d+)")


def _start(tmp_path: Path, state_dir: Path, port: int, env: dict[str, str] | None = None) -> RunningDemo:
    output_path = tmp_path / f"demo-{time.monotonic_ns()}.log"
    with open(output_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "ztproxy.demo", "--port", str(port), "--state-dir", str(state_dir)],
            stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return RunningDemo(process=process, url=f"http://127.0.0.1:{port}", output_path=output_path)


def _wait_ready(demo: RunningDemo) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while READY_LINE not in demo.output():
        assert demo.process.poll() is None, f"the demo exited with {demo.process.returncode}:\n{demo.output()}"
        assert time.monotonic() < deadline, f"the demo did not start:\n{demo.output()}"
        time.sleep(0.05)


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(entry.name)] = command
    return found


def _is_running(pid: int, command: str) -> bool:
    """``pid`` still runs ``command`` (a reused pid running something else does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        current = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat[0] != "Z" and current == command


def _stop(demo: RunningDemo, signum: int = signal.SIGTERM) -> int:
    if demo.process.poll() is None:
        demo.process.send_signal(signum)
    try:
        return demo.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        demo.process.kill()
        demo.process.wait()
        raise


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[list[RunningDemo]]:
    """Demos started by the test; any still running at the end is stopped by PID."""
    started: list[RunningDemo] = []
    yield started
    for demo in started:
        if demo.process.poll() is None:
            _stop(demo)


def row(page: Response, name: str) -> str | None:
    """The value shown next to ``name`` in the app page's tables (a claim or a header)."""
    match = re.search(rf"<tr><th><code>{re.escape(name)}</code></th><td>(.*?)</td></tr>", page.text)
    return html.unescape(match.group(1)) if match else None


def _only_form(page: Response) -> Form:
    forms = page.forms()
    assert len(forms) == 1, page.text[:1000]
    return forms[0]


async def test_sign_in_step_up_and_the_identity_the_app_receives(tmp_path: Path,
                                                                 start_demo: list[RunningDemo]) -> None:
    state_dir = tmp_path / "state"
    demo = _start(tmp_path, state_dir, free_port())
    start_demo.append(demo)
    _wait_ready(demo)
    url, secret = demo.url, demo.totp_secret
    assert f"open {url}/" in demo.output()
    assert f"otpauth://totp/ztproxy%20demo:bob?secret={secret}&issuer=ztproxy%20demo" in demo.output()

    async with UserAgent() as ua:
        portal = await ua.navigate(url + "/")
        assert portal.status == 200 and secret in portal.text  # the portal is public
        assert "No assertion" in portal.text

        # alice, an employee: in at /app; the app verifies the assertion and shows who she is.
        page = await ua.login(url + "/app", "alice", "alice")
        assert page.status == 200 and page.url == url + "/app", page.text[:500]
        assert "Verified." in page.text, page.text
        assert row(page, "email") == "alice@corp.example"
        assert row(page, "groups") == "employees"
        assert row(page, "acr") == "urn:ztproxy:pwd"
        assert row(page, "amr") == "pwd"
        assert row(page, "iss") == url and row(page, "aud") == url
        assert row(page, "X-Ztproxy-Email") == "alice@corp.example"
        assert row(page, "X-Ztproxy-Groups") == "employees"

        # ... but not in payroll: the deny page, no second factor asked.
        denied = await ua.navigate(url + "/payroll")
        assert denied.status == 403
        assert "not in a group this application requires" in denied.text

        # Sign out: ztproxy's confirmation page, then the IdP's, then back at the proxy.
        confirm = await ua.navigate(url + "/.ztproxy/logout")
        at_idp = await ua.submit(_only_form(confirm))
        assert at_idp.url.startswith("http://localhost:")
        signed_out = await ua.submit(_only_form(at_idp), button="logout")
        assert signed_out.status == 200 and signed_out.url == url + "/.ztproxy/signed-out"
        again = await ua.get(url + "/app")
        assert again.status == 302 and (again.location or "").startswith("http://localhost:")

    async with UserAgent() as ua:
        # bob signs in with his password; /payroll sends him back to the IdP for a second factor
        # within 10 minutes (step-up), and lets him in once he has given his one-time code.
        page = await ua.login(url + "/app", "bob", "bob")
        assert page.status == 200 and row(page, "acr") == "urn:ztproxy:pwd"
        step_up = await ua.get(url + "/payroll")
        assert step_up.status == 302 and step_up.location is not None
        params = parse_qs(urlsplit(step_up.location).query)
        # His password is seconds old: only the second factor is asked for, not the password again.
        assert params["acr_values"] == ["urn:ztproxy:mfa"] and "prompt" not in params
        before_step_up = len(ua.history)
        payroll = await ua.login(url + "/payroll", "bob", "bob", secret)
        assert any(response.form("code") is not None for response in ua.history[before_step_up:])
        assert not any(response.form("password") is not None for response in ua.history[before_step_up:])
        assert payroll.status == 200 and payroll.url == url + "/payroll", payroll.text[:500]
        assert "Verified." in payroll.text
        assert row(payroll, "email") == "bob@corp.example"
        assert row(payroll, "groups") == "employees, payroll"
        assert row(payroll, "acr") == "urn:ztproxy:mfa"
        assert "otp" in (row(payroll, "amr") or "").split(", ")

    children = _children(demo.process.pid)
    idp = [(pid, command) for pid, command in children.items() if "idp.mjs" in command]
    assert idp, children
    assert _stop(demo) == 0
    assert "ztproxy demo: stopping" in demo.output()
    assert not [pid for pid, command in children.items() if _is_running(pid, command)]
    with pytest.raises(OSError):  # the proxy's port is closed
        socket.create_connection(("127.0.0.1", int(url.rpartition(":")[2])), timeout=1).close()

    # A restart keeps bob's TOTP secret and the assertion signing key.
    keys = sorted((state_dir / "assertion-keys").iterdir())
    again = _start(tmp_path, state_dir, free_port())
    start_demo.append(again)
    _wait_ready(again)
    assert again.totp_secret == secret
    assert sorted((state_dir / "assertion-keys").iterdir()) == keys
    children = _children(again.process.pid)
    assert _stop(again, signal.SIGINT) == 0  # Ctrl+C
    assert not [pid for pid, command in children.items() if _is_running(pid, command)]


async def test_the_app_refuses_a_forged_assertion(tmp_path: Path, start_demo: list[RunningDemo]) -> None:
    demo = _start(tmp_path, tmp_path / "state", free_port())
    start_demo.append(demo)
    _wait_ready(demo)
    # Reaching the app directly, around the proxy, with a token signed by a key the proxy never had.
    forger = TestIssuer(issuer=demo.url, audience=demo.url)
    token = forger.mint(sub="mallory", email="mallory@evil.example", groups=["payroll"])
    async with UserAgent() as ua:
        async with ua.session.get(demo.app_url + "/payroll",
                                  headers={"X-Ztproxy-Jwt-Assertion": token}) as response:
            page = await response.text()
    assert "Refused:" in page
    assert "Verified." not in page
    assert "mallory@evil.example" not in page

    # Through the proxy, a client's own X-Ztproxy-* headers never reach the app.
    async with UserAgent() as ua:
        async with ua.session.get(demo.url + "/", headers={"X-Ztproxy-Email": "mallory@evil.example"}) as response:
            page = await response.text()
    assert response.status == 200
    assert "mallory@evil.example" not in page


async def test_a_service_calls_the_api_with_the_token_the_banner_shows_how_to_get(
        tmp_path: Path, start_demo: list[RunningDemo]) -> None:
    demo = _start(tmp_path, tmp_path / "state", free_port())
    start_demo.append(demo)
    _wait_ready(demo)
    banner = demo.output()
    # The banner's two commands, done as they say: client credentials at the IdP, then /api.
    get_token = next(line.strip() for line in banner.splitlines() if line.strip().startswith("TOKEN=$(curl"))
    token_url = re.search(r" (http://\S+/token) ", get_token)
    assert token_url is not None and "-u reports-bot:reports-bot" in get_token, get_token
    assert f'curl -H "Authorization: Bearer $TOKEN" {demo.url}/api/reports' in banner
    form = {"grant_type": "client_credentials", "scope": "reports.read", "resource": demo.url}
    async with UserAgent() as ua:
        headers = {"Authorization": aiohttp.encode_basic_auth("reports-bot", "reports-bot")}
        async with ua.session.post(token_url.group(1), data=form, headers=headers) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["access_token"]
        async with ua.session.get(demo.url + "/api/reports", headers={"Authorization": f"Bearer {token}"}) as api:
            assert api.status == 200
            assert await api.json() == {"path": "/api/reports", "called_by": "reports-bot", "caller": "service",
                                        "client_id": "reports-bot", "scopes": ["reports.read"]}
        # Without the token, or as a person: refused by the proxy, the app never asked.
        async with ua.session.get(demo.url + "/api/reports", headers={"Accept": "application/json"}) as refused:
            assert refused.status == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="ztproxy"'


def _run_to_exit(tmp_path: Path, port: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    demo = _start(tmp_path, tmp_path / "state", port, env)
    try:
        code = demo.process.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(demo)
        raise
    return code, demo.output()


def test_without_node_the_demo_says_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    code, output = _run_to_exit(tmp_path, free_port(), env={"PATH": str(empty)})
    assert code == 1
    assert "Node.js" in output and "./dev demo" in output
    assert "Traceback" not in output


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = _run_to_exit(tmp_path, port)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port" in output
    assert "Traceback" not in output


async def test_bob_revoked_from_the_command_line_is_refused_at_his_next_request(
        tmp_path: Path, start_demo: list[RunningDemo]) -> None:
    """`ztproxy demo --revoke bob`: the demo's transmitter pushes a session-revoked through the
    proxy's real receiver (/.ztproxy/ssf/events), and bob's next request is refused."""
    state_dir = tmp_path / "state"
    demo = _start(tmp_path, state_dir, free_port())
    start_demo.append(demo)
    _wait_ready(demo)
    url = demo.url
    assert f"ztproxy demo --revoke bob --state-dir {state_dir}" in demo.output()
    async with UserAgent() as bob, UserAgent() as alice:
        assert (await bob.login(url + "/app", "bob", "bob")).status == 200
        assert (await alice.login(url + "/app", "alice", "alice")).status == 200
        deadline = time.monotonic() + START_TIMEOUT  # the stream is set up just after the proxy starts
        while True:
            revoked = subprocess.run([sys.executable, "-m", "ztproxy.demo", "--revoke", "bob", "--state-dir",
                                      str(state_dir)], capture_output=True, text=True, cwd=REPO, timeout=30)
            if revoked.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert revoked.returncode == 0, revoked.stderr
        assert "ztproxy answered 202" in revoked.stdout
        refused = await bob.get(url + "/app")
        assert refused.status == 302 and (refused.location or "").startswith("http://localhost:")  # to sign in
        assert (await alice.get(url + "/app")).status == 200  # nobody else
    unknown = subprocess.run([sys.executable, "-m", "ztproxy.demo", "--revoke", "mallory", "--state-dir",
                              str(state_dir)], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert unknown.returncode == 2 and "no demo user 'mallory'" in unknown.stderr
