"""Starting and stopping the demo: the OpenID Provider, the sample app and ztproxy, on loopback.

Ports: the proxy on 127.0.0.1:PORT (``--port``, default 8080); the demo IdP and the sample
app on free loopback ports, printed in the banner (nobody needs to type them). Everything
runs in this process except the IdP (``node``), which is stopped by PID and also exits by
itself when this process goes away. SIGINT or SIGTERM stops all three; exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from ztproxy.app import build_app
from ztproxy.config import load
from ztproxy.demo import scenario
from ztproxy.demo.sample_app import build_sample_app
from ztproxy.demo.signals import revoke, start_transmitter
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpStartError, find_node_modules
from ztproxy.errors import ConfigError
from ztproxy.listener import ProxyRunner, bind_socket
from ztproxy.server import run_loop
from ztproxy.signing import JWKS_PATH
from ztproxy.telemetry import LogFormat, configure_logging
from ztproxy.verify import Verifier

DEFAULT_PORT = 8080
IDP_HOST = "localhost"
T = TypeVar("T")


class DemoError(Exception):
    """The demo cannot start; the message says why and what to do."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((scenario.DEMO_HOST, 0))
        return int(sock.getsockname()[1])


def _check_node() -> None:
    if shutil.which("node") is None:
        raise DemoError("the demo's OpenID Provider needs Node.js 20, and `node` is not on PATH. "
                        "Install Node.js, then run ./dev demo (it also installs the npm packages).")
    try:
        find_node_modules()
    except IdpStartError as exc:
        raise DemoError(str(exc)) from None


def _banner(url: str, issuer: str, app_url: str, state: scenario.DemoState) -> str:
    secret = state.totp_secret
    get_token, call = scenario.service_commands(url, issuer)
    return f"""
  ztproxy demo: open {url}/ in a browser

  Try
    1. {url}/app
       the employees' app: sign in as alice (password alice); it shows who the proxy says she is
    2. {url}/payroll
       alice is refused: not in the payroll group
    3. {url}/.ztproxy/logout
       sign out, sign in as bob (password bob) at /app, then open /payroll: ztproxy sends him
       back to the IdP for his one-time code (step-up: a second factor, at most {scenario.MAX_AUTH_AGE} old)
    4. {url}/ledger
       bob is refused and offered "Request access": he asks, with a reason, for 30m. In another
       browser (or a private window) carol signs in at {url}/.ztproxy/access/ with her code and
       approves; bob's next visit opens the ledger, until the grant ends (or carol ends it).
    5. a service, in a terminal: get an access token as {scenario.SERVICE.client_id}, call /api with it
       {get_token}
       {call}
    5. with bob signed in, end his session as an IdP or EDR would, in a terminal:
       ztproxy demo --revoke bob --state-dir {state.directory}
       the demo's Shared Signals transmitter pushes a CAEP session-revoked to the proxy; bob's
       next request is refused and he signs in again

  Users, at the demo OpenID Provider {issuer}
    alice / alice   group employees
    bob   / bob     groups employees, payroll; second factor TOTP
      secret  {secret}   (an authenticator app, or: oathtool --totp -b {secret})
      as URI  {scenario.otpauth_uri(secret, "bob")}
    carol / carol   groups employees, payroll-leads (approves /ledger); second factor TOTP
      her secret  {state.carol_totp_secret}   (oathtool --totp -b {state.carol_totp_secret})

  Behind the scenes: the sample app {app_url} (meant to be reached through the proxy only);
  the proxy's configuration {state.config_path};
  kept across restarts: {state.directory} (delete it to start afresh).

  Ctrl+C to stop.
"""


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None when ``stop`` is set first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _start(stack: contextlib.AsyncExitStack, *, port: int, log_format: LogFormat,
                 state: scenario.DemoState) -> str:
    """Start the three servers, registering how to stop each on ``stack``; returns the banner."""
    url = f"http://{scenario.DEMO_HOST}:{port}"
    try:
        proxy_socket = bind_socket(f"{scenario.DEMO_HOST}:{port}", reuse_port=False)
    except OSError as exc:
        raise DemoError(f"cannot listen on {scenario.DEMO_HOST}:{port}: {exc.strerror or exc}; "
                        "pick another port with --port") from None
    stack.callback(proxy_socket.close)

    users = scenario.idp_users(state.totp_secret, state.carol_totp_secret)
    # ztproxy.verify as an app developer would use it: issuer = the proxy's public URL,
    # audience = the route's origin (the default audience), keys from the proxy's JWKS.
    verifier = Verifier(issuer=url, audience=url, jwks_url=url + JWKS_PATH)
    sample_app = build_sample_app(verifier, scenario.guide(users, state.totp_secret), jwks_url=url + JWKS_PATH)
    app_runner = web.AppRunner(sample_app, access_log=None, handle_signals=False, shutdown_timeout=1)
    await app_runner.setup()
    stack.push_async_callback(app_runner.cleanup)
    app_port = _free_port()
    await web.TCPSite(app_runner, scenario.DEMO_HOST, app_port).start()
    app_url = f"http://{scenario.DEMO_HOST}:{app_port}"

    client_secret = secrets.token_urlsafe(32)  # the IdP and the proxy are configured together at each start
    # Another host name than the proxy's (cookies ignore ports): the browser keeps the IdP's
    # cookies apart from the apps', as with a real IdP, and the app never receives them.
    idp = DemoIdp(workdir=state.idp_dir, host=IDP_HOST, port=_free_port(), users=users, clients=[IdpClient(
        client_id=scenario.CLIENT_ID, client_secret=client_secret,
        redirect_uris=(f"{url}/.ztproxy/callback",),
        post_logout_redirect_uris=(f"{url}/.ztproxy/signed-out",),
        backchannel_logout_uri=f"{url}/.ztproxy/backchannel-logout",
    )], services=[scenario.SERVICE], resources=[scenario.api_resource(url)])
    stack.push_async_callback(idp.stop)
    await idp.start()

    # An IdP or EDR stand-in pushing security events: `ztproxy demo --revoke bob` has it revoke bob.
    transmitter_runner, transmitter = await start_transmitter(scenario.DEMO_HOST, _free_port(), state.directory)
    stack.push_async_callback(transmitter_runner.cleanup)

    config_text = scenario.proxy_config_text(port=port, app_url=app_url, issuer=idp.issuer, mfa_acr=idp.mfa_acr,
                                             client_secret=client_secret, state=state, log_format=log_format,
                                             signals=transmitter.config_section())
    scenario.write_private(state.config_path, config_text)
    config = load(state.config_path)
    proxy_runner = ProxyRunner(build_app(config), config)
    await proxy_runner.setup()
    stack.push_async_callback(proxy_runner.cleanup)
    await web.SockSite(proxy_runner, proxy_socket).start()
    return _banner(url, idp.issuer, app_url, state)


async def _demo(port: int, log_format: LogFormat, state_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if not 0 < port < 65536:
            raise DemoError(f"--port must be between 1 and 65535, not {port}")
        try:
            state = scenario.prepare_state(state_dir)
        except OSError as exc:
            raise DemoError(f"cannot use the state directory {state_dir}: {exc.strerror or exc}; "
                            "pick another with --state-dir") from None
        _check_node()
        async with contextlib.AsyncExitStack() as stack:
            banner = await _unless_stopped(stop, _start(stack, port=port, log_format=log_format, state=state))
            if banner is not None:
                print(banner, flush=True)
                await stop.wait()
            print("\n  ztproxy demo: stopping", flush=True)
        return 0
    except (DemoError, IdpStartError) as exc:
        print(f"ztproxy demo: {exc}", file=sys.stderr, flush=True)
        return 1
    except ConfigError as exc:  # a bug in the demo's own configuration: say where
        print(exc.render(), file=sys.stderr, flush=True)
        return 1
    except OSError as exc:  # a full disk, a file made unreadable under us...
        print(f"ztproxy demo: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def revoke_demo_user(user: str, state_dir: str | None = None) -> int:
    """``ztproxy demo --revoke USER``: the running demo's transmitter revokes USER's sessions."""
    directory = Path(state_dir) if state_dir else scenario.default_state_dir(os.environ)
    emails = {user.username: user.email for user in scenario.idp_users("") if user.email}
    return run_loop(revoke(directory, user, emails))


def run_demo(port: int = DEFAULT_PORT, log_format: str = "console", state_dir: str | None = None) -> int:
    """Run the demo until SIGINT or SIGTERM; 1, with a message on stderr, when it cannot start."""
    chosen: LogFormat = "json" if log_format == "json" else "console"
    configure_logging("info", chosen)
    directory = Path(state_dir) if state_dir else scenario.default_state_dir(os.environ)
    try:
        return run_loop(_demo(port, chosen, directory))
    except KeyboardInterrupt:  # Ctrl+C before the demo's own handler is in place: nothing to stop yet
        return 130
