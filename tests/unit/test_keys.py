"""ztproxy.assertion.keys: key files, the rotation schedule as a pure function of time, the key ring."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from ztproxy.assertion.keys import (
    KeyFileError,
    KeyRing,
    KeyState,
    RotationPolicy,
    SigningKey,
    generate_key,
    jwks,
    load_keys,
    next_change,
    prune,
    read_key_file,
    schedule,
    write_key,
)
from ztproxy.config.assertion import AssertionConfig
from ztproxy.errors import ConfigError

T0 = 1_800_000_000  # a fixed instant: the schedule depends on nothing but keys and now
POLICY = RotationPolicy(ttl=60, publish_before_use=600, verifier_leeway=30)
RETIRE = 60 + 30


def states(keys: list[SigningKey], now: float) -> list[KeyState]:
    return [status.state for status in schedule(keys, POLICY, now)]


# --- key files ---------------------------------------------------------------------------------


def test_written_key_is_private_atomic_and_reads_back(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    key = generate_key(T0)
    path = write_key(directory, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert re.fullmatch(r"20270115T080000Z-[A-Za-z0-9_-]{43}\.pem", path.name)
    assert os.listdir(directory) == [path.name]  # no temporary file left behind
    assert "created: 2027-01-15T08:00:00Z" in path.read_text()
    again = read_key_file(path)
    assert (again.kid, again.created) == (key.kid, T0)


def test_kid_is_the_rfc7638_thumbprint_and_creation_time_comes_from_the_content(tmp_path: Path) -> None:
    path = write_key(tmp_path, generate_key(T0))
    renamed = path.rename(tmp_path / "whatever.pem")  # the name is for people only
    key = read_key_file(renamed)
    assert key.created == T0
    assert key.kid == key.key.thumbprint()
    assert key.kid in path.name


def _pem(private: object) -> bytes:
    assert isinstance(private, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey))
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


CREATED = b"created: 2027-01-15T08:00:00Z\n"


@pytest.mark.parametrize(("content", "reason"), [
    (b"hello", "not a PEM file"),
    (CREATED + _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "not an EC P-256 private key"),
    (CREATED + _pem(ec.generate_private_key(ec.SECP384R1())), "not an EC P-256 private key"),
    (CREATED + ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")), "encrypted"),
    (CREATED + ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "not a PEM private key"),
    (_pem(ec.generate_private_key(ec.SECP256R1())), "no 'created: "),
    (b"created: yesterday\n" + _pem(ec.generate_private_key(ec.SECP256R1())), "invalid created time"),
    (b"created: 2027-01-15T08:00:00Z\n-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
     "not a PEM private key"),
    (CREATED + b"x" * 70_000, "too large"),
], ids=["not-pem", "rsa", "p384", "encrypted", "public-only", "no-created", "bad-created", "bad-body", "huge"])
def test_unusable_key_files_are_refused_naming_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=re.escape(str(path))) as raised:
        read_key_file(path)
    assert reason in str(raised.value)


def test_loading_reports_every_bad_file_and_skips_what_is_not_a_key(tmp_path: Path) -> None:
    good = generate_key(T0)
    write_key(tmp_path, good)
    (tmp_path / "README").write_text("keys live here")
    (tmp_path / ".half-written.pem.tmp").write_text("junk")
    (tmp_path / ".hidden.pem").write_text("junk")
    assert [key.kid for key in load_keys(str(tmp_path), ())] == [good.kid]
    (tmp_path / "a.pem").write_text("junk")
    (tmp_path / "b.pem").write_text("junk")
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as raised:
        load_keys(str(tmp_path), [str(missing)])
    messages = sorted((issue.path, issue.message) for issue in raised.value.issues)
    assert messages == [
        ("assertion.key_files[0]", f"{missing}: cannot read: No such file or directory"),
        ("assertion.keys_dir", f"{tmp_path / 'a.pem'}: not a PEM file"),
        ("assertion.keys_dir", f"{tmp_path / 'b.pem'}: not a PEM file"),
    ]


def test_the_same_key_in_the_directory_and_a_file_counts_once(tmp_path: Path) -> None:
    key = generate_key(T0)
    path = write_key(tmp_path / "dir", key)
    copy = tmp_path / "mounted.pem"
    copy.write_bytes(path.read_bytes())
    assert [k.kid for k in load_keys(str(tmp_path / "dir"), [str(copy)])] == [key.kid]


def test_jwks_holds_public_keys_only() -> None:
    document = jwks(schedule([generate_key(T0), generate_key(T0 + 1)], POLICY, T0 + 2))
    assert len(document["keys"]) == 2
    for jwk in document["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "\"d\"" not in json.dumps(document)


# --- the schedule ------------------------------------------------------------------------------


def test_a_new_key_is_published_before_it_signs_and_the_old_one_retires_after() -> None:
    old, new = generate_key(T0 - 86400), generate_key(T0)
    keys = [new, old]  # any order
    assert states(keys, T0) == [KeyState.SIGNING, KeyState.PENDING]
    assert states(keys, T0 + 599) == [KeyState.SIGNING, KeyState.PENDING]
    assert states(keys, T0 + 600) == [KeyState.RETIRING, KeyState.SIGNING]
    assert states(keys, T0 + 600 + RETIRE - 1) == [KeyState.RETIRING, KeyState.SIGNING]
    assert states(keys, T0 + 600 + RETIRE) == [KeyState.EXPIRED, KeyState.SIGNING]
    retiring = schedule(keys, POLICY, T0 + 600)[0]
    assert (retiring.superseded_at, retiring.published_until) == (T0 + 600, T0 + 600 + RETIRE)
    assert [s.key.kid for s in schedule(keys, POLICY, T0 + 600 + RETIRE)] == [old.kid, new.kid]


def test_a_fresh_deployment_signs_with_its_oldest_key_at_once() -> None:
    first, second = generate_key(T0), generate_key(T0 + 60)
    assert states([first], T0) == [KeyState.SIGNING]
    assert states([first, second], T0 + 60) == [KeyState.SIGNING, KeyState.PENDING]
    assert states([first, second], T0 + 660) == [KeyState.RETIRING, KeyState.SIGNING]


def test_three_keys_and_a_key_from_the_future() -> None:
    keys = [generate_key(T0 - 7200), generate_key(T0 - 3600), generate_key(T0 + 30)]
    assert states(keys, T0) == [KeyState.EXPIRED, KeyState.SIGNING, KeyState.PENDING]
    assert next_change(keys, POLICY, T0) == T0 + 630


def test_keys_created_in_the_same_second_are_ordered_alike_everywhere() -> None:
    twins = [generate_key(T0), generate_key(T0)]
    signer = [s.key.kid for s in schedule(twins, POLICY, T0 + 700) if s.state is KeyState.SIGNING]
    assert signer == [s.key.kid for s in schedule(list(reversed(twins)), POLICY, T0 + 700)
                      if s.state is KeyState.SIGNING]
    assert signer == [max(key.kid for key in twins)]


def test_prune_deletes_only_expired_keys(tmp_path: Path) -> None:
    old, middle, new = generate_key(T0 - 86400), generate_key(T0 - 700), generate_key(T0)
    paths = {key.kid: write_key(tmp_path, key) for key in (old, middle, new)}
    removed = prune(tmp_path, POLICY, T0)
    assert [key.kid for key in removed] == [old.kid]
    assert not paths[old.kid].exists() and paths[middle.kid].exists() and paths[new.kid].exists()
    assert prune(tmp_path, POLICY, T0) == []


# --- the key ring ------------------------------------------------------------------------------


def test_ring_rereads_the_directory_when_it_changes_at_most_every_interval(tmp_path: Path) -> None:
    old = generate_key(T0 - 86400)
    write_key(tmp_path, old)
    ring = KeyRing(POLICY, now=T0, keys_dir=str(tmp_path), reload_interval=5)
    body, etag, max_age = ring.jwks_document(T0)
    new = generate_key(T0)
    write_key(tmp_path, new)
    assert ring.jwks_document(T0 + 4) == (body, etag, max_age)  # not looked at yet
    body2, etag2, _ = ring.jwks_document(T0 + 5)
    assert etag2 != etag
    assert {k["kid"] for k in json.loads(body2)["keys"]} == {old.kid, new.kid}
    assert ring.signing_key(T0 + 5).kid == old.kid
    assert ring.signing_key(T0 + 600).kid == new.kid  # by time alone, no file change
    # The retired key leaves the JWKS by time alone too.
    assert [k["kid"] for k in ring.jwks(T0 + 600 + RETIRE)["keys"]] == [new.kid]


def test_jwks_document_is_cached_until_the_key_set_changes() -> None:
    old, new = generate_key(T0 - 86400), generate_key(T0 - 600)
    ring = KeyRing(POLICY, now=T0, keys=[old, new])
    first = ring.jwks_document(T0)
    assert ring.jwks_document(T0 + 30) == first
    assert ring.jwks_document(T0)[0] is ring.jwks_document(T0 + 30)[0]  # the same bytes, not rebuilt
    later = ring.jwks_document(T0 + RETIRE)
    assert later[1] != first[1]
    assert [k["kid"] for k in json.loads(later[0])["keys"]] == [new.kid]
    assert first[2] == 300
    assert KeyRing(RotationPolicy(60, 120, 30), now=T0, keys=[old]).jwks_document(T0)[2] == 60


def test_a_broken_change_keeps_the_previous_keys_and_says_why(tmp_path: Path) -> None:
    key = generate_key(T0 - 86400)
    write_key(tmp_path, key)
    ring = KeyRing(POLICY, now=T0, keys_dir=str(tmp_path), reload_interval=1)
    (tmp_path / "broken.pem").write_text("junk")
    with capture_logs() as logs:
        assert ring.signing_key(T0 + 1).kid == key.kid
        ring.signing_key(T0 + 2)  # the same broken state is reported once
    assert [log["event"] for log in logs] == ["assertion_keys_reload_failed"]
    assert "broken.pem: not a PEM file" in logs[0]["errors"][0]
    (tmp_path / "broken.pem").unlink()
    for path in tmp_path.iterdir():
        path.unlink()
    with capture_logs() as logs:
        assert ring.signing_key(T0 + 3).kid == key.kid  # an emptied directory does not stop signing
    assert logs[0]["errors"] == ["no key left"]


def test_key_files_are_watched_too(tmp_path: Path) -> None:
    first = tmp_path / "key.pem"
    first.write_bytes(write_key(tmp_path / "gen", generate_key(T0 - 86400)).read_bytes())
    ring = KeyRing(POLICY, now=T0, key_files=[str(first)], reload_interval=1)
    replacement = generate_key(T0 - 86400)
    first.write_bytes(write_key(tmp_path / "gen2", replacement).read_bytes())
    assert ring.signing_key(T0 + 1).kid == replacement.kid


def test_from_config_without_keys_uses_an_ephemeral_key_and_warns() -> None:
    with capture_logs() as logs:
        ring = KeyRing.from_config(AssertionConfig(), now=T0)
    assert [log["event"] for log in logs] == ["assertion_key_ephemeral"]
    assert logs[0]["log_level"] == "warning"
    assert ring.signing_key(T0).source == "<new>"


def test_from_config_creates_a_first_key_in_an_empty_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    config = AssertionConfig(keys_dir=str(directory), ttl=30, publish_before_use=300)
    ring = KeyRing.from_config(config, now=T0)
    (path,) = directory.iterdir()
    assert ring.signing_key(T0).kid in path.name
    assert ring.policy == RotationPolicy(ttl=30, publish_before_use=300, verifier_leeway=30)
    # Another process starting on the same directory uses that key, it makes no new one.
    assert KeyRing.from_config(config, now=T0 + 1).signing_key(T0 + 1).kid == ring.signing_key(T0).kid
    assert len(list(directory.iterdir())) == 1


def test_from_config_refuses_a_bad_key_file_at_start(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("junk")
    with pytest.raises(ConfigError, match=re.escape("bad.pem: not a PEM file")):
        KeyRing.from_config(AssertionConfig(keys_dir=str(tmp_path)), now=T0)
    with pytest.raises(ConfigError, match=re.escape("bad.pem/sub: cannot list: Not a directory")):
        KeyRing.from_config(AssertionConfig(keys_dir=str(tmp_path / "bad.pem" / "sub")), now=T0)


def test_a_ring_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="no signing key"):
        KeyRing(POLICY, now=T0)
