"""What counts as a WebSocket opening handshake (RFC 6455 4.1), read as the HTTP parser reads it."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from ztproxy.headers import is_websocket_upgrade


@pytest.mark.parametrize(("headers", "expected"), [
    ([("Upgrade", "websocket"), ("Connection", "Upgrade")], True),
    ([("Upgrade", "WebSocket"), ("Connection", "keep-alive, Upgrade")], True),
    ([("Upgrade", "websocket"), ("Connection", "keep-alive"), ("Connection", "upgrade")], True),
    # Connection is a list of tokens (RFC 9110 7.6.1): a token that merely contains "upgrade"
    # does not ask for one, and llhttp would go on reading the connection as HTTP.
    ([("Upgrade", "websocket"), ("Connection", "noupgrade")], False),
    ([("Upgrade", "websocket"), ("Connection", "upgraded-later")], False),
    ([("Upgrade", "websocket")], False),
    ([("Upgrade", "h2c"), ("Connection", "Upgrade")], False),
])
def test_a_websocket_handshake_needs_the_upgrade_token(headers: list[tuple[str, str]], expected: bool) -> None:
    assert is_websocket_upgrade(CIMultiDict(headers)) is expected
