"""identity_headers: the plain headers carry exact values or nothing, never an injection."""

from __future__ import annotations

import weakref
from typing import Any

import pytest

from ztproxy.assertion import claim_header_problem, identity_headers
from ztproxy.policy.model import Identity


def headers(identity: Identity, **claim_headers: str) -> dict[str, str]:
    pairs = identity_headers(identity, claim_headers={k.replace("_", "-"): v for k, v in claim_headers.items()})
    assert len({name.lower() for name, _ in pairs}) == len(pairs)  # never a header twice
    return dict(pairs)


def test_user_is_the_subject_then_email_and_sorted_groups() -> None:
    identity = Identity(subject="u-1", email="alice@corp.example", name="Alice", groups=frozenset({"staff", "eng"}))
    assert identity_headers(identity, claim_headers={}) == [
        ("X-Ztproxy-User", "u-1"), ("X-Ztproxy-Email", "alice@corp.example"), ("X-Ztproxy-Groups", "eng,staff"),
    ]
    assert headers(Identity(subject="svc")) == {"X-Ztproxy-User": "svc"}


@pytest.mark.parametrize("bad", ["a\r\nX-Ztproxy-User: admin", "a\nb", "a\x00b", "a\tb", "a\x7fb", " admin",
                                 "admin ", "", "café"])
def test_unsafe_values_are_left_out_not_mangled(bad: str) -> None:
    identity = Identity(subject=bad, email=bad, groups=frozenset({bad, "staff"}), claims={"c": bad})
    assert headers(identity, X_Employee="c") == {"X-Ztproxy-Groups": "staff"}


def test_a_group_with_a_comma_is_left_out_so_it_cannot_read_as_two() -> None:
    identity = Identity(subject="u-1", groups=frozenset({"staff,payroll-admin", "eng", "a b"}))
    assert headers(identity)["X-Ztproxy-Groups"] == "a b,eng"
    assert "X-Ztproxy-Groups" not in headers(Identity(subject="u-1", groups=frozenset({"x,y"})))


@pytest.mark.parametrize(("claim", "value"), [
    ("E-123", "E-123"),
    (42, "42"),
    (True, "true"),
    (["b", "a"], '["b","a"]'),
    ({"z": 1, "a": "é"}, '{"a":"\\u00e9","z":1}'),
    (["line\nbreak"], '["line\\nbreak"]'),  # JSON escapes it: header-safe
    (None, None),
    (float("nan"), None),
])
def test_claim_headers(claim: Any, value: str | None) -> None:
    identity = Identity(subject="u-1", claims={"employee_id": claim})
    assert headers(identity, X_Employee_Id="employee_id").get("X-Employee-Id") == value
    assert "X-Employee-Id" not in headers(Identity(subject="u-1"), X_Employee_Id="employee_id")


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Host", "Cookie", "Authorization",
                                  "X-Forwarded-For", "Connection", "X-Ztproxy-User", "x-ztproxy-jwt-assertion",
                                  "X-Request-Id", "Bad Name", "X-A:b", "", "Content_Length", "X.Forwarded.For",
                                  "X-Forwarded-Prefix", "Proxy", "X_Ztproxy_User"])
def test_claims_never_set_framing_routing_credential_or_proxy_headers(name: str) -> None:
    assert claim_header_problem(name) is not None
    identity = Identity(subject="u-1", claims={"c": "5"})
    assert identity_headers(identity, claim_headers={name: "c"}) == [("X-Ztproxy-User", "u-1")]


def test_ordinary_names_may_carry_claims() -> None:
    assert claim_header_problem("X-Employee-Id") is None
    assert claim_header_problem("X-Ztproxy-Department") is None  # the proxy strips client-sent ones


def test_the_proxy_remembers_headers_per_identity_object_and_a_new_identity_gets_its_own() -> None:
    from ztproxy.upstream_identity import _identity_headers
    claims = {"X-Dept": "dept"}
    before = Identity(subject="alice", groups=frozenset({"staff"}), claims={"dept": "eng"})
    first = _identity_headers(before, claims)
    assert _identity_headers(before, claims) is first  # worked out once
    assert ("X-Ztproxy-Groups", "staff") in first and ("X-Dept", "eng") in first
    # A refresh builds a new identity: its new groups show at once, never the old headers.
    after = Identity(subject="alice", groups=frozenset({"staff", "payroll"}), claims={"dept": "eng"})
    assert ("X-Ztproxy-Groups", "payroll,staff") in _identity_headers(after, claims)
    # Another route's claim_headers is another entry.
    assert ("X-Dept", "eng") not in _identity_headers(before, {})


def test_the_remembered_headers_go_with_their_identity() -> None:
    from ztproxy.upstream_identity import _HEADERS, _identity_headers
    claims = {"X-Dept": "dept"}
    kept = Identity(subject="bob", claims={"dept": "ops"})
    remembered = _identity_headers(kept, claims)
    entries = len(_HEADERS)
    replaced = Identity(subject="alice", claims={"dept": "eng"})  # a session copy the manager let go of
    assert ("X-Dept", "eng") in _identity_headers(replaced, claims)
    assert len(_HEADERS) == entries + 1
    gone = weakref.ref(replaced)
    del replaced
    assert gone() is None  # the map did not keep it alive
    assert len(_HEADERS) == entries  # nor its entry
    assert _identity_headers(kept, claims) is remembered  # the living one's stays
