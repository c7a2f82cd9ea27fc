"""``python -m ztproxy.demo [--port PORT] [--state-dir DIR] [--log-format console|json]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ztproxy.demo.launcher import DEFAULT_PORT, run_demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ztproxy.demo",
                                     description="Sign-in, step-up and the identity an app receives, on loopback.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the proxy's port on 127.0.0.1 (default {DEFAULT_PORT})")
    parser.add_argument("--state-dir", help="keys and secrets kept across restarts "
                        "(default $XDG_STATE_HOME/ztproxy-demo or ~/.local/state/ztproxy-demo)")
    parser.add_argument("--log-format", choices=("json", "console"), default="console")
    args = parser.parse_args(argv)
    return run_demo(port=args.port, log_format=args.log_format, state_dir=args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
