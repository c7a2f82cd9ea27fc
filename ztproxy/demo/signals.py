"""The demo's security signals: a Shared Signals transmitter (an IdP or EDR stand-in) in the demo
process, and ``ztproxy demo --revoke USER``, which has it push a CAEP ``session-revoked``.

The transmitter is :mod:`ztproxy.demo.transmitter` on a free loopback port: ztproxy creates its
stream there at start and receives its SETs at ``/.ztproxy/ssf/events`` like any transmitter's
(signature, issuer, audience, push secret, replay checks: the real receiver path). Its address
and control token are written to ``signals.json`` in the state directory (owner only) at each
start, for ``--revoke`` in another terminal.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from ztproxy.demo.transmitter import build_app
from ztproxy.signals.events import SESSION_REVOKED

AUDIENCE = "https://ztproxy.demo/ssf"  # what the demo's proxy expects in the SETs' aud
FILE_NAME = "signals.json"


@dataclass(frozen=True)
class DemoTransmitter:
    issuer: str
    management_token: str  # for ztproxy: the stream management API
    control_token: str  # for --revoke

    def config_section(self) -> str:
        """The ``signals`` section of the demo's configuration."""
        return f"""signals:
  transmitters:
    - name: demo-edr
      issuer: {json.dumps(self.issuer)}
      audience: {json.dumps(AUDIENCE)}
      bearer_token: {json.dumps(self.management_token)}
"""


async def start_transmitter(host: str, port: int, state_dir: Path) -> tuple[web.AppRunner, DemoTransmitter]:
    """The transmitter, started; the caller cleans up the runner."""
    from ztproxy.demo.scenario import write_private

    transmitter = DemoTransmitter(f"http://{host}:{port}", secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    runner = web.AppRunner(build_app(transmitter.issuer, transmitter.management_token, transmitter.control_token),
                           access_log=None, handle_signals=False, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    write_private(state_dir / FILE_NAME, json.dumps({"issuer": transmitter.issuer,
                                                      "control_token": transmitter.control_token}) + "\n")
    return runner, transmitter


async def revoke(state_dir: Path, user: str, emails: dict[str, str]) -> int:
    """``ztproxy demo --revoke USER``: the running demo's transmitter pushes a session-revoked for USER."""
    email = emails.get(user)
    if email is None:
        print(f"ztproxy demo: no demo user {user!r}: try {' or '.join(sorted(emails))}", file=sys.stderr)
        return 2
    try:
        saved = json.loads((state_dir / FILE_NAME).read_text(encoding="utf-8"))
        issuer, token = str(saved["issuer"]), str(saved["control_token"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"ztproxy demo: no running demo uses {state_dir}: start it (ztproxy demo) first", file=sys.stderr)
        return 1
    order = {"event": SESSION_REVOKED, "sub_id": {"format": "email", "email": email},
             "payload": {"initiating_entity": "admin", "reason_admin": {"en": "ztproxy demo --revoke"}}}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            async with client.post(f"{issuer}/-/push", json=order,
                                   headers={"Authorization": f"Bearer {token}"}) as response:
                answer = await response.json() if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        answer = None
    if not isinstance(answer, dict):
        print(f"ztproxy demo: the demo's transmitter at {issuer} did not answer: is the demo running?",
              file=sys.stderr)
        return 1
    status, body = answer.get("status"), answer.get("body")
    if status != 202:
        print(f"ztproxy demo: the proxy refused the event: {status} {body}", file=sys.stderr)
        return 1
    print(f"CAEP session-revoked for {email}, signed and pushed by the demo's transmitter: ztproxy answered 202.\n"
          f"{user}'s sessions have ended on the proxy: {user}'s next request is refused (a browser is sent to "
          "sign in again).")
    return 0
