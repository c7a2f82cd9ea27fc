"""The pipeline driver: runs the stages listed in ``app.py`` in order, then the handler.

A stage looks at the request and either annotates it (typed request keys), answers it
(returns a response: the proxy's own endpoints), or refuses it (raises a RequestError,
which becomes its page). One driver instead of one aiohttp middleware per stage keeps
the per-request cost of the pipeline to a loop over a tuple. The driver also gives every
request its id, renders every error in one place, and logs requests whose client left.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import structlog
from aiohttp import web

from ztproxy.errors import InternalError, RequestError
from ztproxy.pages import page_for
from ztproxy.state import CONFIG, REQUEST_ID
from ztproxy.telemetry import access_event

StageResult = web.StreamResponse | None
Stage = Callable[[web.Request], StageResult | Awaitable[StageResult]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_log = structlog.get_logger("ztproxy.pipeline")


def build_pipeline(stages: Sequence[Stage], handler: Handler) -> Handler:
    compiled = tuple((stage, inspect.iscoroutinefunction(stage)) for stage in stages)

    async def pipeline(request: web.Request) -> web.StreamResponse:
        rid = os.urandom(16).hex()
        request[REQUEST_ID] = rid
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        try:
            for stage, is_async in compiled:
                answer = stage(request)
                if is_async:
                    answer = await cast(Awaitable[StageResult], answer)
                if answer is not None:
                    return cast(web.StreamResponse, answer)
            return await handler(request)
        except RequestError as error:
            return page_for(request, error)
        except asyncio.CancelledError:
            # The client went away (nginx's 499); aiohttp logs no access for it.
            if request.app[CONFIG].logging.access_log:
                access_event(request, 499, 0, time.perf_counter() - started)
            raise
        except ConnectionError:
            raise
        except Exception:
            _log.exception("internal_error", path=request.raw_path[:256])
            return page_for(request, InternalError())

    return pipeline
