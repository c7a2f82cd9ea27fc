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
    ztproxy grants list [--state STATE] | approve|deny|revoke ID [--comment TEXT]
                          [-c FILE | --admin-url URL --token-file FILE]
    ztproxy forward-auth nginx|caddy|traefik|envoy -c FILE
    ztproxy --version

``-c`` defaults to the ``ZTPROXY_CONFIG`` environment variable. ``run``, ``check``, ``demo``,
``forward-auth`` and ``config`` are here; each other group of commands is a sibling module
with its ``add_parser`` and ``run``: ``cli_policy``, ``cli_keys``, ``cli_sessions``,
``cli_services``, ``cli_grants`` (``cli_admin_api``: how the last three reach the admin API).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ztproxy import __version__, cli_admin_api, cli_keys, cli_policy, cli_services, cli_sessions
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

    demo = commands.add_parser("demo", help="sign-in, step-up and the identity an app receives, on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port on 127.0.0.1 (default 8080)")
    demo.add_argument("--log-format", choices=("json", "console"), default="console")
    demo.add_argument("--state-dir", help="keys and secrets kept across restarts (default "
                                          "$XDG_STATE_HOME/ztproxy-demo or ~/.local/state/ztproxy-demo)")
    demo.add_argument("--revoke", metavar="USER", help="with the demo running: have its security-signals "
                                                       "transmitter end USER's sessions, then exit")
    cli_policy.add_parser(commands.add_parser("policy", help="test, explain and compare route policies"),
                          config_arg)
    cli_keys.add_parser(commands.add_parser("keys", help="create, rotate and list the keys signing identity "
                                                         "assertions"))
    cli_sessions.add_parser(commands.add_parser("sessions", help="list and revoke sessions through the admin API"),
                            config_arg)
    cli_services.add_parser(commands.add_parser("services", help="revoke services, clients and tokens through the "
                                                                 "admin API"), config_arg)
    from ztproxy import cli_grants

    cli_grants.add_parser(commands.add_parser("grants", help="decide and end just-in-time access requests "
                                                             "through the admin API"),
                          lambda sub: cli_admin_api.add_args(sub, config_arg))
    forward_auth = commands.add_parser(
        "forward-auth", help="print the configuration of a proxy that asks ztproxy about each request")
    forward_auth.add_argument("kind", choices=("nginx", "caddy", "traefik", "envoy"))
    config_arg(forward_auth)
    config = commands.add_parser("config", help="about the configuration file itself")
    config.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "schema", help="print the JSON Schema of the configuration file, for editors and CI")
    return parser


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
        return cli_policy.run(args)
    if args.command == "keys":
        return cli_keys.run(args)
    if args.command == "sessions":
        return cli_sessions.run(args)
    if args.command == "services":
        return cli_services.run(args)
    if args.command == "grants":
        from ztproxy import cli_grants

        return cli_grants.run(args, cli_admin_api.reach(args, "grants"))
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
