"""An IdP that refuses the proxy's own credentials: the page says sign-in is misconfigured.

Not "the link may have been used already", which sends users round in circles: no user
can fix an ``invalid_client``, only the administrator, so the page says to tell them and
the log says what to check (RFC 6749 5.2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DemoIdp

pytestmark = pytest.mark.integration


async def test_a_refused_client_secret_gives_the_misconfigured_page(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    async def registered_with_another_secret(**kwargs: Any) -> DemoIdp:
        clients = [dataclasses.replace(client, client_secret="not-what-the-proxy-has") for client in kwargs["clients"]]
        return await start_idp(**{**kwargs, "clients": clients})

    world = await start_world(registered_with_another_secret, start_proxy, start_upstream)
    async with UserAgent() as agent:
        final = await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
    assert final.status == 503, final.text[:300]
    assert "Sign-in is misconfigured" in final.text and "administrator" in final.text
    assert "may have been used" not in final.text
    assert "ztproxy_session" not in {cookie.key for cookie in agent.cookie_jar}
