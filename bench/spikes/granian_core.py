"""Spike: the per-request work of ``work.py`` as a Granian RSGI app (hyper parses, Rust
serves the connections, Python gets each request on its asyncio loop).

    SPIKE_UPSTREAM=http://127.0.0.1:8080 granian --interface rsgi --working-dir bench/spikes \\
        --host 127.0.0.1 --port 8081 --workers 2 --loop uvloop --no-ws granian_core:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from work import Forwarder

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class App:
    def __init__(self) -> None:
        self.forwarder: Forwarder | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.forwarder = Forwarder(os.environ["SPIKE_UPSTREAM"])

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        forwarder = self.forwarder
        assert forwarder is not None
        body = await protocol() if scope.method in BODY_METHODS else None
        target = scope.path + ("?" + scope.query_string if scope.query_string else "")
        client = scope.client.rpartition(":")[0]
        status, headers, content = await forwarder.handle(scope.method, target, scope.headers.items(), client, body)
        protocol.response_bytes(status, headers, content)


app = App()
