"""``ztproxy keys`` as ops run it: a real process, its output and exit codes, the files it leaves."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import REPO
from ztproxy.assertion.keys import generate_key, read_key_file, write_key
from ztproxy.cli import main

pytestmark = pytest.mark.integration


def keys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ztproxy", "keys", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def keys_here(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str],
              monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    """The same command in this process (faster, for the many error cases)."""
    monkeypatch.chdir(cwd)
    code = main(["keys", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_generate_writes_one_private_key_and_prints_its_kid(tmp_path: Path) -> None:
    result = keys("generate", "--dir", "keys", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (path,) = (tmp_path / "keys").iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert result.stdout.strip() == read_key_file(path).kid
    assert str(path.name) in result.stderr


def test_rotate_adds_when_due_and_prunes_what_expired(tmp_path: Path) -> None:
    now = time.time()
    expired_key, signing_key = generate_key(now - 30 * 86400), generate_key(now - 86400)
    expired, signing = write_key(tmp_path, expired_key), write_key(tmp_path, signing_key)
    result = keys("rotate", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"kept: the newest key {signing_key.kid}")
    assert f"removed {expired_key.kid}: expired" in result.stdout
    assert not expired.exists() and signing.exists()

    due = keys("rotate", "--dir", str(tmp_path), "--max-age", "12h", cwd=tmp_path)
    assert due.stdout.startswith("added ") and "signs from" in due.stdout
    assert len(list(tmp_path.iterdir())) == 2
    again = keys("rotate", "--dir", str(tmp_path), "--max-age", "12h", cwd=tmp_path)
    assert again.stdout.startswith("kept: ")  # idempotent, for cron
    forced = keys("rotate", "--dir", str(tmp_path), "--force", cwd=tmp_path)
    assert forced.stdout.startswith("added ")
    assert len(list(tmp_path.iterdir())) == 3


def test_rotate_prunes_by_the_proxies_ttl_from_the_config(tmp_path: Path) -> None:
    now = time.time()
    old_key = generate_key(now - 86400)
    old = write_key(tmp_path / "keys", old_key)
    write_key(tmp_path / "keys", generate_key(now - 600 - 120))  # took over signing 2 minutes ago
    (tmp_path / "config.yaml").write_text(
        "assertion: {keys_dir: keys, ttl: 5m}\nroutes: [{name: a, upstream: 'http://127.0.0.1:9'}]\n")
    kept = keys("rotate", "-c", "config.yaml", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert "removed" not in kept.stdout and old.exists()  # what it signed lives 5 minutes
    shorter = keys("rotate", "-c", "config.yaml", "--ttl", "60s", cwd=tmp_path)  # a flag overrides
    assert f"removed {old_key.kid}: expired" in shorter.stdout
    assert not old.exists()


def test_list_and_jwks(tmp_path: Path) -> None:
    now = time.time()
    old = write_key(tmp_path, generate_key(now - 86400))
    new = write_key(tmp_path, generate_key(now - 60))
    listed = keys("list", "--dir", str(tmp_path), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(read_key_file(new).kid) and "pending" in lines[0] and "signs from" in lines[0]
    assert lines[1].startswith(read_key_file(old).kid) and "signing" in lines[1]
    published = keys("jwks", "--dir", str(tmp_path), cwd=tmp_path)
    document = json.loads(published.stdout)
    assert [key["kid"] for key in document["keys"]] == [read_key_file(new).kid, read_key_file(old).kid]
    assert all("d" not in key for key in document["keys"])


@pytest.mark.parametrize("action", ["list", "jwks", "rotate"])
def test_bad_key_files_are_named(tmp_path: Path, action: str, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write_key(tmp_path, generate_key(time.time() - 86400))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = tmp_path / "20270101T000000Z-rsa.pem"
    bad.write_bytes(b"created: 2027-01-01T00:00:00Z\n" + rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    result = keys_here(action, "--dir", str(tmp_path), cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert result.returncode == 1
    assert result.stderr.strip() == f"ztproxy keys: {bad}: not an EC P-256 private key (ES256 needs one)"
    assert result.stdout == ""
    assert len(list(tmp_path.iterdir())) == 2  # rotate added nothing


def test_bad_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def keys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return keys_here(*args, cwd=cwd, capsys=capsys, monkeypatch=monkeypatch)

    missing = keys("list", "--dir", "nowhere", cwd=tmp_path)
    assert (missing.returncode, missing.stderr.strip()) == (1, "ztproxy keys: nowhere: no such directory")
    (tmp_path / "file").write_text("not a directory")
    for action in ("generate", "rotate", "list"):
        result = keys(action, "--dir", "file", cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr.startswith("ztproxy keys: ") and "file" in result.stderr
        assert "Traceback" not in result.stderr
    nothing = keys("jwks", cwd=tmp_path)
    assert nothing.returncode == 1 and "pass --dir DIR" in nothing.stderr


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    assert subprocess.run([sys.executable, "-m", "ztproxy", "keys", "generate", "--dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, check=False).returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already gone
    try:
        done = subprocess.run([sys.executable, "-m", "ztproxy", "keys", "jwks", "--dir", str(tmp_path)],
                              cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, check=False, timeout=60)
    finally:
        os.close(write_end)
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    assert done.returncode == 1
