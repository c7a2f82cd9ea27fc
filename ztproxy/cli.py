"""The ``ztproxy`` command: parse arguments, load the config, hand over to the server.

    ztproxy run   -c FILE [--workers N] [--log-format json|console]
    ztproxy check -c FILE
    ztproxy demo  [--port PORT] [--state-dir DIR] [--revoke USER]
    ztproxy policy test    -c FILE TESTS.yaml
    ztproxy policy explain -c FILE --url URL [--method M] [--sub S --email E --group G --mfa ...]
                           [--network NET --user-agent UA --signal NAME ...]
    ztproxy policy diff    -c OLD -c NEW TESTS.yaml
    ztproxy keys generate|rotate|list|jwks --dir DIR   (or -c FILE: its assertion section)
    ztproxy sessions list --user SUB | revoke --session HANDLE | --user SUB | --device ID
                          [-c FILE | --admin-url URL --token-file FILE]
    ztproxy services revoke|lift --client-id ID | --service SPIFFE_ID | --jti JTI [--exp UNIX] | list
                          [-c FILE | --admin-url URL --token-file FILE]
    ztproxy grants list [--state STATE] | approve|deny|revoke ID [--comment TEXT]   (ztproxy.cli_grants)
                          [-c FILE | --admin-url URL --token-file FILE]
    ztproxy forward-auth nginx|caddy|traefik|envoy -c FILE
    ztproxy --version

``-c`` defaults to the ``ZTPROXY_CONFIG`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ztproxy import __version__
from ztproxy.errors import ConfigError

if TYPE_CHECKING:
    from ztproxy.admin_client import AdminClient
    from ztproxy.assertion.keys import KeyStatus, RotationPolicy


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

    demo = commands.add_parser("demo", help="sign-in, step-up and the identity an app receives, on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port on 127.0.0.1 (default 8080)")
    demo.add_argument("--log-format", choices=("json", "console"), default="console")
    demo.add_argument("--state-dir", help="keys and secrets kept across restarts (default "
                                          "$XDG_STATE_HOME/ztproxy-demo or ~/.local/state/ztproxy-demo)")
    demo.add_argument("--revoke", metavar="USER", help="with the demo running: have its security-signals "
                                                       "transmitter end USER's sessions, then exit")
    _policy_parser(commands.add_parser("policy", help="test, explain and compare route policies"), config_arg)
    _keys_parser(commands.add_parser("keys", help="create, rotate and list the keys signing identity assertions"))
    _sessions_parser(commands.add_parser("sessions", help="list and revoke sessions through the admin API"),
                     config_arg)
    _services_parser(commands.add_parser("services", help="revoke services, clients and tokens through the "
                                                          "admin API"), config_arg)
    from ztproxy import cli_grants

    cli_grants.add_parser(commands.add_parser("grants", help="decide and end just-in-time access requests "
                                                             "through the admin API"),
                          lambda sub: _admin_api_args(sub, config_arg))
    forward_auth = commands.add_parser(
        "forward-auth", help="print the configuration of a proxy that asks ztproxy about each request")
    forward_auth.add_argument("kind", choices=("nginx", "caddy", "traefik", "envoy"))
    config_arg(forward_auth)
    config = commands.add_parser("config", help="about the configuration file itself")
    config.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "schema", help="print the JSON Schema of the configuration file, for editors and CI")
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader left (`ztproxy keys jwks | head`): not an error worth a traceback. Python's
        # own advice: point stdout at /dev/null so the interpreter's final flush fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ztproxy.demo import revoke_demo_user, run_demo

        if args.revoke is not None:
            return revoke_demo_user(args.revoke, args.state_dir)
        return run_demo(port=args.port, log_format=args.log_format, state_dir=args.state_dir)
    if args.command == "policy":
        return _policy(args)
    if args.command == "keys":
        return _keys(args)
    if args.command == "sessions":
        return _sessions(args)
    if args.command == "services":
        return _services(args)
    if args.command == "grants":
        from ztproxy import cli_grants

        return cli_grants.run(args, _admin_api(args, "grants"))
    if args.command == "config":  # the one action: schema
        from ztproxy.config import jsonschema

        jsonschema.write(sys.stdout)
        return 0

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
    if args.command == "forward-auth":
        from ztproxy.calling_proxies import generate

        sys.stdout.write(generate(args.kind, config, str(args.config)))
        return 0
    if args.command == "check":
        count = len(config.routes)
        print(f"{args.config}: OK ({count} route{'' if count == 1 else 's'})")
        return 0

    from ztproxy.server import run

    if args.workers < 1:
        print("ztproxy: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers > 1 and config.identity_providers and config.sessions.store == "memory":
        print(f"ztproxy: sessions.store is memory, which one process alone can see: with --workers "
              f"{args.workers}, a sign-in on one worker would be unknown to the others. Use a Redis store "
              "(sessions.store: redis://...) or run one worker.", file=sys.stderr)
        return 2
    log_format = args.log_format or config.logging.format
    configure_logging(config.logging.level, log_format)
    try:
        return run(config, workers=args.workers, log_format=log_format, config_path=str(args.config))
    except OSError as error:  # port in use, unreadable TLS key...
        print(f"ztproxy: cannot start: {error}", file=sys.stderr)
        return 1
    except ConfigError as error:  # found only at start: unusable key files, providers that can't be built
        print(f"ztproxy: cannot start: {error.render()}", file=sys.stderr)
        return 1


def _policy(args: argparse.Namespace) -> int:
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


def _duration(text: str) -> float:
    from ztproxy.config.values import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return seconds


def _keys_parser(keys: argparse.ArgumentParser) -> None:
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")

    def where(sub: argparse.ArgumentParser, *, timing: bool = True) -> None:
        sub.add_argument("--dir", help="the key directory (default: assertion.keys_dir of -c)")
        sub.add_argument("-c", "--config", help="take the key directory and durations from this configuration")
        if timing:  # must match the proxies' configuration, or keys retire too early or late
            sub.add_argument("--ttl", type=_duration, help="assertion lifetime (default: from -c, else 60s)")
            sub.add_argument("--publish-before-use", type=_duration, help="default: from -c, else 10m")
            sub.add_argument("--verifier-leeway", type=_duration, help="default: from -c, else 30s")
        else:
            sub.set_defaults(ttl=None, publish_before_use=None, verifier_leeway=None)

    where(actions.add_parser("generate", help="write one new key into the directory and print its kid"),
          timing=False)
    rotate = actions.add_parser("rotate", help="add a key when the newest is older than --max-age, "
                                "and delete the keys every assertion they signed has outlived")
    where(rotate)
    rotate.add_argument("--max-age", type=_duration, default=7 * 86400.0, help="default 7d")
    rotate.add_argument("--force", action="store_true", help="add a key whatever the newest one's age")
    where(actions.add_parser("list", help="each key's kid, creation time and state"))
    where(actions.add_parser("jwks", help="print the public JWKS the proxies publish now"))


def _keys(args: argparse.Namespace) -> int:
    """Exit 1, with the reason (and the file), for anything that cannot be done."""
    from ztproxy.assertion import keys
    from ztproxy.config import load
    from ztproxy.config.assertion import AssertionConfig

    try:
        assertion = load(args.config).assertion if args.config else AssertionConfig()
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
        return 1
    directory: str | None = args.dir or assertion.keys_dir
    # list and jwks show what a proxy with this configuration publishes: its key files too.
    key_files = assertion.key_files if args.dir is None and args.action in ("list", "jwks") else ()
    if directory is None and not key_files:
        print("ztproxy keys: no key directory: pass --dir DIR (or -c FILE with assertion.keys_dir)", file=sys.stderr)
        return 1
    now = time.time()
    policy = keys.RotationPolicy(
        ttl=args.ttl or assertion.ttl, verifier_leeway=args.verifier_leeway or assertion.verifier_leeway,
        publish_before_use=args.publish_before_use or assertion.publish_before_use)
    try:
        if directory is not None and args.action == "generate":
            key = keys.generate_key(now)
            print(f"wrote {keys.write_key(Path(directory), key)}", file=sys.stderr)
            print(key.kid)
            return 0
        if directory is not None and args.action == "rotate":
            print("\n".join(_rotate(Path(directory), policy, now, max_age=args.max_age, force=args.force)))
            return 0
        if directory is not None and not Path(directory).is_dir():
            print(f"ztproxy keys: {directory}: no such directory", file=sys.stderr)
            return 1
        statuses = keys.schedule(keys.load_keys(directory, key_files), policy, now)
    except ConfigError as error:
        print("\n".join(f"ztproxy keys: {issue.message}" for issue in error.issues), file=sys.stderr)
        return 1
    except OSError as error:
        print(f"ztproxy keys: cannot write to {directory}: {error.strerror or error}", file=sys.stderr)
        return 1
    if args.action == "jwks":
        print(json.dumps(keys.jwks(statuses), indent=2))
    else:
        print("\n".join(_key_lines(statuses)) if statuses else f"no keys in {directory}")
    return 0


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rotate(directory: Path, policy: RotationPolicy, now: float, *, max_age: float, force: bool) -> list[str]:
    from ztproxy.assertion import keys

    existing = keys.load_keys(str(directory), ()) if directory.exists() else []
    if force or not existing or now - existing[-1].created >= max_age:
        key = keys.generate_key(now)
        keys.write_key(directory, key)
        lines = [f"added {key.kid}: published now, signs from {_when(now + policy.publish_before_use)}"]
    else:
        newest = existing[-1]
        lines = [f"kept: the newest key {newest.kid} was created {_when(newest.created)}, "
                 f"less than --max-age ago"]
    lines += [f"removed {key.kid}: expired (created {_when(key.created)})"
              for key in keys.prune(directory, policy, now)]
    return lines


def _key_lines(statuses: Sequence[KeyStatus]) -> list[str]:
    from ztproxy.assertion.keys import KeyState

    lines = []
    for status in reversed(statuses):  # newest first
        detail = {
            KeyState.PENDING: f"signs from {_when(status.usable_from)}",
            KeyState.SIGNING: "signs new assertions",
            KeyState.RETIRING: f"published until {_when(status.published_until or 0)}",
            KeyState.EXPIRED: "no longer published; `ztproxy keys rotate` deletes it",
        }[status.state]
        lines.append(f"{status.key.kid}  created {_when(status.key.created)}  {status.state.value:<8}  {detail}")
    return lines


def _admin_api_args(sub: argparse.ArgumentParser, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    """How ``ztproxy sessions|services`` reach the admin API: -c FILE, or --admin-url and --token-file."""
    config_arg(sub)
    sub.add_argument("--admin-url", help="the admin listener, e.g. http://127.0.0.1:9090 "
                                         "(default: server.admin_listen of -c)")
    sub.add_argument("--token-file", help="file holding the admin token (default: server.admin_token of -c)")


def _sessions_parser(sessions: argparse.ArgumentParser,
                     config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")

    def where(sub: argparse.ArgumentParser) -> None:
        _admin_api_args(sub, config_arg)
        sub.add_argument("--provider", help="only this identity provider's sessions (with --user)")

    listing = actions.add_parser("list", help="a user's live sessions: handle, provider, idle expiry")
    where(listing)
    listing.add_argument("--user", required=True, help="the user's subject (sub), as in the logs")
    listing.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    revoke = actions.add_parser("revoke", help="end sessions on every worker and replica at once")
    where(revoke)
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--session", metavar="HANDLE", help="one session, by the handle `list` shows")
    target.add_argument("--user", help="every session of this subject")
    target.add_argument("--device", metavar="ID", help="every session served from this device")


def _services_parser(services: argparse.ArgumentParser,
                     config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    actions = services.add_subparsers(dest="action", required=True, metavar="ACTION")

    def where(sub: argparse.ArgumentParser) -> None:
        _admin_api_args(sub, config_arg)

    def target(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group(required=True)
        group.add_argument("--client-id", metavar="ID", help="an OAuth client: every token it has or will get")
        group.add_argument("--service", metavar="SPIFFE_ID", help="a workload, by its SPIFFE ID")
        group.add_argument("--jti", metavar="JTI", help="one access token, by its jti")

    revoke = actions.add_parser("revoke", help="refuse a client, service or token on every worker and replica")
    where(revoke)
    target(revoke)
    revoke.add_argument("--exp", type=int, metavar="UNIX", help="with --jti: the token's exp (default: revoked 24h)")
    listing = actions.add_parser("list", help="the revocations in force")
    where(listing)
    listing.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    lift = actions.add_parser("lift", help="end a revocation")
    where(lift)
    target(lift)


def _services(args: argparse.Namespace) -> int:
    """Exit 2 for unusable arguments or configuration, 1 when the admin API refuses or cannot be reached."""
    from ztproxy.admin_client import AdminApiError

    if args.action == "revoke" and args.exp is not None and not args.jti:
        print("ztproxy services: --exp goes with --jti", file=sys.stderr)
        return 2
    api = _admin_api(args, "services")
    if isinstance(api, int):
        return api
    named = {} if args.action == "list" else {"client_id": args.client_id, "service": args.service, "jti": args.jti}
    kind, value = next(((kind, value) for kind, value in named.items() if value is not None), ("", ""))
    try:
        if args.action == "list":
            answer = api.service_revocations()
        elif args.action == "revoke":
            answer = api.revoke_service(kind, value, args.exp)
        else:
            answer = api.lift_service(kind, value)
    except AdminApiError as error:
        print(f"ztproxy services: {error}", file=sys.stderr)
        return 1
    if args.action == "revoke":
        until = answer["revoked"].get("expires_at") or "lifted"
        print(f"revoked {kind} {value} until {until}")
    elif args.action == "lift":
        print(f"lifted the revocation of {kind} {value}")
    elif args.json:
        print(json.dumps(answer, indent=2))
    else:
        listed = answer.get("revocations", [])
        print("\n".join(f"{item['kind']}  {item['value']}  since {item['revoked_at']}  until "
                        f"{item['expires_at'] or 'lifted'}" for item in listed) if listed else "no revocations")
    return 0


def _admin_api(args: argparse.Namespace, command: str) -> AdminClient | int:
    """The admin API's client for ``ztproxy sessions|services``; an exit code (2) when it cannot be had."""
    from ztproxy.admin_client import AdminSetupError, reach

    try:
        return reach(args.admin_url, args.token_file, args.config)
    except AdminSetupError as error:
        print(f"ztproxy {command}: {error}", file=sys.stderr)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
    return 2


def _sessions(args: argparse.Namespace) -> int:
    """Exit 2 for unusable arguments or configuration, 1 when the admin API refuses or cannot be reached."""
    from ztproxy.admin_client import AdminApiError

    api = _admin_api(args, "sessions")
    if isinstance(api, int):
        return api
    if args.provider and args.action == "revoke" and not args.user:
        print("ztproxy sessions: --provider goes with --user", file=sys.stderr)
        return 2
    try:
        if args.action == "list":
            answer = api.list_sessions(args.user, args.provider)
        elif args.session:
            answer = api.revoke_session(args.session)
        elif args.user:
            answer = api.revoke_user(args.user, args.provider)
        else:
            answer = api.revoke_device(args.device)
    except AdminApiError as error:
        print(f"ztproxy sessions: {error}", file=sys.stderr)
        return 1
    if args.action == "revoke":
        count = answer.get("revoked", 0)
        print(f"revoked {count} session{'' if count == 1 else 's'}")
    elif args.json:
        print(json.dumps(answer, indent=2))
    else:
        listed = answer.get("sessions", [])
        print("\n".join(f"{item['handle']}  {item['provider']}  idle expiry {item['expires_at']}" for item in listed)
              if listed else f"no live sessions for {args.user}")
    return 0
