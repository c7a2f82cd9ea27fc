"""The client_certificate provider: which id a certificate gives, and which certificates give none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.posture import DAY, CertificateAuthority, DevicePki, Issued
from ztproxy.config import load_text
from ztproxy.config.devices import ClientCertificateConfig
from ztproxy.errors import ConfigError
from ztproxy.policy.model import Device
from ztproxy.posture import Posture, PostureQuery, peer_certificate
from ztproxy.posture.client_cert import ClientCertificateProvider

NOW = datetime.now(UTC)


def provider(pki: DevicePki, *, uri_prefix: str = "urn:device:", common_name: bool = True,
             cas: list[CertificateAuthority] | None = None) -> ClientCertificateProvider:
    return ClientCertificateProvider(ca_certificates=[ca.certificate for ca in cas or [pki.device_ca]],
                                     uri_prefix=uri_prefix, common_name=common_name)


def query(certificate: Issued | bytes | None, now: datetime = NOW) -> PostureQuery:
    der = certificate.der if isinstance(certificate, Issued) else certificate
    return PostureQuery(peer_certificate=der, headers={}, subject=None, now=now)


async def test_the_uri_name_with_the_prefix_gives_the_id(device_pki: DevicePki) -> None:
    cert = device_pki.device_ca.issue(common_name="Ada's laptop", uris=["https://corp.example/x", "urn:device:mbp-42"])
    assert await provider(device_pki).observe(query(cert), None) == Device(id="mbp-42")


async def test_a_spiffe_prefix_can_be_configured(device_pki: DevicePki) -> None:
    cert = device_pki.device("mbp-42", uri="spiffe://corp.example/device/{id}", common_name=False)
    spiffe = provider(device_pki, uri_prefix="spiffe://corp.example/device/")
    assert await spiffe.observe(query(cert), None) == Device(id="mbp-42")
    assert await provider(device_pki).observe(query(cert), None) is None  # no urn:device: URI, no CN


async def test_without_such_a_uri_the_common_name_is_the_id_unless_turned_off(device_pki: DevicePki) -> None:
    cert = device_pki.device("mbp-7", uri=None)
    assert await provider(device_pki).observe(query(cert), None) == Device(id="mbp-7")
    with capture_logs() as logs:
        assert await provider(device_pki, common_name=False).observe(query(cert), None) is None
    assert logs[0]["event"] == "device_certificate_rejected"
    assert logs[0]["reason"] == "no URI name starting with 'urn:device:'"


async def test_two_different_ids_or_an_empty_one_give_no_device(device_pki: DevicePki) -> None:
    both = device_pki.device_ca.issue(uris=["urn:device:a", "urn:device:b"])
    empty = device_pki.device_ca.issue(uris=["urn:device:"])
    control = device_pki.device_ca.issue(common_name="bad\x07id")
    for cert in (both, empty, control):
        assert await provider(device_pki).observe(query(cert), None) is None
    same_twice = device_pki.device_ca.issue(uris=["urn:device:a", "urn:device:a"])
    assert await provider(device_pki).observe(query(same_twice), None) == Device(id="a")


async def test_validity_dates_are_checked_against_the_request_clock(device_pki: DevicePki) -> None:
    start, end = NOW - DAY / 2, NOW + DAY  # inside the validity of the CA (from a day ago)
    cert = device_pki.device("dev-1", not_before=start, not_after=end)
    certificates = provider(device_pki)
    # RFC 5280 4.1.2.5: both ends are inside the validity period (at second precision).
    assert await certificates.observe(query(cert, start.replace(microsecond=0)), None) == Device(id="dev-1")
    assert await certificates.observe(query(cert, end.replace(microsecond=0)), None) == Device(id="dev-1")
    with capture_logs() as logs:
        assert await certificates.observe(query(cert, end + timedelta(seconds=1)), None) is None
        assert await certificates.observe(query(cert, start - timedelta(seconds=1)), None) is None
    assert [log["reason"] for log in logs] == ["outside its validity period"] * 2
    assert await certificates.observe(query(device_pki.expired()), None) is None


async def test_an_expired_issuing_ca_gives_no_device(tmp_path: Path, device_pki: DevicePki) -> None:
    old_ca = CertificateAuthority("Old CA", tmp_path, not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    cert = old_ca.issue(uris=["urn:device:dev-1"], not_before=NOW - 10 * DAY, not_after=NOW + 10 * DAY)
    certificates = provider(device_pki, cas=[device_pki.device_ca, old_ca])
    assert await certificates.observe(query(cert), None) is None
    assert await certificates.observe(query(cert, NOW - 2 * DAY), None) == Device(id="dev-1")


async def test_a_certificate_from_another_ca_or_garbage_gives_no_device(device_pki: DevicePki) -> None:
    with capture_logs() as logs:
        assert await provider(device_pki).observe(query(device_pki.device(ca=device_pki.other_ca)), None) is None
        assert await provider(device_pki).observe(query(b"\x30\x03junk"), None) is None
    assert logs[0]["reason"] == "not issued directly by a CA in client_ca_file"
    assert logs[1]["reason"].startswith("unreadable certificate")


async def test_a_ca_with_the_same_name_but_another_key_is_not_the_issuer(tmp_path: Path,
                                                                         device_pki: DevicePki) -> None:
    impostor = CertificateAuthority("Device CA", tmp_path)  # same subject, different key
    cert = impostor.issue(uris=["urn:device:dev-1"])
    assert await provider(device_pki).observe(query(cert), None) is None


async def test_without_a_certificate_the_device_passes_through(device_pki: DevicePki) -> None:
    certificates = provider(device_pki)
    assert await certificates.observe(query(None), None) is None
    assert await certificates.observe(query(None), Device(id="x", managed=True)) == Device(id="x", managed=True)
    cert = device_pki.device("dev-1")
    assert await certificates.observe(query(cert), Device(id="dev-1", managed=True)) == Device(id="dev-1",
                                                                                              managed=True)
    assert await certificates.observe(query(cert), Device(id="other")) is None


def test_peer_certificate_without_a_tls_transport_is_none() -> None:
    assert peer_certificate(None) is None


def test_it_needs_the_client_ca_file(device_pki: DevicePki) -> None:
    # `ztproxy check` (config loading) reports it, and building the provider refuses it too.
    text = f"""
server: {{tls: {device_pki.tls_yaml(client_ca=False)}}}
devices: {{client_certificate: {{}}}}
routes: [{{name: app, upstream: 'http://127.0.0.1:1'}}]
"""
    with pytest.raises(ConfigError, match=r"devices.client_certificate: device certificates need server.tls"):
        load_text(text)
    unchecked = load_text(text.replace("devices: {client_certificate: {}}", ""))
    unchecked = unchecked.model_copy(update={"devices": unchecked.devices.model_copy(
        update={"client_certificate": ClientCertificateConfig()})})
    with pytest.raises(ConfigError, match=r"devices.client_certificate: needs server.tls.client_ca_file"):
        Posture.from_config(unchecked)
    config = load_text(f"""
server: {{tls: {device_pki.tls_yaml()}}}
devices: {{client_certificate: {{uri_prefix: 'spiffe://corp.example/device/', common_name: false}}}}
routes: [{{name: app, upstream: 'http://127.0.0.1:1'}}]
""")
    assert Posture.from_config(config).names == ("client_certificate",)
