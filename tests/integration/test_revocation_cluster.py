"""Revocation everywhere on a Redis Cluster: three ``ztproxy run`` processes (four workers)
on a real 3-master cluster, through the failover of the master that holds the session.

The world of ``test_revocation.py`` (cache_ttl a minute, so only the announcement can make
the other replicas deny in time) with ``sessions.store: redis+cluster://...``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import UpstreamFactory
from tests.integration.test_revocation import BOUND, StartProcess, World, start_world, subscribers, until
from tests.support.idp import IdpFactory
from tests.support.redis_cluster import ClusterSetup

pytestmark = pytest.mark.integration


async def listed(world: World, handle: str) -> bool:
    status, body = await world.admin(world.signed_in_on, "GET", "/admin/sessions?user=alice")
    return status == 200 and [entry["handle"] for entry in body["sessions"]] == [handle]


async def test_a_session_survives_its_masters_failover_and_its_revocation_reaches_every_replica(
        start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
        redis_cluster: ClusterSetup, tmp_path: Path) -> None:
    world = await start_world(start_idp, start_upstream, proxy_process, redis_cluster, tmp_path)
    async with world.agent:
        await world.allowed_everywhere()
        ticket = world.ticket()
        master = redis_cluster.master_of(ticket.store_key)
        assert master.command("WAIT", 1, 5000) == 1  # the replica holds the session too
        master.stop(kill=True)
        redis_cluster.wait_healthy()
        assert redis_cluster.master_of(ticket.store_key).command("EXISTS", ticket.store_key) == 1
        # Workers whose subscription was on the stopped node move to another one.
        await until(lambda: subscribers(redis_cluster) == 4, "every worker to subscribe on a running node")
        # The user's index, on whichever node, still lists the session (an early answer may
        # be a 503 while the replica's client re-reads the slot map).
        await until(lambda: listed(world, ticket.public_id), "the session listed after the failover")
        await world.allowed_everywhere()

        status, body = await world.admin(world.signed_in_on, "DELETE", f"/admin/sessions/{ticket.public_id}")
        revoked_at = time.monotonic()
        assert (status, body) == (200, {"revoked": 1, "handle": ticket.public_id})
        # Any 200 past the bound fails (the announcement crosses the cluster bus, so a request
        # racing it by a few milliseconds may still pass, as the bound allows).
        times = await world.denied_within(world.replicas, revoked_at, BOUND)
        print(f"denied after revocation on the cluster (s): {times}")
        assert redis_cluster.master_of(ticket.store_key).command("EXISTS", ticket.store_key) == 0
        forwarded = len(world.upstream.requests)
        for replica in world.replicas:
            assert [await world.status(replica) for _ in range(8)] == [401] * 8
        assert len(world.upstream.requests) == forwarded  # nothing revoked reaches the app any more
