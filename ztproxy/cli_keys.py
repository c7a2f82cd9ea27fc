"""``ztproxy keys generate|rotate|list|jwks``: the keys signing identity assertions, in their directory.

    ztproxy keys generate|rotate|list|jwks --dir DIR   (or -c FILE: its assertion section)

Registered from :mod:`ztproxy.cli`. Exit 1, with the reason, for anything that cannot be done.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ztproxy.errors import ConfigError

if TYPE_CHECKING:
    from ztproxy.assertion.keys import KeyStatus, RotationPolicy


def _duration(text: str) -> float:
    from ztproxy.config.values import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0s")
    return seconds


def add_parser(keys: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
