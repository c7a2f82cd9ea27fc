"""``ztproxy services revoke|lift|list``: services, OAuth clients and tokens refused through the admin API.

    ztproxy services revoke|lift --client-id ID | --service SPIFFE_ID | --jti JTI [--exp UNIX] | list
                          [-c FILE | --admin-url URL --token-file FILE]

Registered from :mod:`ztproxy.cli`; a revocation reaches every worker and replica at once
(:mod:`ztproxy.service_revocations`).
"""

from __future__ import annotations

import argparse
import json
import sys

from ztproxy import cli_admin_api
from ztproxy.cli_admin_api import ConfigArg


def add_parser(services: argparse.ArgumentParser, config_arg: ConfigArg) -> None:
    actions = services.add_subparsers(dest="action", required=True, metavar="ACTION")

    def target(sub: argparse.ArgumentParser) -> None:
        group = sub.add_mutually_exclusive_group(required=True)
        group.add_argument("--client-id", metavar="ID", help="an OAuth client: every token it has or will get")
        group.add_argument("--service", metavar="SPIFFE_ID", help="a workload, by its SPIFFE ID")
        group.add_argument("--jti", metavar="JTI", help="one access token, by its jti")

    revoke = actions.add_parser("revoke", help="refuse a client, service or token on every worker and replica")
    cli_admin_api.add_args(revoke, config_arg)
    target(revoke)
    revoke.add_argument("--exp", type=int, metavar="UNIX", help="with --jti: the token's exp (default: revoked 24h)")
    listing = actions.add_parser("list", help="the revocations in force")
    cli_admin_api.add_args(listing, config_arg)
    listing.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    lift = actions.add_parser("lift", help="end a revocation")
    cli_admin_api.add_args(lift, config_arg)
    target(lift)


def run(args: argparse.Namespace) -> int:
    """Exit 2 for unusable arguments or configuration, 1 when the admin API refuses or cannot be reached."""
    from ztproxy.admin_client import AdminApiError

    if args.action == "revoke" and args.exp is not None and not args.jti:
        print("ztproxy services: --exp goes with --jti", file=sys.stderr)
        return 2
    api = cli_admin_api.reach(args, "services")
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
