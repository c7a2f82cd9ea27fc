"""What each spike core does with the hygiene suite's bad requests, on the wire.

Sends every request of ``tests/integration/test_hygiene.py``'s ``SMUGGLING`` table, and
oversized input (a 10 KiB request line, 150 headers, a 40 KiB header), to each core of
``run_spikes.py`` and prints the status line it answered, how many answers came (more than
one: something was smuggled behind the first) and whether the connection was closed.
ztproxy's own tests want 400 and a close for each smuggling attempt, 414 and 431 for the
rest. The cores are spikes without ztproxy's intake: an answer "passed on" (it carries the
per-request work's request id) means the core let the request through to the per-request
work, which forwarded it and relayed the upstream's (nginx's) answer.

    .venv/bin/python bench/spikes/probe_cores.py --python /tmp/perf-venv/bin/python
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

SPIKES = Path(__file__).resolve().parent
sys.path[:0] = [str(SPIKES), str(SPIKES.parent), str(SPIKES.parent.parent)]

from run_spikes import CORES, start_core  # noqa: E402
from targets import start_upstream  # noqa: E402

from tests.integration.test_hygiene import SMUGGLING  # noqa: E402

COOKIE = b"Cookie: ztproxy_session=spike-session-0123456789abcdef\r\n"
OVERSIZED = {
    "request-line-10KiB": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"\r\n",
    "150-headers": b"GET / HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"".join(
        b"X-H%d: v\r\n" % n for n in range(150)) + b"\r\n",
    "header-40KiB": b"GET / HTTP/1.1\r\nHost: x\r\n" + COOKIE + b"X-Big: " + b"b" * 40_000 + b"\r\n\r\n",
}


def exchange(port: int, request: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """What the server sent back, and whether it closed the connection within ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # Signed in, so that the per-request work forwards what the core let through.
        sock.sendall(request if COOKIE in request else request.replace(b"\r\n", b"\r\n" + COOKIE, 1))
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        return data, True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="a python with granian, httptools, uvloop, aiohttp")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ztproxy-probe-"))
    upstream, upstream_url = start_upstream(workdir)
    vectors = {**SMUGGLING, **OVERSIZED}
    results: dict[str, dict[str, str]] = {name: {} for name in vectors}
    try:
        for core in CORES:
            process, url = start_core(core, workdir, upstream_url, 1, python=args.python)
            port = urlsplit(url).port or 80
            try:
                for name, request in vectors.items():
                    data, closed = exchange(port, request)
                    status = data[9:12].decode(errors="replace") or "none"
                    answers = data.count(b"HTTP/1.")
                    several = f" x{answers}" if answers > 1 else ""
                    # The per-request work's request id: the core passed the request on (to the upstream).
                    by = " passed on" if b"\r\nx-request-id: " in data.lower() else ""
                    results[name][core] = f"{status}{several}{by}, {'closed' if closed else 'open'}"
            finally:
                process.stop()
    finally:
        upstream.stop()
    print("| request | " + " | ".join(CORES) + " |")
    print("| --- |" + " --- |" * len(CORES))
    for name in vectors:
        print(f"| {name} | " + " | ".join(results[name].get(core, "-") for core in CORES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
