"""After sign-in the browser goes back only to the proxy's own hosts: no open redirect."""

from __future__ import annotations

import pytest

from ztproxy.oidc.redirects import ReturnUrls

URLS = ReturnUrls("https://auth.corp.example", ["wiki.corp.example", "*.apps.corp.example"])


@pytest.mark.parametrize("url", [
    "https://auth.corp.example/",
    "https://wiki.corp.example/page?x=1",
    "https://WIKI.corp.example/page",
    "https://wiki.corp.example:443/",
    "https://grafana.apps.corp.example/d/1",
])
def test_own_hosts_are_allowed(url: str) -> None:
    assert URLS.allowed(url)


@pytest.mark.parametrize("url", [
    "https://evil.example/",
    "//evil.example/",
    "/relative/path",
    "https:evil.example",
    "https://wiki.corp.example@evil.example/",
    "https://evil.example\\@wiki.corp.example/",
    "https://wiki.corp.example\\.evil.example/",
    "https://wiki.corp.example.evil.example/",
    "https://evilwiki.corp.example/",
    "https://apps.corp.example/",  # the wildcard's own name is not under it
    "http://wiki.corp.example/",  # scheme downgrade
    "https://wiki.corp.example:8443/",  # another port is another origin
    "javascript:alert(1)",
    "https://wiki.corp.example/\t/evil",
    "https://wiki.corp.example/\r\nSet-Cookie: x=1",
    "https://wiki.corp.example%2f%2fevil.example/",
    "https://wiki.corp.exämple/",
    "https://user:pass@wiki.corp.example/",
    "https://wiki.corp.example/#fragment",
    "https://wiki.corp.example/%2e%2e/%2e%2e/",
    "",
    "https://" + "a" * 9000,
])
def test_other_destinations_are_refused(url: str) -> None:
    assert not URLS.allowed(url)
    assert URLS.checked(url) == "https://auth.corp.example/"


def test_a_route_for_any_host_does_not_make_every_host_acceptable() -> None:
    from ztproxy.routing import RouteTable
    urls = ReturnUrls("http://127.0.0.1:8080", RouteTable([(None, "/", "app")]))
    assert urls.allowed("http://127.0.0.1:8080/x")
    assert not urls.allowed("http://evil.example:8080/x")
    # The request's own Host header is not trusted to build the URL either.
    assert urls.for_request("evil.example", "/x?y=1") == "http://127.0.0.1:8080/x?y=1"
    assert urls.for_request("127.0.0.1", "/x?y=1") == "http://127.0.0.1:8080/x?y=1"


def test_the_request_url_keeps_path_and_query_on_a_named_host() -> None:
    assert URLS.for_request("wiki.corp.example", "/a/b?c=d&e") == "https://wiki.corp.example/a/b?c=d&e"
