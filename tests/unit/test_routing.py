"""Host normalisation and the route table: which route a (host, canonical path) reaches."""

from __future__ import annotations

import pytest

from ztproxy.routing import RouteTable, normalize_host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("wiki.corp.example", "wiki.corp.example"),
        ("Wiki.CORP.Example", "wiki.corp.example"),
        ("wiki.corp.example:8443", "wiki.corp.example"),
        ("wiki.corp.example.", "wiki.corp.example"),
        ("Wiki.Corp.Example.:443", "wiki.corp.example"),
        ("localhost", "localhost"),
        ("localhost:080", "localhost"),
        ("my_service:8000", "my_service"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("[::1]:8080", "[::1]"),
        ("[0:0:0:0:0:0:0:1]", "[::1]"),
        ("[2001:DB8::A]:443", "[2001:db8::a]"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253 chars
        ("xn--caf-dma.example", "xn--caf-dma.example"),
        ("h:65535", "h"),
    ],
)
def test_normalize_host(value: str, expected: str) -> None:
    assert normalize_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":8080",
        "host:",
        "host:0",
        "host:65536",
        "host:123456",
        "host:80a",
        "host:-1",
        "host:+80",
        "host:8080:9090",
        "host:\u0668\u0660",  # Arabic-Indic digits are str.isdigit() but not a port
        "wiki example",
        " wiki.example",
        "wiki.example ",
        "wiki.example\t",
        "wiki.example..",
        ".wiki.example",
        "wiki..example",
        ".",
        "wiki/example",
        "wiki.example/",
        "user@wiki.example",
        "wiki%2eexample",
        "*.example",
        "caf\u00e9.example",
        "\u212aiwi.example",  # KELVIN SIGN lowercases to ASCII "k"
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 chars
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:99999",
        "[fe80::1%25eth0]",
        "[fe80::1%eth0]",
        "[v1.future]",
        "[127.0.0.1]",
        "::1",
        "[]",
    ],
)
def test_normalize_host_invalid(value: str) -> None:
    assert normalize_host(value) is None


def test_exact_host_then_wildcards_longest_suffix_first_then_any_host() -> None:
    table = RouteTable([
        ("wiki.corp.example", "/", "exact"),
        ("*.eng.corp.example", "/", "eng-wildcard"),
        ("*.corp.example", "/", "corp-wildcard"),
        (None, "/", "any"),
    ])
    assert table.match("wiki.corp.example", "/x") == "exact"
    assert table.match("build.eng.corp.example", "/x") == "eng-wildcard"
    assert table.match("a.b.eng.corp.example", "/x") == "eng-wildcard"
    assert table.match("eng.corp.example", "/x") == "corp-wildcard"
    assert table.match("mail.corp.example", "/x") == "corp-wildcard"
    assert table.match("corp.example", "/x") == "any"
    assert table.match("elsewhere.example", "/x") == "any"


def test_first_tier_with_a_matching_prefix_wins_even_with_a_shorter_prefix() -> None:
    table = RouteTable([
        ("wiki.corp.example", "/wiki", "exact-wiki"),
        ("*.corp.example", "/", "wildcard-root"),
        ("*.corp.example", "/wiki/admin", "wildcard-admin"),
        (None, "/", "any"),
    ])
    # The exact tier has no prefix for "/other": fall through to the wildcard tier.
    assert table.match("wiki.corp.example", "/other") == "wildcard-root"
    # The exact tier matches, so the longer wildcard prefix in a later tier does not count.
    assert table.match("wiki.corp.example", "/wiki/admin/x") == "exact-wiki"
    assert table.match("a.corp.example", "/wiki/admin/x") == "wildcard-admin"


def test_more_specific_wildcard_without_matching_prefix_falls_through() -> None:
    table = RouteTable([
        ("*.eng.corp.example", "/ci", "eng-ci"),
        ("*.corp.example", "/", "corp"),
    ])
    assert table.match("x.eng.corp.example", "/ci/run") == "eng-ci"
    assert table.match("x.eng.corp.example", "/docs") == "corp"


def test_wildcard_needs_at_least_one_more_label() -> None:
    table = RouteTable([("*.corp.example", "/", "corp")])
    assert table.match("a.corp.example", "/") == "corp"
    assert table.match("a.b.corp.example", "/") == "corp"
    assert table.match("corp.example", "/") is None
    assert table.match("xcorp.example", "/") is None
    assert table.match("corp.example.evil", "/") is None
    assert table.match("a.corp.example.evil", "/") is None
    assert table.match("example", "/") is None


@pytest.mark.parametrize(
    ("prefix", "path", "matches"),
    [
        ("/api", "/api", True),
        ("/api", "/api/", True),
        ("/api", "/api/x", True),
        ("/api", "/api/x/y/", True),
        ("/api", "/apix", False),
        ("/api", "/ap", False),
        ("/api", "/", False),
        ("/api", "/x/api", False),
        ("/api/", "/api/", True),
        ("/api/", "/api/x", True),
        ("/api/", "/api", False),
        ("/api/", "/apix/", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
        ("/a/b", "/a", False),
        ("/a/b/", "/a/b", False),
        ("/a/b/", "/a/b/c", True),
    ],
)
def test_prefixes_match_on_segment_boundaries(prefix: str, path: str, matches: bool) -> None:
    table = RouteTable([(None, prefix, "route")])
    assert (table.match(None, path) == "route") is matches
    assert (table.match("any.example", path) == "route") is matches


def test_longest_prefix_wins_within_a_tier() -> None:
    table = RouteTable([
        ("wiki.example", "/", "root"),
        ("wiki.example", "/api", "api"),
        ("wiki.example", "/api/", "api-slash"),
        ("wiki.example", "/api/admin", "admin"),
        ("wiki.example", "/api/admin/keys/", "keys"),
    ])
    assert table.match("wiki.example", "/") == "root"
    assert table.match("wiki.example", "/apix") == "root"
    assert table.match("wiki.example", "/api") == "api"
    assert table.match("wiki.example", "/api/") == "api-slash"
    assert table.match("wiki.example", "/api/users") == "api-slash"
    assert table.match("wiki.example", "/api/admin") == "admin"
    assert table.match("wiki.example", "/api/admin/") == "admin"
    assert table.match("wiki.example", "/api/admin/keys") == "admin"
    assert table.match("wiki.example", "/api/admin/keys/1") == "keys"
    assert table.match("wiki.example", "/api/adminx") == "api-slash"


def test_long_paths_beyond_the_longest_prefix() -> None:
    table = RouteTable([(None, "/a", "a"), (None, "/a/b/", "ab")])
    deep = "/a/b/" + "/".join(["x"] * 2000)
    assert table.match(None, deep) == "ab"
    assert table.match(None, "/a/" + "y" * 5000) == "a"
    assert table.match(None, "/" + "a" * 5000) is None


def test_unknown_host_is_none_never_a_fallback_route() -> None:
    table = RouteTable([
        ("wiki.example", "/", "wiki"),
        ("*.corp.example", "/", "corp"),
    ])
    assert table.match("other.example", "/") is None
    assert table.match("wiki.example.attacker", "/") is None
    assert table.match("WIKI.EXAMPLE", "/") is None  # callers pass normalize_host() output
    assert table.match(None, "/") is None


def test_host_with_no_matching_prefix_is_none() -> None:
    table = RouteTable([("wiki.example", "/wiki", "wiki")])
    assert table.match("wiki.example", "/") is None
    assert table.match("wiki.example", "/wikipedia") is None


def test_none_host_routes() -> None:
    table = RouteTable([
        (None, "/", "any-root"),
        (None, "/status", "any-status"),
        ("wiki.example", "/", "wiki"),
    ])
    assert table.match("whatever.example", "/status/x") == "any-status"
    assert table.match("whatever.example", "/") == "any-root"
    assert table.match("wiki.example", "/status") == "wiki"
    # Without a Host, only the any-host tier is consulted.
    assert table.match(None, "/status") == "any-status"
    assert table.match(None, "/x") == "any-root"


def test_ip_literal_hosts() -> None:
    table = RouteTable([("127.0.0.1", "/", "v4"), ("[::1]", "/", "v6")])
    assert table.match(normalize_host("127.0.0.1:8080"), "/") == "v4"
    assert table.match(normalize_host("[0::1]:8080"), "/") == "v6"
    assert table.match("0.0.1", "/") is None


def test_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable([("wiki.example", "/a", 1), ("wiki.example", "/a", 2)])
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable([("*.example", "/", 1), ("*.example", "/", 2)])
    with pytest.raises(ValueError, match="duplicate"):
        RouteTable([(None, "/", 1), (None, "/", 2)])
    # Same prefix on different hosts, or with and without a trailing slash, is fine.
    table = RouteTable([
        ("wiki.example", "/a", 1), ("*.wiki.example", "/a", 2), (None, "/a", 3), (None, "/a/", 4),
    ])
    assert len(table) == 4


@pytest.mark.parametrize(
    ("host", "prefix"),
    [
        (None, ""),
        (None, "api"),
        (None, "/a/../b"),
        (None, "//a"),
        (None, "/%61"),
        (None, "/a%2fb"),
        (None, "/a?x"),
        ("Wiki.Example", "/"),
        ("wiki.example:8080", "/"),
        ("wiki.example.", "/"),
        ("*", "/"),
        ("*.", "/"),
        ("a.*.example", "/"),
        ("*.*.example", "/"),
        ("*.[::1]", "/"),
        ("", "/"),
    ],
)
def test_invalid_entries_are_refused(host: str | None, prefix: str) -> None:
    with pytest.raises(ValueError):
        RouteTable([(host, prefix, "x")])


def test_none_value_is_refused() -> None:
    with pytest.raises(ValueError, match="None"):
        RouteTable([(None, "/", None)])


def test_empty_table() -> None:
    table: RouteTable[str] = RouteTable([])
    assert len(table) == 0
    assert table.match("wiki.example", "/") is None
    assert table.match(None, "/") is None


def test_ten_thousand_routes() -> None:
    entries: list[tuple[str | None, str, str]] = []
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            entries.append((f"app{i}.corp.example", "/", f"exact-{i}"))
        elif kind == 1:
            entries.append((f"*.team{i}.corp.example", f"/svc{i}", f"wildcard-{i}"))
        elif kind == 2:
            entries.append((f"shared{i % 50}.corp.example", f"/tenant{i}/api", f"prefix-{i}"))
        else:
            entries.append((None, f"/global{i}", f"any-{i}"))
    table = RouteTable(entries)
    assert len(table) == 10_000
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            assert table.match(f"app{i}.corp.example", "/x/y") == f"exact-{i}"
        elif kind == 1:
            assert table.match(f"host.team{i}.corp.example", f"/svc{i}/z") == f"wildcard-{i}"
            assert table.match(f"team{i}.corp.example", f"/svc{i}/z") is None
        elif kind == 2:
            assert table.match(f"shared{i % 50}.corp.example", f"/tenant{i}/api/v1") == f"prefix-{i}"
            assert table.match(f"shared{i % 50}.corp.example", f"/tenant{i}/apix") is None
        else:
            assert table.match(None, f"/global{i}/") == f"any-{i}"
            assert table.match("unknown.example", f"/global{i}") == f"any-{i}"
    assert table.match("nobody.example", "/") is None
