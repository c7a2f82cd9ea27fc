"""The containers' commands, run for real outside Docker, with their files laid out as mounted.

No Docker engine runs here. The ztproxy tests lay out, under a temporary root, what the pod
sees (the ConfigMap's config at the image's config path, the Secrets' files with Kubernetes'
modes), then run the command the Dockerfile and the Deployment give in a sandbox made like the
container's: a mount namespace (``unshare``) whose whole filesystem is read-only except a fresh
tmpfs for /tmp, and no capability at all (``setpriv``, no new privileges). They check what the
probes and the HEALTHCHECK see, that SIGTERM ends it cleanly, and that it wrote nothing. (The
process keeps uid 0 in the sandbox: this machine's Python lives under /root, which the image's
uid could not read; the image's user is checked by the unit tests.)

The compose demo's commands run the same way, without the sandbox: init_demo.py's state feeds
the demo OpenID Provider (node idp.mjs) and the sample app.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port
from tests.support.redis import RedisFactory, wait_until
from tests.unit.test_deploy import (
    COMPOSE,
    DOCKERFILE,
    dockerfile_stages,
    exec_form,
    find,
    healthcheck_command,
    image_command,
    image_env,
    kubernetes_resources,
    load_script,
    mounted_config,
    ztproxy_container,
)
from ztproxy.assertion import keys
from ztproxy.demo_idp import find_node_modules

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STOP_TIMEOUT = 30.0
# In a new mount namespace: a tmpfs at $1 (the container's /tmp), then everything else
# read-only, then the command without any capability, as `docker run --read-only --tmpfs /tmp
# --cap-drop ALL --security-opt no-new-privileges` or the Deployment's securityContext.
SANDBOX = ('mount -t tmpfs -o mode=1777,size=16m tmpfs "$1" && mount -o remount,bind,ro / && shift && '
           'exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"')


@pytest.fixture
def container_tmp() -> Iterator[Path]:
    """Where the sandbox mounts its tmpfs: a short path, as /tmp is (unix sockets live there)."""
    directory = Path(tempfile.mkdtemp(prefix="ztp-", dir="/tmp"))
    try:
        yield directory
    finally:
        directory.rmdir()  # empty outside the sandbox: the tmpfs was the sandbox's alone


def sandbox_works() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                              capture_output=True, timeout=10, check=False).returncode == 0
    except OSError:
        return False


needs_sandbox = pytest.mark.skipif(not sandbox_works(), reason="needs unshare (util-linux) and root, to make a "
                                                                  "read-only root filesystem in a mount namespace")


def sandboxed(argv: list[str], *, tmp: Path, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` in the sandbox; its PID is the command's own (every step execs the next)."""
    with open(log, "wb") as output:
        return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SANDBOX, "sh",
                                 str(tmp), *argv], cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)


def get(url: str | urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def answers(url: str, status: int = 200) -> bool:
    try:
        return get(url)[0] == status
    except OSError:
        return False


def pod_filesystem(root: Path, redis_url: str, proxy_port: int, admin_port: int) -> Path:
    """The pod's files under ``root``: config (its addresses on loopback), secrets, keys, /tmp."""
    config_path = mounted_config(root, redis_url=redis_url)
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    ports = {port["name"]: port["containerPort"] for port in ztproxy_container()["ports"]}
    assert config["server"]["listen"] == f"0.0.0.0:{ports['http']}"
    assert config["server"]["admin_listen"] == f"0.0.0.0:{ports['admin']}"
    config["server"]["listen"] = f"127.0.0.1:{proxy_port}"
    config["server"]["admin_listen"] = f"127.0.0.1:{admin_port}"
    config["server"]["drain_delay"] = "200ms"  # 10s in the manifests; the arithmetic is a unit test's
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    volumes = find(kubernetes_resources(), "Deployment", "ztproxy")["spec"]["template"]["spec"]["volumes"]
    secrets = {item["path"] for volume in volumes if volume["name"] == "secrets" for item in volume["secret"]["items"]}
    assert {p.name for p in (root / "etc" / "ztproxy" / "secrets").iterdir()} == secrets
    for entry in (root / "etc").rglob("*"):  # Secret volumes: defaultMode 0440
        entry.chmod(0o555 if entry.is_dir() else 0o440)
    return config_path


def pod_command(root: Path) -> list[str]:
    """The image's ENTRYPOINT with the Deployment's args, the config path moved under ``root``."""
    entrypoint = exec_form(dockerfile_stages(DOCKERFILE)[-1].last("ENTRYPOINT"))
    args = ztproxy_container()["args"]
    assert args[1] == "-c" and args[2] == image_command()[3]
    return [str(BIN / entrypoint[0]), args[0], "-c", f"{root}{args[2]}", *args[3:]]


def pod_env(root: Path, tmp: Path) -> dict[str, str]:
    """The image's environment, with this machine's PATH to ztproxy and the sandbox's tmpfs."""
    env = image_env(dockerfile_stages(DOCKERFILE)[-1])
    return {**env, "PATH": f"{BIN}:/usr/bin:/bin", "ZTPROXY_CONFIG": f"{root}{env['ZTPROXY_CONFIG']}",
            "TMPDIR": str(tmp)}


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``url`` answers 200; the process's output in the failure if it exits or never does."""
    try:
        wait_until(lambda: process.poll() is not None or answers(url), url, timeout=20)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; its output:\n{log.read_text()}") from None
    assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"


def healthcheck(url: str) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    result = subprocess.run([sys.executable, *command[1:]], env={"ZTPROXY_HEALTHCHECK_URL": url},
                            capture_output=True, timeout=30, check=False)
    return result.returncode


@needs_sandbox
def test_the_pod_command_serves_on_a_read_only_root_and_stops_cleanly(
        tmp_path: Path, container_tmp: Path, redis_factory: RedisFactory) -> None:
    redis = redis_factory.start(password="redis-password-for-the-test")
    root = tmp_path / "root"
    proxy_port, admin_port = free_port(), free_port()
    pod_filesystem(root, redis.url, proxy_port, admin_port)
    log = tmp_path / "ztproxy.log"
    process = sandboxed(pod_command(root), tmp=container_tmp, cwd=root, env=pod_env(root, container_tmp), log=log)
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        wait_for(admin + "/readyz", process, log)
        assert get(admin + "/healthz") == (200, b'{"status": "ok"}')
        assert healthcheck(admin + "/healthz") == 0
        # The proxy serves: a route that needs sign-in answers an API client 401.
        request = urllib.request.Request(f"http://127.0.0.1:{proxy_port}/", headers={
            "Host": "wiki.corp.example", "Accept": "application/json"})
        assert get(request)[0] == 401
        # The keys are the mounted Secret's, not a key made at start.
        jwks = json.loads(get(admin + "/.well-known/ztproxy/jwks.json")[1])
        mounted = keys.load_keys(str(root / "etc" / "ztproxy" / "keys"), ())
        assert [key["kid"] for key in jwks["keys"]] == [key.kid for key in mounted]
        # Its TMPDIR, seen through the process's own mount namespace, is the sandbox's tmpfs.
        seen = Path(f"/proc/{process.pid}/root") / str(container_tmp).lstrip("/")
        assert seen.stat().st_dev != container_tmp.stat().st_dev
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text()
    assert "Traceback" not in output and '"event":"stopped"' in output.replace(" ", "")
    assert healthcheck(admin + "/healthz") == 1  # gone: unhealthy


@needs_sandbox
def test_the_sandbox_is_read_only_but_its_tmpfs(tmp_path: Path, container_tmp: Path) -> None:
    log = tmp_path / "touch.log"
    script = f'touch "{container_tmp}/scratch" && echo tmpfs-ok && touch "{tmp_path}/written"'
    process = sandboxed(["sh", "-c", script], tmp=container_tmp, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, log=log)
    assert process.wait(timeout=STOP_TIMEOUT) != 0
    output = log.read_text()
    assert "tmpfs-ok" in output and "Read-only file system" in output, output
    assert not (tmp_path / "written").exists() and not (container_tmp / "scratch").exists()


def start_without_keys(root: Path, tmp: Path, log: Path, redis_url: str) -> tuple[int, str]:
    """The pod command with an empty key Secret: ztproxy cannot write its first key there."""
    pod_filesystem(root, redis_url, free_port(), free_port())
    key_dir = root / "etc" / "ztproxy" / "keys"
    key_dir.chmod(0o755)
    for key in key_dir.iterdir():
        key.unlink()
    process = sandboxed(pod_command(root), tmp=tmp, cwd=root, env=pod_env(root, tmp), log=log)
    return process.wait(timeout=STOP_TIMEOUT), log.read_text()


@needs_sandbox
def test_an_empty_key_directory_on_a_read_only_root_stops_the_start(
        tmp_path: Path, container_tmp: Path, redis_factory: RedisFactory) -> None:
    code, output = start_without_keys(tmp_path / "root", container_tmp, tmp_path / "log", redis_factory.start().url)
    assert code == 1
    assert "assertion.keys_dir" in output and "no key, and cannot create one: Read-only file system" in output


@needs_sandbox
def test_an_empty_key_directory_is_reported_without_a_traceback(
        tmp_path: Path, container_tmp: Path, redis_factory: RedisFactory) -> None:
    _, output = start_without_keys(tmp_path / "root", container_tmp, tmp_path / "log", redis_factory.start().url)
    assert "Traceback" not in output


def demo_state(root: Path) -> Path:
    """What the compose demo's init service leaves in the demo-state volume."""
    state = root / "state"
    init_demo = load_script("init_demo")
    assert init_demo.main([str(state)]) == 0
    return state


def test_the_compose_idp_serves_the_config_init_writes(tmp_path: Path) -> None:
    state = demo_state(tmp_path)
    config_path = state / "idp" / "idp-config.json"
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    port = free_port()
    # The container's addresses on loopback, the repository's npm packages for the image's.
    config.update(host="127.0.0.1", port=port, issuer=f"http://127.0.0.1:{port}",
                  node_modules=str(find_node_modules()))
    config_path.write_text(json.dumps(config), encoding="utf-8")
    image = dockerfile_stages(COMPOSE / "idp" / "Dockerfile")[-1]
    entrypoint = exec_form(image.last("ENTRYPOINT"))
    script = Path(__file__).resolve().parents[2] / "ztproxy" / "demo_idp" / Path(entrypoint[1]).name
    log = tmp_path / "idp.log"
    # stdin at its end, as in a container: the IdP must not take it for its launcher leaving.
    with open(log, "wb") as output:
        process = subprocess.Popen([entrypoint[0], str(script), str(config_path)], stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        discovery = f"http://127.0.0.1:{port}/.well-known/openid-configuration"
        wait_for(discovery, process, log)
        document = json.loads(get(discovery)[1])
        assert document["issuer"] == config["issuer"]
        assert "urn:ztproxy:mfa" in document["acr_values_supported"]
    finally:
        process.terminate()
        process.wait(timeout=STOP_TIMEOUT)
    assert (state / "idp" / "idp-keys.json").is_file()  # kept in the volume across restarts


def test_the_compose_sample_app_serves_the_portal(tmp_path: Path) -> None:
    state = demo_state(tmp_path)
    port = free_port()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DEMO_STATE_DIR": str(state), "DEMO_APP_LISTEN": f"127.0.0.1:{port}",
           "DEMO_PUBLIC_URL": "http://ztproxy.localhost:8080"}
    log = tmp_path / "app.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([sys.executable, str(COMPOSE / "sample_app.py")], cwd=tmp_path, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, process, log)
        status, body = get(url)
        assert status == 200
        assert (state / "bob-totp-secret").read_text(encoding="utf-8").strip() in body.decode()
        assert get(url + "nothing-here")[0] == 404
    finally:
        process.terminate()
        process.wait(timeout=STOP_TIMEOUT)
    missing = subprocess.run([sys.executable, str(COMPOSE / "sample_app.py")], env={**env, "DEMO_STATE_DIR": "/nope"},
                             capture_output=True, text=True, timeout=30, check=False)
    assert missing.returncode == 1 and "has init_demo.py run?" in missing.stderr
