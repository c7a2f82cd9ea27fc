"""The ``ztproxy`` command: parse arguments, load the config, hand over to the server.

    ztproxy run   -c FILE [--workers N] [--log-format json|console]
    ztproxy check -c FILE
    ztproxy demo  [--port PORT]
    ztproxy --version

``-c`` defaults to the ``ZTPROXY_CONFIG`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ztproxy import __version__
from ztproxy.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ztproxy", description="Identity-aware reverse proxy.")
    parser.add_argument("--version", action="version", version=f"ztproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("-c", "--config", default=os.environ.get("ZTPROXY_CONFIG"),
                         help="configuration file (default: $ZTPROXY_CONFIG)")

    run = commands.add_parser("run", help="serve with a configuration file")
    config_arg(run)
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default 1)")
    run.add_argument("--log-format", choices=("json", "console"), default=None,
                     help="override logging.format from the config")

    check = commands.add_parser("check", help="validate a configuration file and print every error")
    config_arg(check)

    demo = commands.add_parser("demo", help="run a sample app behind ztproxy on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port on 127.0.0.1 (default 8080)")
    demo.add_argument("--log-format", choices=("json", "console"), default="console")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ztproxy.demo import run_demo

        return run_demo(port=args.port, log_format=args.log_format)

    from ztproxy.config import load
    from ztproxy.telemetry import configure_logging

    if not args.config:
        print("ztproxy: no configuration file: pass -c FILE or set ZTPROXY_CONFIG", file=sys.stderr)
        return 2
    try:
        config = load(args.config)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return 1
    if args.command == "check":
        print(f"{args.config}: OK ({len(config.routes)} routes)")
        return 0

    from ztproxy.server import run

    if args.workers < 1:
        print("ztproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    log_format = args.log_format or config.logging.format
    configure_logging(config.logging.level, log_format)
    try:
        return run(config, workers=args.workers, log_format=log_format)
    except OSError as error:  # port in use, unreadable TLS key...
        print(f"ztproxy: cannot start: {error}", file=sys.stderr)
        return 1
