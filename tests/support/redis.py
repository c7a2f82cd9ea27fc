"""Test fixtures: real ``redis-server`` and ``redis-sentinel`` processes on free loopback ports.

- ``redis_factory``: a :class:`RedisFactory`; ``start()`` a server (options: persistence,
  a unix socket, a password, TLS, extra config lines), ``sentinel()`` a master with replicas
  watched by sentinels. Everything it started is stopped by PID at the end of the test.
- ``redis_server``: one fresh server for this test.
- ``shared_sentinel``: one Sentinel setup for the whole session, for tests that only read
  and write keys (no failover, no stopping: use ``redis_factory.sentinel()`` for those).

A :class:`RedisServer` can be stopped, killed, frozen (SIGSTOP) and restarted on the same
port, which is how tests make Redis go away and come back. Nothing is skipped: without
redis-server installed the fixtures fail and say how to install it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_SENTINEL = "/usr/bin/redis-sentinel"
INSTALL_HINT = ("the tests need Redis 7: `apt-get install redis-server redis-sentinel` "
                "(`./dev test` installs them)")
START_TIMEOUT = 10.0
FAILOVER_TIMEOUT = 30.0
MASTER_NAME = "ztproxy-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``condition`` every 20 ms until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class RedisServer:
    """One redis-server (or redis-sentinel) process, restartable on the same port."""

    port: int
    directory: Path
    config_lines: list[str]
    binary: str = REDIS_SERVER
    password: str | None = None
    tls_port: int | None = None
    ca_file: Path | None = None  # the CA that signed the server's TLS certificate
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None or self.ca_file is None:
            raise RuntimeError("started without tls=True")
        auth = f":{self.password}@" if self.password else ""
        return f"rediss://{auth}127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.ca_file}"

    @property
    def unix_socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"redis on port {self.port} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> None:
        if self.running:
            return
        config = self.directory / "redis.conf"
        if not config.exists():  # a restart keeps what Sentinel's CONFIG REWRITE made of it
            config.write_text("\n".join(self.config_lines) + "\n", encoding="utf-8")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([self.binary, str(config)], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.directory)
        try:
            wait_until(self._answers, f"{Path(self.binary).name} on port {self.port}")
        except TimeoutError as exc:
            self.stop(kill=True)
            raise RuntimeError(f"{exc}; its log:\n{self.log_tail()}") from None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the process by PID: SIGTERM (a clean shutdown, saving if persistent) or SIGKILL."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                os.kill(process.pid, signal.SIGCONT)  # a frozen server cannot shut down
                process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def client(self, **options: Any) -> redis.Redis:
        """A synchronous client for the test's own checks; close it (``with`` does)."""
        settings: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5, **options}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **settings)

    def command(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as client:
            return dict(client.info(section))

    def synced(self) -> bool:
        """A replica whose link to its master is up."""
        return self.info("replication").get("master_link_status") == "up"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{Path(self.binary).name} exited with {self.process.returncode}; its log:\n"
                               f"{self.log_tail()}")
        try:
            with self.client(socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


@dataclass
class SentinelSetup:
    """A master, its replicas and the sentinels watching them, as a Redis deployment has."""

    master_name: str
    data_nodes: list[RedisServer]  # the first one started as the master
    sentinels: list[RedisServer]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master(self) -> RedisServer:
        """The data node the first sentinel currently names as master."""
        host, port = self.sentinels[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return next(node for node in self.data_nodes if node.port == int(port))

    def failover(self, timeout: float = FAILOVER_TIMEOUT) -> RedisServer:
        """Promote a replica (``SENTINEL FAILOVER``, also when the master is down); the new master.

        Returns once the promoted replica is master, every sentinel says so as clients read it
        (``SENTINEL MASTER``: its address, no down flag; ``GET-MASTER-ADDR-BY-NAME`` names the
        promoted replica earlier, while the failover still reconfigures the replicas) and a
        still running old master is its replica.
        """
        old = self.master()
        self.sentinels[0].command("SENTINEL", "FAILOVER", self.master_name)

        def promoted() -> bool:
            new = self.master()
            return (new is not old and new.running and new.info("replication").get("role") == "master"
                    and all(self._names_master(sentinel, new) for sentinel in self.sentinels))

        wait_until(promoted, f"sentinel to promote a replica of {self.master_name}", timeout)
        new = self.master()
        if old.running:
            # Sentinel demotes a running old master only some 8 s later; until then it still
            # takes writes. Do now what it will do then.
            old.command("REPLICAOF", "127.0.0.1", new.port)
        return new


    def _names_master(self, sentinel: RedisServer, node: RedisServer) -> bool:
        state = _fields(sentinel.command("SENTINEL", "MASTER", self.master_name))
        return int(state.get("port", 0)) == node.port and state.get("flags") == "master"


class RedisFactory:
    """Starts Redis processes in a temp dir on free ports; ``stop_all`` ends them by PID."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[RedisServer] = []

    def start(self, *extra_lines: str, persist: bool = False, unix_socket: bool = False,
              password: str | None = None, tls: bool = False) -> RedisServer:
        """A redis-server; ``persist`` saves the data on shutdown and loads it at start.

        ``tls`` adds a TLS port (``tls_url``) with a certificate for 127.0.0.1 from a CA made
        for this server; the plain port stays open for the test's own checks.
        """
        _require(REDIS_SERVER)
        port = free_port()
        directory = self._new_directory(f"redis-{port}")
        lines = [
            f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {directory}",
            f"logfile {directory / 'redis.log'}",
            "save 3600 1" if persist else 'save ""', "appendonly no",
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not after 5 s
        ]
        if unix_socket:
            lines += [f"unixsocket {directory / 'redis.sock'}", "unixsocketperm 700"]
        if password:
            lines.append(f"requirepass {password}")
        tls_port, ca_file = None, None
        if tls:
            tls_port = free_port()
            ca_file, cert_file, key_file = write_tls_files(directory)
            lines += [f"tls-port {tls_port}", f"tls-cert-file {cert_file}", f"tls-key-file {key_file}",
                      f"tls-ca-cert-file {ca_file}", "tls-auth-clients no"]
        server = RedisServer(port=port, directory=directory, config_lines=[*lines, *extra_lines],
                             password=password, tls_port=tls_port, ca_file=ca_file)
        self.started.append(server)
        server.start()
        return server

    def sentinel(self, *, replicas: int = 1, sentinels: int = 1, master_name: str = MASTER_NAME) -> SentinelSetup:
        """A master with ``replicas`` replicas, watched by ``sentinels`` sentinels, all synced."""
        _require(REDIS_SENTINEL)
        master = self.start()
        nodes = [master]
        for _ in range(replicas):
            replica = self.start(f"replicaof 127.0.0.1 {master.port}")
            nodes.append(replica)
        for replica in nodes[1:]:
            wait_until(replica.synced, f"replica {replica.port} to sync with its master")
        watchers = [self._start_sentinel(master, master_name, quorum=sentinels // 2 + 1) for _ in range(sentinels)]
        setup = SentinelSetup(master_name=master_name, data_nodes=nodes, sentinels=watchers)

        def replicas_known() -> bool:
            for watcher in watchers:
                known = watcher.command("SENTINEL", "REPLICAS", master_name)
                healthy = [r for r in known if _fields(r).get("flags") == "slave"]
                if len(healthy) < replicas:
                    return False
            return True

        wait_until(replicas_known, "sentinels to see every replica")
        return setup

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.stop(kill=True)

    def _start_sentinel(self, master: RedisServer, master_name: str, *, quorum: int) -> RedisServer:
        port = free_port()
        directory = self._new_directory(f"sentinel-{port}")
        lines = [
            f"port {port}", "bind 127.0.0.1", "daemonize no", f"dir {directory}",
            f"logfile {directory / 'redis.log'}",
            f"sentinel monitor {master_name} 127.0.0.1 {master.port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} 1000",
            f"sentinel failover-timeout {master_name} 10000",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        sentinel = RedisServer(port=port, directory=directory, config_lines=lines, binary=REDIS_SENTINEL)
        self.started.append(sentinel)
        sentinel.start()
        return sentinel

    def _new_directory(self, name: str) -> Path:
        directory = self.directory / name
        directory.mkdir(parents=True)
        return directory


def write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
                    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("redis test CA", ca_key, "redis test CA", ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, "redis test CA", ca_key, ca=False)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def _require(binary: str) -> None:
    if not os.access(binary, os.X_OK):
        pytest.fail(f"{binary} not found: {INSTALL_HINT}", pytrace=False)


def _fields(reply: Any) -> dict[str, Any]:
    """SENTINEL replies come as dicts (redis-py parses them) or flat key/value lists."""
    def text(value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    if isinstance(reply, dict):
        return {text(k): text(v) for k, v in reply.items()}
    pairs = [text(item) for item in reply]
    return dict(zip(pairs[::2], pairs[1::2], strict=True))


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path_factory.mktemp("redis"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    return redis_factory.start()


@pytest.fixture(scope="session")
def shared_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    factory = RedisFactory(tmp_path_factory.mktemp("redis-shared"))
    try:
        yield factory.sentinel()
    finally:
        factory.stop_all()
