"""Header hygiene as pure functions, with property tests for the identity-header rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from ztproxy import headers as headers_module
from ztproxy.headers import (
    DROP_ALL,
    DROP_PROTECTED,
    HOP_BY_HOP,
    REJECT,
    ForwardedFor,
    HeaderRules,
    RemovalPlans,
    connection_tokens,
    downstream_response_headers,
    fold_name,
    forwarded_for,
    header_rules,
    is_identity_header,
    parse_networks,
    upstream_request_headers,
)

UNTRUSTED = ForwardedFor(client_ip="192.0.2.1", peer_trusted=False, chain="192.0.2.1")
TOKEN_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~")


TRUSTED = ForwardedFor(client_ip="192.0.2.1", peer_trusted=True, chain="192.0.2.1, 10.0.0.1")
# What a configuration adds: a route's claim header and the signed posture header.
OWNED = ("X-Employee-Id", "X-Device-Posture")
RULES = header_rules(owned=OWNED, separators=DROP_PROTECTED)


def forward(headers: list[tuple[str, str]], forwarded: ForwardedFor = UNTRUSTED,
            upstream_host: str | None = "app:80", rules: HeaderRules = RULES) -> dict[str, list[str]]:
    out = upstream_request_headers(headers, rules=rules, forwarded=forwarded, proto="https", host="wiki.example",
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
    # Every other name the proxy neither owns nor relies on, spelled plainly, is kept in order with repeats.
    kept = [(n.lower(), v) for n, v in headers if fold_name(n) == n.lower()
            and not fold_name(n).startswith(("x-ztproxy", "x-forwarded-", "proxy"))
            and n.lower() not in {*RELIED_ON_NAMES, *OWNED_NAMES, "expect", "x-request-id"}]
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


# Every character a header name may hold that is not a letter or digit (RFC 9110 5.6.2 tchar).
SEPARATORS = "-_.!#$%&'*+^`|~"
# Names the proxy owns (never from a client) or relies on as spelled (framing, hop-by-hop, forwarding).
OWNED_NAMES = ("x-ztproxy-user", "x-ztproxy-email", "x-ztproxy-groups", "x-ztproxy-jwt-assertion",
               "x-ztproxy-anything", *(name.lower() for name in OWNED))
RELIED_ON_NAMES = ("content-length", "transfer-encoding", "host", "connection", "upgrade", "te", "trailer",
                   "keep-alive", "proxy-authorization", "proxy-connection", "proxy-anything", "forwarded",
                   "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                   "x-forwarded-prefix", "x-real-ip")


def any_spelling(name: str) -> st.SearchStrategy[str]:
    """Every case of ``name`` with each '-' written as any separator a header name may hold."""
    return st.tuples(*[st.sampled_from([c.lower(), c.upper()] if c.isalpha()
                                       else (list(SEPARATORS) if c == "-" else [c]))
                       for c in name]).map("".join)


def other_spelling(name: str) -> st.SearchStrategy[str]:
    """A spelling of ``name`` that is not ``name`` itself, whatever the case."""
    return any_spelling(name).filter(lambda spelled: spelled.lower() != name)


VALUES = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
PLAIN_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}(-[A-Za-z0-9]{1,8}){0,2}", fullmatch=True).filter(
    lambda name: fold_name(name) not in OWNED_NAMES + RELIED_ON_NAMES and not name.lower().startswith(
        ("x-ztproxy", "x-forwarded-", "proxy", "x-request-id", "expect")))


@given(st.sampled_from(OWNED_NAMES).flatmap(any_spelling), VALUES, st.sampled_from([UNTRUSTED, TRUSTED]))
def test_owned_headers_never_reach_upstream_in_any_spelling(name: str, value: str, peer: ForwardedFor) -> None:
    sent = forward([(name, value), ("X-Kept", "1")], forwarded=peer)
    assert not [got for got in sent if fold_name(got) == fold_name(name)], sent
    assert sent["x-kept"] == ["1"]


@given(st.sampled_from(RELIED_ON_NAMES).flatmap(other_spelling), VALUES, st.sampled_from([UNTRUSTED, TRUSTED]))
def test_framing_and_forwarding_names_pass_only_as_spelled(name: str, value: str, peer: ForwardedFor) -> None:
    sent = forward([(name, value)], forwarded=peer)
    assert name.lower() not in sent, sent
    # Whatever the proxy sends under the folded name is its own value, never the client's.
    assert value not in sent.get(fold_name(name), []), sent


@given(st.sampled_from(["Forwarded", "X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix"]), VALUES)
def test_forwarding_headers_from_a_trusted_proxy_only(name: str, value: str) -> None:
    assert name.lower() not in forward([(name, value)], forwarded=UNTRUSTED)
    assert forward([(name, value)], forwarded=TRUSTED)[name.lower()] == [value]


@given(PLAIN_NAMES, VALUES, st.sampled_from([DROP_PROTECTED, DROP_ALL, REJECT]))
def test_other_headers_pass_under_every_policy(name: str, value: str, policy: str) -> None:
    rules = header_rules(owned=OWNED, separators=policy)
    assert value in forward([(name, value)], rules=rules)[name.lower()]
    assert not rules.refused(name)


@given(PLAIN_NAMES.filter(lambda name: "-" in name).flatmap(
    lambda name: st.sampled_from("_.").map(lambda sep: name.replace("-", sep))), VALUES)
def test_separators_kept_dropped_or_refused_by_policy(name: str, value: str) -> None:
    assert forward([(name, value)], rules=header_rules(owned=OWNED, separators=DROP_PROTECTED))[name.lower()] \
        == [value]
    assert name.lower() not in forward([(name, value)], rules=header_rules(owned=OWNED, separators=DROP_ALL))
    rejecting = header_rules(owned=OWNED, separators=REJECT)
    assert rejecting.refused(name)
    assert name.lower() not in forward([(name, value)], rules=rejecting)  # had intake let it through


@given(st.sampled_from(OWNED_NAMES + RELIED_ON_NAMES).flatmap(other_spelling))
def test_reject_refuses_every_other_spelling_of_a_protected_name(name: str) -> None:
    assert header_rules(owned=OWNED, separators=REJECT).refused(name)
    assert not header_rules(owned=OWNED, separators=DROP_PROTECTED).refused(name)


def test_exact_spellings_the_proxy_relies_on_pass() -> None:
    sent = forward([("Content-Length", "5"), ("content-type", "text/plain"), ("Host", "wiki.example")],
                   upstream_host=None)
    assert sent["content-length"] == ["5"] and sent["host"] == ["wiki.example"]


def test_httpoxy_proxy_header_is_dropped() -> None:
    # CVE-2016-5385: CGI turns "Proxy" into HTTP_PROXY, the app's outbound proxy.
    assert "proxy" not in forward([("Proxy", "http://evil.example:3128")], forwarded=TRUSTED)


def test_fold_name() -> None:
    assert fold_name("X_Ztproxy.User") == "x-ztproxy-user"
    assert fold_name("Content~Length") == "content-length"
    assert fold_name("X-Plain-Name") == "x-plain-name"


# --- one pass over the headers -------------------------------------------------------------------

class CountingRules(HeaderRules):
    """Counts the verdicts worked out, to show each name's is worked out once and then looked up."""

    worked_out: list[str]

    def verdict(self, name: str) -> int:
        self.worked_out.append(name)
        return super().verdict(name)


def test_each_header_name_is_judged_once_then_looked_up() -> None:
    rules = CountingRules(owned=frozenset(fold_name(name) for name in OWNED))
    object.__setattr__(rules, "worked_out", [])
    headers = [("Host", "wiki.example"), ("Cookie", "a=1"), ("X-Ztproxy-User", "mallory"), ("Cookie", "b=2")]
    for _ in range(50):
        sent = forward(headers, rules=rules)
        assert sent["cookie"] == ["a=1", "b=2"] and "x-ztproxy-user" not in sent
    assert sorted(rules.worked_out) == ["Cookie", "Host", "X-Ztproxy-User"]


def test_a_trusted_proxys_scheme_and_host_are_its_first_values() -> None:
    headers = [("X-Forwarded-Proto", "http"), ("x-forwarded-proto", "https"), ("X-FORWARDED-HOST", "a.example"),
               ("X-Forwarded-Host", "b.example"), ("Accept", "*/*")]
    trusted = forward(headers, forwarded=TRUSTED)
    assert trusted["x-forwarded-proto"] == ["http"] and trusted["x-forwarded-host"] == ["a.example"]
    untrusted = forward(headers, forwarded=UNTRUSTED)
    assert untrusted["x-forwarded-proto"] == ["https"] and untrusted["x-forwarded-host"] == ["wiki.example"]
    assert trusted["accept"] == untrusted["accept"] == ["*/*"]


def test_a_remembered_plan_reads_each_requests_own_connection_list() -> None:
    # The same names in the same order: one plan, but what Connection lists is read every time.
    rules = header_rules(owned=OWNED, separators=DROP_PROTECTED)
    first = forward([("Connection", "keep-alive"), ("X-Secret", "1"), ("X-Ztproxy-User", "m")], rules=rules)
    assert first["x-secret"] == ["1"] and "x-ztproxy-user" not in first
    second = forward([("Connection", "X-Secret"), ("X-Secret", "2"), ("X-Ztproxy-User", "m")], rules=rules)
    assert "x-secret" not in second and "x-ztproxy-user" not in second
    third = forward([("Connection", "close"), ("X-Secret", "3"), ("X-Ztproxy-User", "m")], rules=rules)
    assert third["x-secret"] == ["3"]


def test_a_plan_is_per_trust_a_trusted_proxys_forwarding_headers_never_pass_an_untrusted_peer() -> None:
    rules = header_rules(owned=OWNED, separators=DROP_PROTECTED)
    headers = [("X-Real-IP", "6.6.6.6"), ("Accept", "*/*")]
    assert forward(headers, forwarded=TRUSTED, rules=rules)["x-real-ip"] == ["6.6.6.6"]
    assert "x-real-ip" not in forward(headers, forwarded=UNTRUSTED, rules=rules)
    assert forward(headers, forwarded=TRUSTED, rules=rules)["x-real-ip"] == ["6.6.6.6"]


def test_removal_plans_are_bounded_and_long_sequences_are_judged_without_one() -> None:
    plans = RemovalPlans(lambda name: name.lower() in HOP_BY_HOP)
    for index in range(headers_module._PLANS_LIMIT * 2 + 3):
        out = CIMultiDict([(f"X-Name-{index}", "v"), ("Keep-Alive", "5")])
        plans.apply(out)
        assert list(out.items()) == [(f"X-Name-{index}", "v")]
        assert len(plans._plans) <= headers_module._PLANS_LIMIT
    many = CIMultiDict([(f"X-{index}", "v") for index in range(headers_module._PLAN_MAX_NAMES + 1)])
    many.add("Upgrade", "h2c")
    plans.apply(many)
    assert "Upgrade" not in many and len(many) == headers_module._PLAN_MAX_NAMES + 1
    assert (*many, "Upgrade") not in plans._plans


def test_connection_names_are_dropped_whatever_their_case_and_the_rest_keeps_its_order() -> None:
    headers = [("A", "1"), ("Connection", "X-SECRET , close"), ("x-secret", "s"), ("B", "2"), ("Close", "c"),
               ("A", "3")]
    out = upstream_request_headers(headers, rules=RULES, forwarded=UNTRUSTED, proto="https", host="wiki.example",
                                   request_id="rid", upstream_host=None)
    assert [(name, value) for name, value in out.items() if name in ("A", "B")] == [("A", "1"), ("B", "2"), ("A", "3")]
    assert "x-secret" not in out and "close" not in out and "connection" not in out


def test_first_refused_names_the_first_refused_header_only_under_reject() -> None:
    names = ["Accept", "X_Custom", "X-Ztproxy_User"]
    assert header_rules(owned=OWNED, separators=REJECT).first_refused(names) == "X_Custom"
    assert header_rules(owned=OWNED, separators=REJECT).first_refused(["Accept", "Cookie"]) is None
    assert header_rules(owned=OWNED, separators=DROP_PROTECTED).first_refused(names) is None


def popping_each(headers: list[tuple[str, str]], also_removed: frozenset[str]) -> list[tuple[str, str]]:
    """The response headers as the proxy cleaned them before the one pass: a copy, then a popall per name."""
    out = CIMultiDict(headers)
    listed = {token.strip().lower() for value in out.getall("Connection", ()) for token in value.split(",")}
    for name in HOP_BY_HOP | also_removed | listed:
        out.popall(name, None)
    return list(out.items())


RESPONSE_NAMES = st.sampled_from(["Set-Cookie", "Content-Type", "Content-Length", "content-length", "Connection",
                                  "connection", "Keep-Alive", "Transfer-Encoding", "X-Hop", "x-hop", "Close",
                                  "Upgrade", "Trailer", "Server", "Vary"])
CONNECTION_VALUES = st.lists(st.sampled_from(["keep-alive", "close", "X-Hop", "upgrade", "Server", " vary "]),
                             max_size=3).map(", ".join)


@given(st.lists(st.tuples(RESPONSE_NAMES, CONNECTION_VALUES), max_size=12), st.booleans())
def test_response_headers_in_one_pass_are_those_of_a_popall_per_name(headers: list[tuple[str, str]],
                                                                      length_removed: bool) -> None:
    also = frozenset({"content-length"}) if length_removed else frozenset()
    assert list(downstream_response_headers(headers, also_removed=also).items()) == popping_each(headers, also)


def test_response_content_length_goes_only_when_asked() -> None:
    headers = [("Content-Length", "5"), ("Content-Type", "text/plain"), ("Connection", "keep-alive")]
    assert downstream_response_headers(headers)["Content-Length"] == "5"
    kept = downstream_response_headers(headers, also_removed=frozenset({"content-length"}))
    assert list(kept.items()) == [("Content-Type", "text/plain")]


def test_connection_tokens_of_one_value_or_several() -> None:
    assert connection_tokens(["Keep-Alive"]) == {"keep-alive"}
    assert connection_tokens(["Keep-Alive, X-A", " x-B ,,", ""]) == {"keep-alive", "x-a", "x-b"}
    assert connection_tokens([]) == frozenset()
