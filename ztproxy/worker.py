"""Entry point of one worker process started by the supervisor (``python -m ztproxy.worker``).

The supervisor passes the listening socket and a readiness pipe as inherited file
descriptors, and configurations as JSON lines on stdin: the first to start with, each
later one (validated by the supervisor on SIGHUP) to reload. stdin ends with the supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from ztproxy.config.schema import Config
from ztproxy.server import MAX_CONFIG_LINE, run_loop, serve_worker
from ztproxy.telemetry import configure_logging


async def _serve(args: argparse.Namespace) -> int:
    updates = asyncio.StreamReader(limit=MAX_CONFIG_LINE)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(updates), sys.stdin)
    config = Config.model_validate_json(await updates.readline())
    configure_logging(config.logging.level, args.log_format)
    sock = socket.socket(fileno=args.socket_fd)
    sock.setblocking(False)
    auth_sock = None
    if args.auth_socket_fd is not None:
        auth_sock = socket.socket(fileno=args.auth_socket_fd)
        auth_sock.setblocking(False)
    return await serve_worker(config, sock, args.ready_fd, updates, auth_sock)


def main() -> int:
    parser = argparse.ArgumentParser(prog="ztproxy-worker")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--auth-socket-fd", type=int, help="the server.auth_listen socket, when there is one")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    args = parser.parse_args()
    # The supervisor reloads; a hangup of the whole process group must not end the workers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run_loop(_serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
