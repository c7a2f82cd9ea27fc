"""server.http2 and routes[].upstream_protocol: defaults, bad values, and gRPC routes HTTP/2 cannot reach."""

from __future__ import annotations

import textwrap

import pytest

from ztproxy.config import load_text
from ztproxy.errors import ConfigError


def _load(text: str) -> None:
    load_text(textwrap.dedent(text).lstrip("\n"), env={})


def _issues(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        _load(text)
    return [(issue.path, issue.message) for issue in caught.value.issues]


def test_defaults() -> None:
    config = load_text("routes:\n  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}\n", env={})
    assert config.server.http2.enabled and not config.server.http2.cleartext
    assert config.server.http2.max_concurrent_streams == 100
    assert config.routes[0].upstream_protocol == "http1"


def test_bad_values_are_reported_together_with_their_paths() -> None:
    found = _issues("""
        server:
          http2: {max_concurrent_streams: 0, cleartext: maybe}
        routes:
          - {name: app, upstream: 'http://127.0.0.1:1', upstream_protocol: h3, allow: [{public: true}]}
        """)
    paths = sorted(path for path, _ in found)
    assert paths == ["routes[0].upstream_protocol", "server.http2.cleartext", "server.http2.max_concurrent_streams"]


def test_a_grpc_route_needs_http2_from_clients() -> None:
    grpc_route = "routes:\n  - {name: rpc, upstream: 'http://127.0.0.1:1', upstream_protocol: grpc, " \
                 "allow: [{public: true}]}\n"
    assert _issues(grpc_route) == [("routes[0].upstream_protocol",
                                    "gRPC clients need HTTP/2, which this listener does not offer: configure "
                                    "server.tls (with server.http2.enabled), or server.http2.cleartext: true")]
    _load("server:\n  http2: {cleartext: true}\n" + grpc_route)
