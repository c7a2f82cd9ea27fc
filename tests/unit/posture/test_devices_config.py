"""The ``devices:`` section: defaults, and every mistake reported with its path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.posture import DevicePki, PostureSigner
from ztproxy.config import load_text
from ztproxy.config.devices import (
    ClientCertificateConfig,
    HttpPostureConfig,
    InventoryConfig,
    SignedPostureConfig,
)
from ztproxy.errors import ConfigError

ROUTES = "routes: [{name: app, upstream: 'http://127.0.0.1:1'}]"


def issues(devices: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        load_text(f"devices: {devices}\n{ROUTES}", env={})
    return [(issue.path, issue.message) for issue in caught.value.issues]


def test_defaults(tmp_path: Path, posture_signer: PostureSigner, device_pki: DevicePki) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text("{}")
    key_file = tmp_path / "posture.pem"
    key_file.write_text(posture_signer.public_pem)
    devices = load_text(f"""
server: {{tls: {device_pki.tls_yaml()}}}
devices:
  client_certificate: {{}}
  signed: {{public_key_file: '{key_file}'}}
  inventory: {{file: '{inventory}'}}
  http: {{url: 'https://mdm.corp.example/api/devices/{{device_id}}?fields=posture', token: s3cret}}
{ROUTES}
""").devices
    assert devices.client_certificate == ClientCertificateConfig(uri_prefix="urn:device:", common_name=True)
    assert devices.signed == SignedPostureConfig(
        header="X-Device-Posture", public_key=posture_signer.public_pem.rstrip("\n"), jwks_url=None,
        algorithms=("ES256",), issuer=None, audience=None, max_lifetime=300.0, clock_skew=30.0,
        require_client_certificate=False, http_timeout=2.0, jwks_ttl=3600.0, jwks_refetch_cooldown=30.0)
    assert devices.inventory == InventoryConfig(file=str(inventory), reload_interval=1.0)
    assert devices.http == HttpPostureConfig(url="https://mdm.corp.example/api/devices/{device_id}?fields=posture",
                                             token="s3cret", timeout=2.0, cache_ttl=30.0, cache_size=10_000)
    assert devices.custom == ()
    assert load_text(ROUTES).devices.model_dump() == {"client_certificate": None, "signed": None,
                                                      "inventory": None, "http": None, "custom": ()}


def test_a_config_with_devices_survives_the_trip_to_the_workers(tmp_path: Path, posture_signer: PostureSigner,
                                                                ) -> None:
    config = load_text(f"devices: {{signed: {{public_key: {json.dumps(posture_signer.public_pem)}}}}}\n{ROUTES}")
    assert type(config).model_validate_json(config.model_dump_json()) == config


def test_signed_needs_exactly_one_key_source(posture_signer: PostureSigner) -> None:
    message = "give either public_key (or public_key_file) or jwks_url"
    assert issues("{signed: {}}") == [("devices.signed", message)]
    pem = json.dumps(posture_signer.public_pem)
    assert issues(f"{{signed: {{public_key: {pem}, jwks_url: 'https://agent.corp.example/jwks'}}}}") == [
        ("devices.signed", message)]


def _pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return json.dumps(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def test_the_public_key_must_parse_and_fit_the_algorithms() -> None:
    assert issues("{signed: {public_key: 'not a key'}}") == [
        ("devices.signed", "public_key: expected a PEM public key (-----BEGIN PUBLIC KEY-----)")]
    rsa_pem = _pem(rsa.generate_private_key(65537, 2048))
    assert issues(f"{{signed: {{public_key: {rsa_pem}}}}}") == [
        ("devices.signed", "public_key: a RSAPublicKey cannot verify ES256")]
    assert load_text(f"devices: {{signed: {{public_key: {rsa_pem}, algorithms: [PS256, RS256]}}}}\n{ROUTES}")
    ed_pem = _pem(ed25519.Ed25519PrivateKey.generate())
    assert load_text(f"devices: {{signed: {{public_key: {ed_pem}, algorithms: [EdDSA]}}}}\n{ROUTES}")


@pytest.mark.parametrize("algorithms", ["[HS256]", "[none]", "[ES256, HS512]", "[]"])
def test_only_asymmetric_algorithms(algorithms: str) -> None:
    ((path, message),) = issues(f"{{signed: {{jwks_url: 'https://a.example/jwks', algorithms: {algorithms}}}}}")
    assert path == "devices.signed.algorithms"
    assert "unsupported algorithm" in message or message == "at least one algorithm is required"


@pytest.mark.parametrize(("header", "message"), [
    ("'X Device'", "invalid header name 'X Device': expected a name such as X-Device-Posture"),
    ("X-Ztproxy-Device", "invalid header name 'X-Ztproxy-Device': X-Ztproxy-* headers belong to the proxy"),
    ("x_ztproxy_device", "invalid header name 'x_ztproxy_device': X-Ztproxy-* headers belong to the proxy"),
])
def test_the_header_name(header: str, message: str) -> None:
    assert issues(f"{{signed: {{jwks_url: 'https://a.example/jwks', header: {header}}}}}") == [
        ("devices.signed.header", message)]


@pytest.mark.parametrize(("url", "message"), [
    ("https://mdm.example/devices", "it must contain {device_id}"),
    ("https://mdm.example/{device_id}/{user}", "{device_id} is the only placeholder"),
    ("ftp://mdm.example/{device_id}", "expected http(s)://HOST/...{device_id}..."),
    ("https://u:p@mdm.example/{device_id}", "credentials in URLs are not allowed (use token)"),
    ("https://mdm.example/a b/{device_id}", "write it percent-encoded (no spaces, quotes, non-ASCII or "
                                            "control characters)"),
    ("https://mdm.example/\u00e9/{device_id}", "write it percent-encoded (no spaces, quotes, non-ASCII or "
                                               "control characters)"),
])
def test_the_http_url_template(url: str, message: str) -> None:
    ((path, text),) = issues(f"{{http: {{url: '{url}'}}}}")
    assert path == "devices.http.url"
    assert text == f"invalid URL template {url!r}: {message}"


def test_bounds_and_files(tmp_path: Path) -> None:
    assert issues(f"{{inventory: {{file: '{tmp_path}/missing.yaml'}}}}") == [
        ("devices.inventory.file", f"cannot read the device inventory '{tmp_path}/missing.yaml': not a readable file")]
    assert issues(f"{{inventory: {{file: '{tmp_path}'}}}}")[0][0] == "devices.inventory.file"
    assert issues("{http: {url: 'http://a.example/{device_id}', cache_size: 0, timeout: 0s}}") == [
        ("devices.http.cache_size", "Input should be greater than or equal to 1"),
        ("devices.http.timeout", "Input should be greater than 0")]
    assert issues("{client_certificate: {uri_prefix: ''}}")[0][0] == "devices.client_certificate.uri_prefix"
    assert issues("{client_certifcate: {}}") == [
        ("devices.client_certifcate", "unknown key 'client_certifcate' (did you mean 'client_certificate'?)")]
