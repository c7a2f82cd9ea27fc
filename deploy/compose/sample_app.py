"""The compose demo's sample app: ``ztproxy demo``'s app (``ztproxy.demo.sample_app``), served alone.

The ``app`` service of compose.yaml runs it in the ztproxy image, behind ztproxy. It shows the
identity ztproxy sends and verifies the signed assertion as an app developer would: issuer
ztproxy's public URL, audience the route's origin (the same URL: the demo's routes are paths
on one host), keys from ztproxy's JWKS. Settings come from the environment:

- ``DEMO_PUBLIC_URL``: ztproxy's public URL (default http://ztproxy.localhost:8080);
- ``DEMO_STATE_DIR``: the state init_demo.py wrote, for bob's TOTP secret on the portal page
  (and carol's, the approver, in its list of users);
- ``DEMO_APP_LISTEN``: HOST:PORT to listen on (default 0.0.0.0:8000).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aiohttp import web

from ztproxy.demo import scenario
from ztproxy.demo.sample_app import build_sample_app
from ztproxy.signing import JWKS_PATH
from ztproxy.verify import Verifier


def main() -> int:
    public_url = os.environ.get("DEMO_PUBLIC_URL", "http://ztproxy.localhost:8080").rstrip("/")
    state_dir = Path(os.environ.get("DEMO_STATE_DIR", "/var/lib/ztproxy"))
    host, _, port = os.environ.get("DEMO_APP_LISTEN", "0.0.0.0:8000").rpartition(":")
    try:
        totp_secret = (state_dir / "bob-totp-secret").read_text(encoding="utf-8").strip()
        carol_totp_secret = (state_dir / "carol-totp-secret").read_text(encoding="utf-8").strip()
    except OSError as exc:
        print(f"sample_app: cannot read the users' TOTP secrets (has init_demo.py run?): {exc}", file=sys.stderr)
        return 1
    jwks_url = public_url + JWKS_PATH
    verifier = Verifier(issuer=public_url, audience=public_url, jwks_url=jwks_url)
    users = scenario.idp_users(totp_secret, carol_totp_secret)
    app = build_sample_app(verifier, scenario.guide(users, totp_secret), jwks_url=jwks_url)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
