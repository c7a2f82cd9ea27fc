"""``ztproxy grants list|approve|deny|revoke``: just-in-time access requests, through the admin API.

    ztproxy grants list [--state pending|active|ended|denied|cancelled|expired] [--json]
    ztproxy grants approve|deny|revoke ID [--comment TEXT]
                       [-c FILE | --admin-url URL --token-file FILE]

Registered from :mod:`ztproxy.cli`, which lends it how to reach the admin API. An admin's
approval completes a request whatever its rule's ``approvals`` is. Exit 2 for unusable
arguments or configuration, 1 when the admin API refuses or cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ztproxy.grants.model import STATES, format_duration

if TYPE_CHECKING:
    from ztproxy.admin_client import AdminClient

AddArgs = Callable[[argparse.ArgumentParser], None]


def add_parser(grants: argparse.ArgumentParser, admin_api_args: AddArgs) -> None:
    actions = grants.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="access requests: pending, active and recently ended")
    admin_api_args(listing)
    listing.add_argument("--state", choices=STATES, help="only requests in this state")
    listing.add_argument("--json", action="store_true", help="print the admin API's JSON answer")
    for action, what in (("approve", "approve a pending request as an admin (completes it)"),
                         ("deny", "deny a pending request"), ("revoke", "end an active grant now")):
        sub = actions.add_parser(action, help=what)
        admin_api_args(sub)
        sub.add_argument("id", help="the request's id, as `list` shows it")
        sub.add_argument("--comment", default="", help="why, for the record")


def run(args: argparse.Namespace, api: AdminClient | int) -> int:
    from ztproxy.admin_client import AdminApiError

    if isinstance(api, int):
        return api
    try:
        if args.action == "list":
            answer = api.grants(args.state)
        else:
            answer = api.decide_grant(args.id, args.action, args.comment)
    except AdminApiError as error:
        print(f"ztproxy grants: {error}", file=sys.stderr)
        return 1
    if args.action != "list":
        print(_line(answer["grant"]))
    elif args.json:
        print(json.dumps(answer, indent=2))
    else:
        listed = answer.get("grants", [])
        print("\n".join(_line(item) for item in listed) if listed else "no access requests")
    return 0


def _line(item: dict[str, Any]) -> str:
    ends = f" until {_when(item['ends_at'])}" if item.get("ends_at") else ""
    return (f"{item['id']}  {item['state']}{ends}  {item['route']}  {item['requester']}  "
            f"{format_duration(item['duration_s'])}  approvals {item['approvals']}/{item['approvals_needed']}  "
            f"{item['reason'] or '-'}")


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
