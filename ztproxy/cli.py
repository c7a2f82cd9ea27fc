"""The ``ztproxy`` command: parse arguments, load the config, hand over to the server.

    ztproxy run   -c FILE [--workers N] [--log-format json|console]
    ztproxy check -c FILE
    ztproxy demo  [--port PORT]
    ztproxy policy test    -c FILE TESTS.yaml
    ztproxy policy explain -c FILE --url URL [--method M] [--sub S --email E --group G --mfa ...]
    ztproxy policy diff    -c OLD -c NEW TESTS.yaml
    ztproxy --version

``-c`` defaults to the ``ZTPROXY_CONFIG`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

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
    _policy_parser(commands.add_parser("policy", help="test, explain and compare route policies"), config_arg)
    return parser


def _policy_parser(policy: argparse.ArgumentParser,
                   config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = actions.add_parser("test", help="run a tests file of requests and expected decisions (exit 1 on failure)")
    config_arg(test)
    test.add_argument("tests", help="YAML list of test cases")

    explain = actions.add_parser("explain", help="show how each rule of the matching route decides one request")
    config_arg(explain)
    explain.add_argument("--url", required=True, help="e.g. https://wiki.corp.example/page")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--client-ip", help="default 127.0.0.1")
    explain.add_argument("--time", help="ISO 8601 with a zone (default: now)")
    explain.add_argument("--sub", help="the user's subject (with --email: signed in)")
    explain.add_argument("--email")
    explain.add_argument("--group", action="append", default=[], help="repeatable")
    explain.add_argument("--mfa", action="store_true", help="the login used a second factor")
    explain.add_argument("--auth-age", help="how long ago the user authenticated, e.g. 5m")
    explain.add_argument("--device-id", help="a known device (implied by the other --device options)")
    explain.add_argument("--device-managed", action="store_true")
    explain.add_argument("--disk-encrypted", action="store_true")
    explain.add_argument("--platform")
    explain.add_argument("--os-version")

    diff = actions.add_parser("diff", help="show the test cases whose decision changes between two configurations")
    diff.add_argument("-c", "--config", action="append", default=[], help="the old, then the new configuration")
    diff.add_argument("tests", help="YAML list of test cases (their expect is ignored)")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ztproxy.demo import run_demo

        return run_demo(port=args.port, log_format=args.log_format)
    if args.command == "policy":
        return _policy(args)

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


def _policy(args: argparse.Namespace) -> int:
    """Exit 2 for unusable input; ``test`` exits 1 when a case fails; reports exit 0."""
    from ztproxy.config import load
    from ztproxy.policy import explain, testing

    paths = args.config if args.action == "diff" else [args.config]
    if args.action == "diff" and len(paths) != 2:
        print("ztproxy: policy diff needs two configurations: -c OLD -c NEW", file=sys.stderr)
        return 2
    if not all(paths):
        print("ztproxy: no configuration file: pass -c FILE or set ZTPROXY_CONFIG", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        configs = [load(path) for path in paths]
        if args.action == "explain":
            case = testing.case_from_mapping(_explain_case(args), now)
        else:
            cases = testing.load_cases(args.tests, now)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return 2
    if args.action == "explain":
        print("\n".join(explain.explain(configs[0], case.host, case.facts)))
        return 0
    if args.action == "diff":
        print("\n".join(testing.diff_cases(configs[0], configs[1], cases)))
        return 0
    report = testing.run_cases(configs[0], cases)
    print("\n".join(report.lines))
    return report.exit_code


def _explain_case(args: argparse.Namespace) -> dict[str, Any]:
    """The explain options as one test case, validated like a tests file."""
    request = {"url": args.url, "method": args.method, "client_ip": args.client_ip, "time": args.time}
    case: dict[str, Any] = {"name": "explain", "request": {k: v for k, v in request.items() if v is not None}}
    if args.sub or args.email:
        identity = {"sub": args.sub, "email": args.email, "groups": args.group, "mfa": args.mfa,
                    "auth_age": args.auth_age}
        case["identity"] = {k: v for k, v in identity.items() if v is not None}
    device = {"id": args.device_id, "managed": args.device_managed or None,
              "disk_encrypted": args.disk_encrypted or None, "platform": args.platform, "os_version": args.os_version}
    if any(value is not None for value in device.values()):
        case["device"] = {k: v for k, v in device.items() if v is not None}
    return case
