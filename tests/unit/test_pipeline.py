"""The pipeline driver: plain stages, stages with I/O (awaitables), answers, request ids."""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Awaitable

import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ztproxy.pipeline import _RequestIds, build_pipeline
from ztproxy.state import RECORD


async def test_stages_run_in_order_until_one_answers_sync_or_awaited() -> None:
    ran: list[str] = []

    def plain(request: web.Request) -> None:
        ran.append("plain")

    def with_io(request: web.Request) -> Awaitable[None]:
        async def io() -> None:
            ran.append("io")
        return io()

    async def old_style(request: web.Request) -> None:
        ran.append("async def")

    def answers_after_io(request: web.Request) -> Awaitable[web.StreamResponse]:
        async def io() -> web.StreamResponse:
            ran.append("answers")
            return web.Response(status=202, text="from a stage")
        return io()

    def never(request: web.Request) -> None:
        ran.append("never")

    async def handler(request: web.Request) -> web.StreamResponse:
        ran.append("handler")
        return web.Response(text="handler")

    pipeline = build_pipeline((plain, with_io, old_style, answers_after_io, never), handler)
    response = await pipeline(make_mocked_request("GET", "/"))
    assert response.status == 202 and ran == ["plain", "io", "async def", "answers"]

    ran.clear()
    pipeline = build_pipeline((plain, lambda request: web.Response(status=204), never), handler)
    assert (await pipeline(make_mocked_request("GET", "/"))).status == 204
    assert ran == ["plain"]

    ran.clear()
    request = make_mocked_request("GET", "/")
    response = await build_pipeline((plain, with_io), handler)(request)
    assert isinstance(response, web.Response) and response.text == "handler"
    assert ran == ["plain", "io", "handler"]
    assert re.fullmatch(r"[0-9a-f]{32}", request[RECORD].request_id)


def test_request_ids_are_random_hex_and_never_repeat_across_batches() -> None:
    ids = _RequestIds()
    drawn = [ids.next() for _ in range(3 * _RequestIds._BATCH + 5)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in drawn)
    assert len(set(drawn)) == len(drawn)


async def test_events_logged_while_serving_a_request_carry_its_id_and_none_outside() -> None:
    seen: list[object] = []

    def stage(request: web.Request) -> None:
        seen.append(structlog.contextvars.get_contextvars().get("request_id"))

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    def outside() -> dict[str, object]:
        return structlog.contextvars.get_contextvars()

    assert "request_id" not in contextvars.copy_context().run(outside)
    first, second = make_mocked_request("GET", "/"), make_mocked_request("GET", "/")
    pipeline = build_pipeline((stage,), handler)
    await asyncio.create_task(pipeline(first))  # each request in a task of its own, as the server runs it
    await asyncio.create_task(pipeline(second))
    assert seen == [first[RECORD].request_id, second[RECORD].request_id] and seen[0] != seen[1]
    assert "request_id" not in outside()  # set in the requests' tasks, not here
