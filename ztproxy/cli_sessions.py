"""``ztproxy sessions list|revoke``: users' sessions, listed and ended through the admin API.

    ztproxy sessions list --user SUB | revoke --session HANDLE | --user SUB | --device ID
                          [-c FILE | --admin-url URL --token-file FILE]

Registered from :mod:`ztproxy.cli`; sessions end on every worker and replica at once
(:mod:`ztproxy.sessions.revocation`).
"""

from __future__ import annotations

import argparse
import json
import sys

from ztproxy import cli_admin_api
from ztproxy.cli_admin_api import ConfigArg


def add_parser(sessions: argparse.ArgumentParser, config_arg: ConfigArg) -> None:
    actions = sessions.add_subparsers(dest="action", required=True, metavar="ACTION")

    def where(sub: argparse.ArgumentParser) -> None:
        cli_admin_api.add_args(sub, config_arg)
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


def run(args: argparse.Namespace) -> int:
    """Exit 2 for unusable arguments or configuration, 1 when the admin API refuses or cannot be reached."""
    from ztproxy.admin_client import AdminApiError

    api = cli_admin_api.reach(args, "sessions")
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
