"""``ztproxy demo``'s just-in-time access: bob asks for /ledger, carol approves with her code, bob gets in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.test_demo import RunningDemo, _start, _wait_ready, start_demo
from tests.support.user_agent import UserAgent

pytestmark = pytest.mark.integration
__all__ = ["start_demo"]  # the fixture, used by name


async def test_bob_asks_carol_approves_bob_gets_in(tmp_path: Path, start_demo: list[RunningDemo]) -> None:
    demo = _start(tmp_path, tmp_path / "state", free_port())
    start_demo.append(demo)
    _wait_ready(demo)
    url = demo.url
    carol_secret = demo.banner_value(r"her secret\s+([A-Z2-7]{32})\s")
    assert carol_secret != demo.totp_secret
    assert (tmp_path / "state" / "carol-totp-secret").read_text().strip() == carol_secret
    async with UserAgent() as bob, UserAgent() as carol:
        refused = await bob.login(url + "/ledger", "bob", "bob", demo.totp_secret)
        assert refused.status == 403 and "Request access" in refused.text
        asking = await bob.get(url + "/.ztproxy/access/?route=ledger")
        form = asking.form("reason")
        assert form is not None
        async with bob.session.post(form.action, data={**form.fields, "reason": "quarter close",
                                                       "duration": "30m"},
                                    headers={"Origin": url}, allow_redirects=False) as sent:
            assert sent.status == 303
        page = await carol.login(url + "/.ztproxy/access/sign-in?mfa=1", "carol", "carol", carol_secret)
        assert page.status == 200 and "quarter close" in page.text, page.text[:500]
        decide = page.form("comment")
        assert decide is not None
        async with carol.session.post(decide.action, data={**decide.fields, "approve": "1"},
                                      headers={"Origin": url}, allow_redirects=False) as approved:
            assert approved.status == 303
        ledger = await bob.get(url + "/ledger")
        assert ledger.status == 200 and "Ledger" in ledger.text
