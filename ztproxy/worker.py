"""Entry point of one worker process started by the supervisor (``python -m ztproxy.worker``).

The supervisor passes the listening socket and a readiness pipe as inherited file
descriptors and the validated configuration as JSON on stdin.
"""

from __future__ import annotations

import argparse
import socket
import sys

from ztproxy.config.schema import Config
from ztproxy.server import run_loop, serve_worker
from ztproxy.telemetry import configure_logging


def main() -> int:
    parser = argparse.ArgumentParser(prog="ztproxy-worker")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--log-format", choices=("json", "console"), default="json")
    args = parser.parse_args()
    config = Config.model_validate_json(sys.stdin.buffer.read())
    configure_logging(config.logging.level, args.log_format)
    sock = socket.socket(fileno=args.socket_fd)
    sock.setblocking(False)
    return run_loop(serve_worker(config, sock, args.ready_fd))


if __name__ == "__main__":
    raise SystemExit(main())
