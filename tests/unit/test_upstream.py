"""How an upstream's failures become pages: one mapping, used with a plain try and as a context manager."""

from __future__ import annotations

import aiohttp
import pytest

from ztproxy.errors import UpstreamTimeout, UpstreamUnavailable
from ztproxy.upstream import UPSTREAM_ERRORS, upstream_failure, upstream_failures
from ztproxy.upstream_client import UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeoutError

FAILURES = [
    (UpstreamTimeoutError("no answer"), UpstreamTimeout),
    (TimeoutError(), UpstreamTimeout),
    (aiohttp.ServerTimeoutError("read"), UpstreamTimeout),  # a ClientError and a TimeoutError: the timeout wins
    (UpstreamConnectError("refused"), UpstreamUnavailable),
    (UpstreamProtocolError("bad head"), UpstreamUnavailable),
    (UpstreamError("gone"), UpstreamUnavailable),
    (aiohttp.ClientConnectionError("reset"), UpstreamUnavailable),
]


@pytest.mark.parametrize(("failure", "page"), FAILURES)
def test_each_upstream_failure_has_its_page(failure: Exception, page: type[Exception]) -> None:
    assert isinstance(failure, UPSTREAM_ERRORS)
    assert type(upstream_failure(failure)) is page
    with pytest.raises(page) as raised, upstream_failures():
        raise failure
    assert raised.value.__cause__ is failure


def test_the_page_says_what_failed() -> None:
    page = upstream_failure(UpstreamConnectError("refused"), "The WebSocket handshake failed.")
    assert isinstance(page, UpstreamUnavailable) and page.detail == "The WebSocket handshake failed."


def test_other_errors_are_not_upstream_failures() -> None:
    # A bug of the proxy's own must stay a 500 with its traceback logged, never pass for a 502.
    with pytest.raises(KeyError), upstream_failures():
        raise KeyError("route")
    assert not isinstance(ValueError(), UPSTREAM_ERRORS)
