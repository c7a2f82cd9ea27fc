"""Configuration of sign-in: identity providers, sessions, and the checks that span them."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from ztproxy.config import load_text
from ztproxy.errors import ConfigError

PROVIDER = """
identity_providers:
  - name: corp
    issuer: https://idp.corp.example
    client_id: ztproxy
    client_secret: s3cret
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(dedent(text), env={})
    return [f"{issue.path}: {issue.message}" for issue in caught.value.issues]


def test_a_provider_with_defaults() -> None:
    config = load_text(PROVIDER + """
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{email_domains: [corp.example]}]}
""", env={})
    provider = config.identity_providers[0]
    assert provider.scopes == ("openid", "email", "profile")
    assert provider.algorithms == ("RS256", "PS256", "ES256", "EdDSA")
    assert config.sessions.store == "memory" and config.sessions.lifetime == 12 * 3600


def test_provider_mistakes_are_all_reported() -> None:
    found = issues("""
identity_providers:
  - name: Corp Idp
    issuer: ftp://idp
    client_id: ztproxy
    scopes: [email]
    algorithms: [HS256, none]
    token_endpoint_auth_method: magic
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}
""")
    text = "\n".join(found)
    assert "identity_providers[0].name" in text
    assert "identity_providers[0].issuer" in text
    assert "scopes must include 'openid'" in text
    assert "unsupported token signature algorithm(s) 'HS256', 'none'" in text
    assert "identity_providers[0].token_endpoint_auth_method" in text


def test_duplicate_provider_names_and_unknown_route_provider() -> None:
    found = issues(PROVIDER + """
  - name: corp
    issuer: https://idp2.corp.example
    client_id: z
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', identity_provider: crop, allow: [{users: [a]}]}
""")
    assert any("duplicate identity provider name 'corp'" in issue for issue in found)
    assert any(issue.startswith("routes[0].identity_provider: unknown identity provider 'crop' (did you mean 'corp'?)")
               for issue in found)


def test_a_route_host_the_session_cookie_cannot_reach() -> None:
    found = issues("""
server:
  public_url: https://auth.corp.example
""" + PROVIDER + """
routes:
  - {name: wiki, host: wiki.corp.example, upstream: 'http://127.0.0.1:1', allow: [{users: [a]}]}
  - {name: status, host: status.other.example, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}
""")
    assert found == ["routes[0].host: host 'wiki.corp.example' needs sign-in, but the session cookie is set on "
                     "'auth.corp.example' (the public URL's host): set sessions.cookie_domain to a domain both "
                     "are under, or serve this route on 'auth.corp.example'"]


def test_cookie_domain_covers_route_hosts_and_must_cover_the_public_host() -> None:
    load_text("""
server:
  public_url: https://auth.corp.example
sessions:
  cookie_domain: corp.example
""" + PROVIDER + """
routes:
  - {name: wiki, host: wiki.corp.example, upstream: 'http://127.0.0.1:1', allow: [{users: [a]}]}
  - {name: apps, host: '*.apps.corp.example', upstream: 'http://127.0.0.1:1', allow: [{users: [a]}]}
""", env={})
    found = issues("""
server:
  public_url: https://auth.elsewhere.example
sessions:
  cookie_domain: corp.example
""" + PROVIDER + """
routes:
  - {name: wiki, host: wiki.corp.example, upstream: 'http://127.0.0.1:1', allow: [{users: [a]}]}
""")
    assert len(found) == 1 and found[0].startswith("sessions.cookie_domain: the public URL's host")


def test_sessions_mistakes() -> None:
    found = issues("""
sessions:
  cookie_name: "bad name;"
  cookie_domain: localhost
  lifetime: 0s
  idle_timeout: -5m
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}
""")
    paths = {issue.split(":")[0] for issue in found}
    assert paths == {"sessions.cookie_name", "sessions.cookie_domain", "sessions.lifetime", "sessions.idle_timeout"}


def test_shadow_rules_may_name_policies_and_unknown_ones_are_reported() -> None:
    found = issues("""
policies:
  employees: [{email_domains: [corp.example]}]
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{public: true}], shadow: [employes]}
""")
    assert found == ["routes[0].shadow[0]: unknown policy 'employes' (did you mean 'employees'?)"]


def test_claim_headers_cannot_take_over_headers_the_proxy_controls() -> None:
    found = issues("""
routes:
  - name: app
    upstream: http://127.0.0.1:1
    allow: [{public: true}]
    claim_headers: {Host: email, X-Ztproxy-User: sub, X-Employee-Id: employee_id}
""")
    assert len(found) == 1 and found[0].startswith("routes[0].claim_headers: header 'Host' cannot carry a claim")
    assert "'X-Ztproxy-User' cannot carry a claim" in found[0] and "X-Employee-Id" not in found[0]


def test_device_certificates_need_a_device_ca_on_the_listener(tmp_path: object) -> None:
    found = issues("""
devices:
  client_certificate: {}
routes:
  - {name: app, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}
""")
    assert found == ["devices.client_certificate: device certificates need server.tls with client_ca_file (the CA "
                     "that issues them), so the listener can ask for and verify them"]


def test_cookie_secrets_from_a_file_one_per_line(tmp_path: Path) -> None:
    secrets = tmp_path / "cookie-secrets"
    secrets.write_text("a" * 64 + "\n\n" + "b" * 64 + "\n")
    config = load_text(f"""
sessions: {{cookie_secrets_file: '{secrets}'}}
routes:
  - {{name: app, upstream: 'http://127.0.0.1:1', allow: [{{public: true}}]}}
""", env={})
    assert config.sessions.cookie_secrets == ("a" * 64, "b" * 64)
