"""Request-target canonicalisation: the path that picks the route is the path the upstream gets."""

from __future__ import annotations

import string
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztproxy.errors import PathRejected
from ztproxy.routing import RequestTarget, RouteTable, parse_target

ACCEPTED: list[tuple[str, str]] = [
    # Already canonical (fast path) and returned unchanged.
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/a/b/", "/a/b/"),
    ("/api/v1/users;id=3", "/api/v1/users;id=3"),
    ("/x/!$&'()*+,;=:@-._~", "/x/!$&'()*+,;=:@-._~"),
    ("/file.tar.gz", "/file.tar.gz"),
    ("/a..b/c.", "/a..b/c."),
    # Unreserved escapes are decoded (RFC 3986 2.3, 6.2.2.2).
    ("/%61dmin", "/admin"),
    ("/%41%5a%30%2D%2e%5F%7e", "/AZ0-._~"),
    # Other escapes stay encoded with uppercase hex digits (RFC 3986 6.2.2.1).
    ("/a%20b", "/a%20b"),
    ("/a%2a%3F", "/a%2A%3F"),
    ("/%c3%a9t%C3%A9", "/%C3%A9t%C3%A9"),
    ("/a%3fb%23c%25", "/a%3Fb%23c%25"),
    ("/%3b%40", "/%3B%40"),
    # Decoded exactly once: "%25" stays an escape and what follows it is literal data.
    ("/%252e", "/%252e"),
    ("/%252E%252e", "/%252E%252e"),
    ("/%2561dmin", "/%2561dmin"),
    ("/%25%32%65", "/%252e"),
    # Characters outside pchar that are not ambiguous are encoded, not refused.
    ('/a"b', "/a%22b"),
    ("/<script>", "/%3Cscript%3E"),
    ("/{x}|y^z`w", "/%7Bx%7D%7Cy%5Ez%60w"),
    ("/[a]", "/%5Ba%5D"),
    # Repeated slashes collapse.
    ("//a///b", "/a/b"),
    ("//", "/"),
    ("//evil.example/x", "/evil.example/x"),
    ("/a//", "/a/"),
    # Dot segments (RFC 3986 5.2.4), raw or encoded.
    ("/a/./b/../c", "/a/c"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/../", "/a/"),
    ("/a/..", "/"),
    ("/.", "/"),
    ("/./", "/"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/%2E%2E/b", "/b"),
    ("/a/.%2e/b", "/b"),
    ("/a/%2e./b", "/b"),
    ("/a/%2e/b", "/a/b"),
    ("/admin/../public", "/public"),
    ("/.hidden/x", "/.hidden/x"),
    ("/a/...", "/a/..."),
    # Trailing slash preserved.
    ("/a/", "/a/"),
    ("/a/b//", "/a/b/"),
]


@pytest.mark.parametrize(("raw", "expected"), ACCEPTED)
def test_canonical_path(raw: str, expected: str) -> None:
    target = parse_target(raw)
    assert target.path == expected
    assert target.query == ""
    assert target.authority is None


def test_plain_path_is_returned_unchanged() -> None:
    raw = "/api/v1/items/42"
    assert parse_target(raw).path is raw


REJECTED: list[tuple[str, str]] = [
    # Not a path at all.
    ("", "unsupported"),
    ("*", "unsupported"),
    ("a/b", "unsupported"),
    ("?x", "unsupported"),
    ("ftp://host/a", "scheme"),
    ("ws://host/a", "scheme"),
    ("file:///etc/passwd", "scheme"),
    ("http:/a", "unsupported"),
    ("://host/a", "unsupported"),
    # Fragments never belong to a request-target.
    ("/a#b", "fragment"),
    ("/a?x#b", "fragment"),
    ("http://host/#", "fragment"),
    # Raw control characters and whitespace.
    ("/a\x00b", "control"),
    ("/a\x1fb", "control"),
    ("/a\x7fb", "control"),
    ("/a\tb", "control"),
    ("/a b", "control"),
    ("/a\r\nb", "control"),
    # Encoded control characters.
    ("/a%00b", "control"),
    ("/a%0ab", "control"),
    ("/a%0D%0Ab", "control"),
    ("/a%1F", "control"),
    ("/a%7f", "control"),
    ("/a%7F", "control"),
    # Backslash, raw or encoded.
    ("/a\\b", "backslash"),
    ("/a/..\\..\\b", "backslash"),
    ("/a%5cb", "backslash"),
    ("/a%5Cb", "backslash"),
    # Encoded slash.
    ("/a%2fb", "slash"),
    ("/a%2Fb", "slash"),
    ("/a/..%2f..%2fetc", "slash"),
    # Malformed percent-encoding.
    ("/%", "malformed"),
    ("/a%", "malformed"),
    ("/%4", "malformed"),
    ("/%4/", "malformed"),
    ("/%zz", "malformed"),
    ("/%g1", "malformed"),
    ("/%%41", "malformed"),
    ("/%-1", "malformed"),
    ("/%+1", "malformed"),
    # Non-ASCII must arrive percent-encoded.
    ("/caf\u00e9", "non-ascii"),
    ("/\u2215etc", "non-ascii"),
    ("/\uff0e\uff0e/x", "non-ascii"),
    ("/a\udcff", "non-ascii"),
    # Climbing above the root is an attack, not a typo.
    ("/..", "above the root"),
    ("/../a", "above the root"),
    ("/a/../..", "above the root"),
    ("/a/../../b", "above the root"),
    ("/%2e%2e/etc/passwd", "above the root"),
    ("//../a", "above the root"),
    # Servlet path parameters on dot segments.
    ("/public/..;/admin", "parameters"),
    ("/public/..;x=1/admin", "parameters"),
    ("/a/.;/b", "parameters"),
    ("/a/%2e%2e;/b", "parameters"),
    # Query may not carry control characters or whitespace either.
    ("/a?x=1 2", "query"),
    ("/a?x=\x00", "query"),
    ("/a?x=\t", "query"),
    ("/a?x=\x85", "query"),
    ("/a?x=\u00a0", "query"),
    # Absolute-form with a bad authority.
    ("http:///a", "host"),
    ("http://user@host/a", "host"),
    ("http://host:99999/a", "host"),
    ("http://host:x/a", "host"),
    ("http://ho st/a", "host"),
    ("http://host/a b", "control"),
    ("http://host/%2f", "slash"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTED)
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(PathRejected) as info:
        parse_target(raw)
    assert reason in info.value.detail.lower()
    assert info.value.code == "bad-path"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a?x=1", RequestTarget("/a", "x=1", None)),
        ("/a?", RequestTarget("/a", "", None)),
        ("/a?x=%2f&y=../..", RequestTarget("/a", "x=%2f&y=../..", None)),
        ("/a?b?c", RequestTarget("/a", "b?c", None)),
        ("/a/../b?q=caf\u00e9", RequestTarget("/b", "q=caf\u00e9", None)),
        ("/?x", RequestTarget("/", "x", None)),
        ("http://wiki.example/a?x", RequestTarget("/a", "x", "wiki.example")),
        ("http://wiki.example:8080/a/./b", RequestTarget("/a/b", "", "wiki.example:8080")),
        ("HTTPS://Wiki.Example/", RequestTarget("/", "", "Wiki.Example")),
        ("http://[::1]:8080/x", RequestTarget("/x", "", "[::1]:8080")),
        ("http://wiki.example", RequestTarget("/", "", "wiki.example")),
        ("http://wiki.example?x=1", RequestTarget("/", "x=1", "wiki.example")),
        ("http://wiki.example//a", RequestTarget("/a", "", "wiki.example")),
    ],
)
def test_query_and_absolute_form(raw: str, expected: RequestTarget) -> None:
    assert parse_target(raw) == expected


# --- properties -----------------------------------------------------------------------

# Biased towards the characters that matter, so that most generated paths are accepted
# while the risky ones (escapes, dots, slashes, anything at all) still show up often.
_SAFE_PIECES = st.sampled_from([
    *"/.aA0-_~;:@!+=\"<>{}|^`[]", "%2e", "%2E", "%25", "%41", "%7e", "%c3%a9", "..", "//", "/../", "/./",
])
_RISKY_PIECES = st.sampled_from(["%", "%2f", "%5c", "\\", "%0a", "%g", "#", " "]) | st.characters()
_RAW_PATHS = st.builds(
    "/".__add__,
    st.one_of(
        st.lists(_SAFE_PIECES, max_size=40),
        st.lists(st.one_of(_SAFE_PIECES, _SAFE_PIECES, _SAFE_PIECES, _RISKY_PIECES), max_size=40),
    ).map("".join),
)


def _accepted(raw: str) -> RequestTarget | None:
    try:
        return parse_target(raw)
    except PathRejected:
        return None


@settings(max_examples=500)
@given(_RAW_PATHS)
def test_canonicalisation_is_idempotent(raw: str) -> None:
    target = _accepted(raw)
    if target is not None:
        again = parse_target(target.path)
        assert again.path == target.path


@settings(max_examples=500)
@given(_RAW_PATHS)
def test_canonical_output_invariants(raw: str) -> None:
    target = _accepted(raw)
    if target is None:
        return
    path = target.path
    assert path.startswith("/")
    assert "//" not in path
    assert "\\" not in path
    assert "%2f" not in path.lower()
    assert "%5c" not in path.lower()
    assert path.isascii()
    assert all(0x20 < ord(char) < 0x7F for char in path)
    segments = path.split("/")
    assert "." not in segments
    assert ".." not in segments
    # Escapes are uppercase, and only for characters that are not unreserved.
    for piece in path.split("%")[1:]:
        pair = piece[:2]
        assert pair == pair.upper()
        assert chr(int(pair, 16)) not in string.ascii_letters + string.digits + "-._~"


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=60))
def test_arbitrary_ascii_never_crashes(text: str) -> None:
    for raw in (text, "/" + text, "http://h/" + text):
        target = _accepted(raw)
        if target is not None:
            assert parse_target(target.path).path == target.path


# Segments an attacker mixes in to make "/admin" look like something else, or the reverse.
_JUNK_SEGMENTS = st.sampled_from([
    "", ".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "admin", "%61dmin", "%61%64%6d%69%6e",
    "ADMIN", "Admin", "admin;x", "admin.", "%2561dmin", "adminx", "x", "public", "%7e", "a%20b", "..%3b",
])


def _reference_resolution(segments: list[str]) -> list[str] | None:
    """An independent model: decode once, resolve dots; None when it climbs above the root."""
    stack: list[str] = []
    for segment in segments:
        decoded = unquote(segment)
        if decoded in ("", "."):
            continue
        if decoded == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(decoded)
    return stack


@settings(max_examples=1000)
@given(st.lists(_JUNK_SEGMENTS, max_size=8), st.lists(_JUNK_SEGMENTS, max_size=8), st.booleans())
def test_path_confusion_cannot_reach_admin(before: list[str], after: list[str], slash: bool) -> None:
    table = RouteTable([(None, "/admin", "admin"), (None, "/", "public")])
    segments = [*before, "admin", *after]
    raw = "/" + "/".join(segments) + ("/" if slash else "")
    resolved = _reference_resolution(segments)
    if resolved is None:
        with pytest.raises(PathRejected):
            parse_target(raw)
        return
    target = parse_target(raw)
    inside_admin = resolved[:1] == ["admin"]
    assert (table.match(None, target.path) == "admin") == inside_admin, (raw, target.path, resolved)
    # What the upstream receives names the same resource the route was chosen for.
    assert [unquote(segment) for segment in target.path.split("/") if segment] == resolved
