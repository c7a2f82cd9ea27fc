"""The ``workload_identity`` section: trust domain names, bundle files, and what it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.spiffe import SpiffePki
from tests.unit.test_config import dedent, issues
from ztproxy.config import load_text
from ztproxy.errors import ConfigError
from ztproxy.reload import restart_only
from ztproxy.workloads.bundles import TrustBundles


def _config(pki: SpiffePki, workloads: str, *, tls: bool = True, allow: str = '[{services: ["spiffe://corp.example/**"]}]'
            ) -> str:
    server = f"server: {{tls: {pki.tls_yaml()}}}\n" if tls else ""
    return f"""
{server}workload_identity: {workloads}
routes:
  - {{name: api, upstream: 'http://127.0.0.1:1', allow: {allow}}}
"""


def test_a_services_route_needs_no_token_issuer_with_workload_identity(spiffe_pki: SpiffePki) -> None:
    config = load_text(dedent(_config(spiffe_pki, spiffe_pki.workload_yaml())), env={})
    assert config.workload_identity is not None
    assert set(config.workload_identity.trust_domains) == {"corp.example", "partner.example"}
    # Clients and scopes still need an issuer: only a token names them.
    found = issues(_config(spiffe_pki, spiffe_pki.workload_yaml(), allow="[{clients: [billing]}]"))
    assert [path for path, _, _ in found] == ["routes[0].allow"]


def test_trust_domain_names_must_be_spiffe_trust_domains(spiffe_pki: SpiffePki) -> None:
    bundle = spiffe_pki.bundle_files["corp.example"]
    found = issues(_config(spiffe_pki, f"{{trust_domains: {{'spiffe://Corp.example': {{bundle_file: '{bundle}'}}}}}}"))
    assert len(found) == 1 and found[0][0] == "workload_identity.trust_domains"
    assert "invalid trust domain 'spiffe://Corp.example'" in found[0][1]
    assert issues(_config(spiffe_pki, "{trust_domains: {}}"))[0][0] == "workload_identity.trust_domains"


def test_bundle_files_must_hold_certificates(spiffe_pki: SpiffePki, tmp_path: Path) -> None:
    text = tmp_path / "text.pem"
    text.write_text("not a certificate\n")
    workloads = (f"{{trust_domains: {{a.example: {{bundle_file: '{tmp_path}/nope.pem'}}, "
                 f"b.example: {{bundle_file: '{text}'}}}}}}")
    found = issues(_config(spiffe_pki, workloads))
    assert [(path, message) for path, message, _ in found] == [
        ('workload_identity.trust_domains["a.example"].bundle_file',
         f"cannot read the trust bundle of 'a.example' from '{tmp_path}/nope.pem': no such file"),
        ('workload_identity.trust_domains["b.example"].bundle_file',
         f"cannot read the trust bundle of 'b.example' from '{text}': it holds no PEM certificate "
         "(-----BEGIN CERTIFICATE-----), or a broken one"),
    ]


def test_workload_identity_needs_tls_on_the_listener(spiffe_pki: SpiffePki) -> None:
    found = issues(_config(spiffe_pki, spiffe_pki.workload_yaml(), tls=False))
    assert [path for path, _, _ in found] == ["workload_identity"]
    assert "server.tls" in found[0][1]


def test_changing_the_trust_domains_needs_a_restart(spiffe_pki: SpiffePki) -> None:
    running = load_text(dedent(_config(spiffe_pki, spiffe_pki.workload_yaml())), env={})
    corp_only = f"{{trust_domains: {{corp.example: {{bundle_file: '{spiffe_pki.bundle_files['corp.example']}'}}}}}}"
    new = load_text(dedent(_config(spiffe_pki, corp_only)), env={})
    assert restart_only(running, new) == ["workload_identity"]


def test_a_bundle_file_that_breaks_keeps_the_last_good_bundle(spiffe_pki: SpiffePki) -> None:
    clock = [0.0]
    files = {domain: str(path) for domain, path in spiffe_pki.bundle_files.items()}
    bundles = TrustBundles(files, check_interval=1.0, clock=lambda: clock[0])
    first = bundles.current()
    corp = spiffe_pki.bundle_files["corp.example"]
    corp.write_text("broken\n")
    clock[0] = 0.5
    assert bundles.current() is first  # not looked at again within the interval
    clock[0] = 2.0
    assert bundles.current() is first  # looked at: broken, the last good bundle stays
    spiffe_pki.write_bundle("corp.example", spiffe_pki.unknown_ca)
    clock[0] = 4.0
    rotated = bundles.current()
    assert rotated.generation == first.generation + 1
    assert rotated.by_domain["corp.example"].authorities == (spiffe_pki.unknown_ca.certificate,)
    assert rotated.by_domain["partner.example"] is first.by_domain["partner.example"]
    corp.write_text("broken\n")
    with pytest.raises(ValueError, match=r"corp\.example"):
        TrustBundles(files)
    with pytest.raises(ConfigError):
        load_text(dedent(_config(spiffe_pki, "{trust_domains: {corp.example: {}}}")), env={})
