"""How the commands that act through the admin API (``sessions``, ``services``, ``grants``) reach it.

``-c FILE`` (its ``server.admin_listen`` and ``server.admin_token``), or ``--admin-url`` and
``--token-file``; a client that cannot be had is exit 2, with the reason.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ztproxy.errors import ConfigError

if TYPE_CHECKING:
    from ztproxy.admin_client import AdminClient

ConfigArg = Callable[[argparse.ArgumentParser], None]  # adds -c FILE (the command line's own default)

def add_args(sub: argparse.ArgumentParser, config_arg: ConfigArg) -> None:
    """How ``ztproxy sessions|services|grants`` reach the admin API: -c FILE, or --admin-url and --token-file."""
    config_arg(sub)
    sub.add_argument("--admin-url", help="the admin listener, e.g. http://127.0.0.1:9090 "
                                         "(default: server.admin_listen of -c)")
    sub.add_argument("--token-file", help="file holding the admin token (default: server.admin_token of -c)")


def reach(args: argparse.Namespace, command: str) -> AdminClient | int:
    """The admin API's client for ``ztproxy sessions|services|grants``; an exit code (2) when it cannot be had."""
    from ztproxy import admin_client

    try:
        return admin_client.reach(args.admin_url, args.token_file, args.config)
    except admin_client.AdminSetupError as error:
        print(f"ztproxy {command}: {error}", file=sys.stderr)
    except ConfigError as error:
        print(error.render(), file=sys.stderr)
    return 2
