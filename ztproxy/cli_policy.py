"""``ztproxy policy test|explain|diff``: route policies as code, without a running proxy.

    ztproxy policy test    -c FILE TESTS.yaml
    ztproxy policy explain -c FILE --url URL [--method M] [--sub S --email E --group G --mfa ...]
                           [--network NET --user-agent UA --signal NAME ...]
    ztproxy policy diff    -c OLD -c NEW TESTS.yaml

Registered from :mod:`ztproxy.cli`. Exit 2 for unusable input; ``test`` exits 1 when a case
fails; reports exit 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ztproxy.errors import ConfigError


def add_parser(policy: argparse.ArgumentParser, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
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
    explain.add_argument("--grant", action="append", default=[], metavar="ROUTE",
                         help="the user holds an approved access grant for this route (repeatable)")
    explain.add_argument("--service", help="a calling workload's SPIFFE ID (instead of a person)")
    explain.add_argument("--client-id", help="a calling service's OAuth client_id (instead of a person)")
    explain.add_argument("--scope", action="append", default=[], help="a scope of its token; repeatable")
    explain.add_argument("--device-id", help="a known device (implied by the other --device options)")
    explain.add_argument("--device-managed", action="store_true")
    explain.add_argument("--disk-encrypted", action="store_true")
    explain.add_argument("--platform")
    explain.add_argument("--os-version")
    explain.add_argument("--network", help="where the session signed in: an address or its network "
                                           "(default: the client's; another one is a network-changed signal)")
    explain.add_argument("--user-agent", help="the request's User-Agent header")
    explain.add_argument("--signed-in-user-agent", help="the session's browser (default: --user-agent)")
    explain.add_argument("--signal", action="append", default=[], help="a session risk signal given now, "
                                                                       "e.g. concurrent-use (repeatable)")

    diff = actions.add_parser("diff", help="show the test cases whose decision changes between two configurations")
    diff.add_argument("-c", "--config", action="append", default=[], help="the old, then the new configuration")
    diff.add_argument("tests", help="YAML list of test cases (their expect is ignored)")


def run(args: argparse.Namespace) -> int:
    """Exit 2 for unusable input; ``test`` exits 1 when a case fails; reports exit 0."""
    from ztproxy.config import load
    from ztproxy.policy import breakdown, suite

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
            case = suite.case_from_mapping(_explain_case(args), now)
        else:
            cases = suite.load_cases(args.tests, now)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return 2
    if args.action == "explain":
        print("\n".join(breakdown.rule_by_rule(configs[0], case.host, case.facts, case.session, case.grants)))
        return 0
    if args.action == "diff":
        print("\n".join(suite.diff_cases(configs[0], configs[1], cases)))
        return 0
    report = suite.run_cases(configs[0], cases)
    print("\n".join(report.lines))
    return report.exit_code


def _explain_case(args: argparse.Namespace) -> dict[str, Any]:
    """The explain options as one test case, validated like a tests file."""
    request = {"url": args.url, "method": args.method, "client_ip": args.client_ip, "time": args.time,
               "user_agent": args.user_agent}
    case: dict[str, Any] = {"name": "explain", "request": {k: v for k, v in request.items() if v is not None}}
    if args.service or args.client_id:
        service = {"service": args.service, "client_id": args.client_id, "scopes": args.scope}
        case["identity"] = {k: v for k, v in service.items() if v is not None}
    elif args.sub or args.email:
        identity = {"sub": args.sub, "email": args.email, "groups": args.group, "mfa": args.mfa,
                    "auth_age": args.auth_age, "grants": args.grant}
        case["identity"] = {k: v for k, v in identity.items() if v is not None}
    device = {"id": args.device_id, "managed": args.device_managed or None,
              "disk_encrypted": args.disk_encrypted or None, "platform": args.platform, "os_version": args.os_version}
    if any(value is not None for value in device.values()):
        case["device"] = {k: v for k, v in device.items() if v is not None}
    session = {"network": args.network, "user_agent": args.signed_in_user_agent, "signals": args.signal or None}
    if args.user_agent is not None or any(value is not None for value in session.values()):
        case["session"] = {k: v for k, v in session.items() if v is not None}
    return case
