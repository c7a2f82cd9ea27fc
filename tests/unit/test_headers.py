"""Header hygiene as pure functions, with property tests for the identity-header rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ztproxy.headers import (
    ForwardedFor,
    downstream_response_headers,
    forwarded_for,
    is_identity_header,
    parse_networks,
    upstream_request_headers,
)

UNTRUSTED = ForwardedFor(client_ip="192.0.2.1", peer_trusted=False, chain="192.0.2.1")
TOKEN_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~")


def forward(headers: list[tuple[str, str]], forwarded: ForwardedFor = UNTRUSTED,
            upstream_host: str | None = "app:80") -> dict[str, list[str]]:
    out = upstream_request_headers(headers, forwarded=forwarded, proto="https", host="wiki.example",
                                   request_id="rid", upstream_host=upstream_host)
    result: dict[str, list[str]] = {}
    for name, value in out.items():
        result.setdefault(name.lower(), []).append(value)
    return result


def spellings(name: str) -> st.SearchStrategy[str]:
    """Every case and '-'/'_' spelling of ``name``."""
    return st.tuples(*[st.sampled_from([c.lower(), c.upper()] if c.isalpha() else (["-", "_"] if c == "-" else [c]))
                       for c in name]).map("".join)


@given(spellings("x-ztproxy-user"), st.text(TOKEN_CHARS, max_size=10))
def test_any_spelling_of_identity_headers_is_recognised(prefix: str, suffix: str) -> None:
    assert is_identity_header(prefix + suffix)


@given(st.lists(st.tuples(st.one_of(spellings("x-ztproxy-"), st.text(TOKEN_CHARS, min_size=1, max_size=12)),
                          st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)), max_size=20))
def test_identity_headers_never_reach_upstream(headers: list[tuple[str, str]]) -> None:
    sent = forward(headers)
    assert not [name for name in sent if name.replace("_", "-").startswith("x-ztproxy")]
    # Everything that was not hop-by-hop, forwarding or identity is kept, in order, with repeats.
    kept = [(n.lower(), v) for n, v in headers if not is_identity_header(n)
            and n.lower() not in {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                                  "proxy-authorization", "proxy-authenticate", "proxy-connection", "host",
                                  "expect", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
                                  "x-forwarded-host", "forwarded", "x-real-ip"}]
    for name, value in kept:
        assert value in sent.get(name, []), (name, value)


def test_not_identity_headers() -> None:
    assert not is_identity_header("X-Zt-Proxy-User")
    assert not is_identity_header("Ztproxy-User")
    assert not is_identity_header("X-Forwarded-For")


def test_connection_named_headers_dropped() -> None:
    sent = forward([("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("connection", "X-Other"),
                    ("X-Other", "2"), ("X-Kept", "3")])
    assert "x-secret" not in sent and "x-other" not in sent and "connection" not in sent
    assert sent["x-kept"] == ["3"]


def test_repeated_headers_preserved_in_order() -> None:
    sent = forward([("Cookie", "a=1"), ("Accept", "text/html"), ("Cookie", "b=2")])
    assert sent["cookie"] == ["a=1", "b=2"]


def test_host_replaced_or_preserved() -> None:
    assert forward([("Host", "wiki.example")])["host"] == ["app:80"]
    assert forward([("Host", "wiki.example")], upstream_host=None)["host"] == ["wiki.example"]


def test_untrusted_peer_cannot_set_forwarding_headers() -> None:
    sent = forward([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-Proto", "http"), ("Forwarded", "for=6.6.6.6"),
                    ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Host", "evil")])
    assert sent["x-forwarded-for"] == ["192.0.2.1"]
    assert sent["x-forwarded-proto"] == ["https"]
    assert sent["x-forwarded-host"] == ["wiki.example"]
    assert "forwarded" not in sent and "x-real-ip" not in sent


def test_forwarded_for_walks_past_trusted_hops_only() -> None:
    trusted = parse_networks(["10.0.0.0/8"])
    result = forwarded_for("10.0.0.1", ["198.51.100.7, 10.0.0.5"], trusted)
    assert result.client_ip == "198.51.100.7"
    assert result.chain == "198.51.100.7, 10.0.0.5, 10.0.0.1"
    # A client can prepend anything; the right-most untrusted address is still the client.
    spoofed = forwarded_for("10.0.0.1", ["1.1.1.1, 203.0.113.5"], trusted)
    assert spoofed.client_ip == "203.0.113.5"
    untrusted = forwarded_for("203.0.113.5", ["1.1.1.1"], trusted)
    assert untrusted.client_ip == "203.0.113.5" and untrusted.chain == "203.0.113.5"
    assert not untrusted.peer_trusted
    garbage = forwarded_for("10.0.0.1", ["not-an-ip"], trusted)
    assert garbage.client_ip == "not-an-ip"  # what a trusted proxy claims is reported as is


def test_expect_and_request_id_not_forwarded_from_client() -> None:
    sent = forward([("Expect", "100-continue"), ("X-Request-Id", "client-chosen")])
    assert "expect" not in sent
    assert sent["x-request-id"] == ["rid"]


def test_response_hop_by_hop_removed_set_cookie_kept() -> None:
    out = downstream_response_headers([("Set-Cookie", "a=1"), ("Connection", "X-Hop"), ("X-Hop", "1"),
                                       ("Transfer-Encoding", "chunked"), ("Set-Cookie", "b=2"),
                                       ("Keep-Alive", "timeout=5")])
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert "X-Hop" not in out and "Transfer-Encoding" not in out and "Keep-Alive" not in out
