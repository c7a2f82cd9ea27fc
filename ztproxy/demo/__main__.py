"""``python -m ztproxy.demo [--port PORT] [--state-dir DIR] [--log-format console|json] [--revoke USER]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ztproxy.demo.launcher import DEFAULT_PORT, revoke_demo_user, run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztproxy.demo",
                                     description="Sign-in, step-up and the identity an app receives, on loopback.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the proxy's port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--state-dir", help="keys and secrets kept across restarts "
                        "(default $XDG_STATE_HOME/ztproxy-demo or ~/.local/state/ztproxy-demo)")
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    parser.add_argument("--revoke", metavar="USER", help="with the demo running: have its security-signals "
                        "transmitter end USER's sessions (a CAEP session-revoked), then exit")
    args = parser.parse_args(argv)
    if args.revoke is not None:
        return revoke_demo_user(args.revoke, args.state_dir)
    return run_demo(port=args.port, log_format=args.log_format, state_dir=args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
