"""signals.transmitters and signals.receivers: what loads, and every mistake with its YAML path."""

from __future__ import annotations

from tests.unit.test_config import dedent, issues
from ztproxy.config import load_text

BASE = """
        identity_providers:
          - {name: corp, issuer: 'https://idp.corp.example', client_id: ztproxy, client_secret: s}
        routes:
          - {name: wiki, upstream: 'http://127.0.0.1:8001', allow: [{email_domains: [corp.example]}]}
"""


def test_receivers_and_transmitters_load_with_their_defaults() -> None:
    config = load_text(dedent(BASE + """
        signals:
          transmitters:
            - {name: edr, issuer: 'https://edr.corp.example', audience: 'https://ztproxy/ssf'}
          receivers:
            - {name: wiki-app, url: 'http://127.0.0.1:9000/ssf', route: wiki,
               authorization_header: '${APP_PUSH}'}
    """), env={"APP_PUSH": "Bearer s3cret"})
    [receiver] = config.signals.receivers
    assert receiver.url == "http://127.0.0.1:9000/ssf" and receiver.route == "wiki"
    assert receiver.authorization_header == "Bearer s3cret" and receiver.events == ("session-revoked",)


def test_plain_http_only_on_loopback_and_receivers_name_a_route() -> None:
    found = issues(BASE + """
        signals:
          transmitters:
            - {name: edr, issuer: 'http://edr.corp.example', audience: 'a'}
          receivers:
            - {name: wiki-app, url: 'http://wiki.corp.example/ssf', route: wiki}
            - {name: other, url: 'https://other.corp.example/ssf', route: wikki}
            - {name: third, url: 'http://[::1]:9/ssf', route: wiki, events: [account-disabled]}
    """)
    paths = {path: message for path, message, _ in found}
    assert "use https" in paths["signals.transmitters[0].issuer"]
    assert "use https" in paths["signals.receivers[0].url"]
    assert "unknown route 'wikki' (did you mean 'wiki'?)" in paths["signals.receivers[1].route"]
    assert "signals.receivers[2].events[0]" in paths
    assert len(found) == 4, found
