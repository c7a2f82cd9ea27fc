"""``ztproxy forward-auth``: the calling proxies' configurations, as far as each format can be checked here.

nginx and Caddy run the generated configurations in tests/integration/test_forward_auth_servers.py;
Traefik and Envoy are not packaged by Debian, so their documents are checked for the structure
they must have: every route asks ztproxy, copies exactly the route's identity headers, and lets
no client describe a request.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ztproxy.calling_proxies import DESCRIPTIONS, KINDS, client_headers, generate, identity_names
from ztproxy.config.loader import load_text
from ztproxy.config.schema import Config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "forward-auth"
FILES = {"nginx": "nginx.conf", "caddy": "Caddyfile", "traefik": "traefik.yml", "envoy": "envoy.yaml"}
ENV = {"ZTPROXY_OIDC_SECRET": "secret", "ZTPROXY_COOKIE_SECRET": "a" * 64}


def example() -> Config:
    return load_text((EXAMPLE / "ztproxy.yaml").read_text(encoding="utf-8"), "example", env=ENV)


@pytest.mark.parametrize("kind", KINDS)
def test_the_deploy_examples_are_what_the_command_prints(kind: str) -> None:
    expected = generate(kind, example(), "deploy/forward-auth/ztproxy.yaml")
    assert (EXAMPLE / FILES[kind]).read_text(encoding="utf-8") == expected, (
        f"deploy/forward-auth/{FILES[kind]} drifted from its routes: regenerate it with "
        f"`ztproxy forward-auth {kind} -c deploy/forward-auth/ztproxy.yaml`")


def test_identity_headers_are_the_routes_own() -> None:
    config = example()
    admin = next(route for route in config.routes if route.name == "wiki-admin")
    assert identity_names(admin) == ["X-Ztproxy-Jwt-Assertion", "X-Ztproxy-User", "X-Ztproxy-Email",
                                     "X-Ztproxy-Groups", "X-Ztproxy-Claim-Department"]


def test_nginx_copies_each_header_and_never_lets_a_client_ask() -> None:
    text = generate("nginx", example(), "x")
    assert "location = /.ztproxy/auth {\n        internal;" in text
    assert "location = /.ztproxy/denied {\n        internal;" in text
    assert "location ^~ /.ztproxy/auth/ {\n        return 404;" in text
    assert "upstream ztproxy_decisions {\n    server 127.0.0.1:8081;" in text  # the decision listener
    assert "proxy_pass http://ztproxy_decisions/.ztproxy/auth;" in text
    for name in identity_names(example().routes[1]):
        variable = "$ztproxy_" + name.lower().replace("-", "_")
        assert f"proxy_set_header {name} {variable};" in text
    # On the way to ztproxy's own pages, a client's description is removed.
    own = text[text.index("location /.ztproxy/ {"):text.index("location /.well-known/ztproxy/")]
    for name in DESCRIPTIONS:
        assert f'proxy_set_header {name} "";' in own


def test_caddy_accepts_its_caddyfile() -> None:
    # `caddy adapt` parses the Caddyfile into Caddy's JSON: every directive and matcher known.
    result = subprocess.run(["/usr/bin/caddy", "adapt", "--config", str(EXAMPLE / "Caddyfile"),
                             "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"forward_auth"' not in result.stdout and '"reverse_proxy"' in result.stdout


def test_traefik_routes_ask_ztproxy_with_an_allow_list() -> None:
    config = example()
    document = yaml.safe_load(generate("traefik", config, "x"))["http"]
    routers, middlewares, services = document["routers"], document["middlewares"], document["services"]
    for route in config.routes:
        name = "route_" + route.name.replace("-", "_")
        router = routers[name]
        assert router["service"] == name and services[name]["loadBalancer"]["servers"] == [{"url": route.upstream}]
        auth = middlewares[router["middlewares"][0]]["forwardAuth"]
        assert auth["address"] == "http://127.0.0.1:8081/.ztproxy/auth"
        assert auth["trustForwardHeader"] is False
        assert auth["authResponseHeaders"] == identity_names(route)
        assert auth["authRequestHeaders"] == client_headers(config)
        assert not set(auth["authRequestHeaders"]) & set(DESCRIPTIONS)
    own = routers.pop("ztproxy-route_wiki_corp_example")
    assert own["priority"] > max(router["priority"] for router in routers.values())
    assert middlewares[own["middlewares"][0]]["headers"]["customRequestHeaders"] == dict.fromkeys(DESCRIPTIONS, "")
    # Longer paths first, as ztproxy matches them.
    assert routers["route_wiki_admin"]["priority"] > routers["route_wiki"]["priority"]


def test_envoy_asks_ztproxy_first_and_fails_closed() -> None:
    config = example()
    document = yaml.safe_load(generate("envoy", config, "x"))["static_resources"]
    manager = document["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    ext_authz = manager["http_filters"][0]["typed_config"]
    assert ext_authz["failure_mode_allow"] is False
    service = ext_authz["http_service"]
    assert service["path_prefix"] == "/.ztproxy/auth"
    assert service["server_uri"]["cluster"] == "ztproxy_decisions"
    allowed = {p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]}
    assert allowed == {name.lower() for name in client_headers(config)}
    upstream = {p["exact"] for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]}
    assert upstream == {name.lower() for route in config.routes for name in identity_names(route)}
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["direct_response"] == {"status": 404} and routes[1]["direct_response"] == {"status": 404}
    for entry in routes[2:4]:  # ztproxy's own pages: no decision asked, descriptions removed
        assert entry["route"]["cluster"] == "ztproxy"
        assert entry["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert set(routes[2]["request_headers_to_remove"]) == {name.lower() for name in DESCRIPTIONS}
    clusters = {cluster["name"] for cluster in document["clusters"]}
    assert clusters == {"ztproxy", "ztproxy_decisions", "route_wiki", "route_wiki_admin"}


def test_the_ingress_nginx_example_validates_and_copies_the_identity() -> None:
    documents = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "ingress-forward-auth.yaml").read_text()))
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.utils.latest_version(), strict=True)
    annotations = documents[0]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith("/.ztproxy/auth")
    assert annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",") == \
        identity_names(example().routes[0])


def test_the_command_prints_or_reports_errors(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "ztproxy", "forward-auth"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes:\n  - {name: x, upstream: nowhere}\n  - {name: y}\n")
    result = subprocess.run([*command, "nginx", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "routes[0].upstream" in result.stderr and "routes[1]" in result.stderr
    result = subprocess.run([*command, "apache", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr
