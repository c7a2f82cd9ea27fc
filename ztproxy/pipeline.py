"""The pipeline driver: runs the stages listed in ``app.py`` in order, then the handler.

A stage looks at the request and either annotates it (typed request keys), answers it
(returns a response: the proxy's own endpoints, a sign-in redirect), or refuses it (raises
a RequestError, which becomes its page). Every answer and page the proxy makes itself gets
``pages.SECURITY_HEADERS``; what the upstream answers passes as it is.

A stage is a plain function: when it has I/O to do it returns an awaitable of its answer,
so a request that needs none (a cached session, no posture provider, an allowed decision)
runs the stages without creating a coroutine. One driver instead of one aiohttp middleware
per stage keeps the per-request cost of the pipeline to a loop over a tuple. The driver
also gives every request its id, renders every error in one place, logs requests whose
client left, and counts every request in the metrics (``metrics.REQUESTS``).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from ztproxy import tracing
from ztproxy.errors import InternalError, RequestError
from ztproxy.forward_auth import Kind, strict_status
from ztproxy.metrics import ANONYMOUS, NO_VALUE, REQUESTS, RequestMetrics
from ztproxy.pages import page_for, secure
from ztproxy.state import CONFIG, RECORD, RequestRecord
from ztproxy.telemetry import access_event

StageResult = web.StreamResponse | None
# None: go on; a response: the answer; an awaitable: the stage's I/O, giving either.
Stage = Callable[[web.Request], StageResult | Awaitable[StageResult]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_log = structlog.get_logger("ztproxy.pipeline")


def _request_id_variable() -> contextvars.ContextVar[Any]:
    """structlog's context variable for ``request_id``, from the token its binding returns.

    Setting it is what ``bind_contextvars(request_id=...)`` does, without building a dict
    and the variable's name per request. Bound and reset at once: nothing shows outside a request.
    """
    token = structlog.contextvars.bind_contextvars(request_id=None)["request_id"]
    token.var.reset(token)
    return token.var


_REQUEST_ID = _request_id_variable()


def build_pipeline(stages: Sequence[Stage], handler: Handler) -> Handler:
    """The driver; inside a server span when tracing is on (``tracing.start`` came first)."""
    compiled = tuple(stages)
    requests = REQUESTS

    async def pipeline(request: web.Request) -> web.StreamResponse:
        rid = _request_ids.next()
        request[RECORD] = record = RequestRecord(rid)
        _REQUEST_ID.set(rid)  # every event logged while serving the request carries it
        started = time.perf_counter()
        try:
            for stage in compiled:
                answer = stage(request)
                if answer is None:
                    continue
                if not isinstance(answer, web.StreamResponse):
                    answer = await answer
                    if answer is None:
                        continue
                response = secure(answer)  # the proxy's own answer: a page, a redirect, a document
                break
            else:
                response = await handler(request)
        except RequestError as error:
            response = page_for(request, error)
        except (asyncio.CancelledError, ConnectionError) as gone:
            # The client went away (nginx's 499); aiohttp logs no access for it.
            duration = time.perf_counter() - started
            _observe(requests, record, 499, duration)
            if isinstance(gone, asyncio.CancelledError) and request.app[CONFIG].logging.access_log:
                access_event(request, 499, 0, duration)
            raise
        except Exception:
            _log.exception("internal_error", path=request.raw_path[:256])
            response = page_for(request, InternalError())
        question = record.question
        if question is not None and question.kind is Kind.AUTH and question.form.strict_statuses:
            response.set_status(strict_status(response.status))  # nginx: 2xx, 401 or 403, or its own 500
        _observe(requests, record, response.status, time.perf_counter() - started)
        return response

    return pipeline if tracing.TRACER is None else tracing.traced(pipeline)


class _RequestIds:
    """Random 128-bit request ids, hex: drawn from the OS 4 KiB at a time, never reused."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(16 * self._BATCH), 0
        self._at = at + 16
        return self._pool[at:at + 16].hex()


_request_ids = _RequestIds()


def _observe(requests: RequestMetrics, record: RequestRecord, status: int, duration: float) -> None:
    ctx = record.intake
    caller = record.caller
    requests.observe(ctx.route.name if ctx is not None else NO_VALUE, status, record.decision, duration,
                     ANONYMOUS if caller is None else caller.kind)
