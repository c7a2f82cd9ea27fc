"""Test fixtures: a real Redis Cluster, 3 masters and 3 replicas, on free loopback ports.

- ``redis_cluster``: a fresh :class:`ClusterSetup` for this test (for failovers);
- ``shared_redis_cluster``: one for the whole session, for tests that only read and write
  keys (call :meth:`ClusterSetup.flush` first).

Each node is a :class:`~tests.support.redis.RedisServer` (stopped by PID at the end); the
cluster is formed by ``redis-cli --cluster create`` (Debian's redis-tools, which
redis-server depends on).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.support.redis import FAILOVER_TIMEOUT, START_TIMEOUT, RedisFactory, RedisServer, free_port, wait_until

REDIS_CLI = "/usr/bin/redis-cli"
MASTERS = 3
NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failed over by its replica


@dataclass
class ClusterSetup:
    """The nodes of one cluster; which is master changes with failovers."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:MASTERS])

    def masters(self) -> list[RedisServer]:
        return [node for node in self.running() if node.info("replication").get("role") == "master"]

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now, as a running node sees it."""
        slot = self.running()[0].command("CLUSTER", "KEYSLOT", key)
        for node in self.masters():
            if _serves(node, slot):
                return node
        raise LookupError(f"no running master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        node_id = master.command("CLUSTER", "MYID")
        node_id = node_id.decode() if isinstance(node_id, bytes) else node_id
        for node in self.running():
            replication = node.info("replication")
            if replication.get("role") == "slave" and _master_id(node) == node_id:
                return node
        raise LookupError(f"no replica of node {master.port}")

    def flush(self) -> None:
        for node in self.masters():
            node.command("FLUSHALL")

    def healthy(self) -> bool:
        """Every running node says the cluster is ok, and running masters serve every slot."""
        try:
            running = self.running()
            masters = {node.port for node in self.masters()}
            return len(masters) == MASTERS and all(
                _state(node) == "ok" and {int(entry[2][1]) for entry in node.command("CLUSTER", "SLOTS")} <= masters
                for node in running)
        except redis.RedisError:
            return False

    def wait_healthy(self, timeout: float = FAILOVER_TIMEOUT) -> None:
        wait_until(self.healthy, "the Redis Cluster to report cluster_state:ok on every node", timeout)


def start_cluster(factory: RedisFactory) -> ClusterSetup:
    """Three masters, each with one replica, formed and synced."""
    lines = ["cluster-enabled yes", "cluster-config-file nodes.conf", f"cluster-node-timeout {NODE_TIMEOUT_MS}",
             "cluster-replica-validity-factor 0"]  # any replica may take over, however long it was cut off
    # The bus port is the data port + 10000 unless given: a free one of its own, always.
    nodes = [factory.start(*lines, f"cluster-port {free_port()}") for _ in range(MASTERS * 2)]
    command = [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in nodes),
               "--cluster-replicas", "1", "--cluster-yes"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT * 3, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
    setup = ClusterSetup(nodes=nodes)
    setup.wait_healthy(START_TIMEOUT * 3)
    for node in nodes:
        if node.info("replication").get("role") == "slave":
            wait_until(node.synced, f"replica {node.port} to sync with its master", START_TIMEOUT * 3)
    return setup


def _state(node: RedisServer) -> str:
    info = node.command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return fields.get("cluster_state", "").strip()


def _serves(node: RedisServer, slot: int) -> bool:
    # CLUSTER SLOTS: [start, end, [master host, master port, id], replicas...] per range
    return any(entry[0] <= slot <= entry[1] and int(entry[2][1]) == node.port
               for entry in node.command("CLUSTER", "SLOTS"))


def _master_id(node: RedisServer) -> str:
    for line in _lines(node.command("CLUSTER", "NODES")):
        fields = line.split()
        if "myself" in fields[2]:
            return fields[3]
    return ""


def _lines(reply: object) -> list[str]:
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def redis_cluster(redis_factory: RedisFactory) -> ClusterSetup:
    return start_cluster(redis_factory)


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    factory = RedisFactory(tmp_path_factory.mktemp("redis-cluster-shared"))
    try:
        yield start_cluster(factory)
    finally:
        factory.stop_all()
