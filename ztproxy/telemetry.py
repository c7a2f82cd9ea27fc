"""Telemetry: structlog configured once, JSON lines on stdout, one access event per request.

Events are snake_case names with key=value fields; the request id travels in
contextvars so every event logged while serving a request carries it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from ztproxy.state import CONFIG, CONTEXT, REQUEST_ID

LogFormat = Literal["json", "console"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _orjson_dumps(event: Any, default: Any = None) -> bytes:
    return orjson.dumps(event, default=default or str)


def configure_logging(level: str = "info", log_format: LogFormat = "json") -> None:
    """Configure structlog (and route stdlib logging from aiohttp & co. through it)."""
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory: Any = structlog.PrintLoggerFactory(sys.stdout)
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries (aiohttp, asyncio) log through stdlib logging: render them the same way.
    foreign_renderer: Any = (renderer if log_format == "console"
                             else structlog.processors.JSONRenderer())
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, foreign_renderer],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def get_logger(name: str = "ztproxy") -> Any:
    return structlog.get_logger(name)


_access_logger = structlog.get_logger("ztproxy.access")


def _access_event(request: web.BaseRequest, status: int, sent: int, duration: float) -> None:
    ctx = request.get(CONTEXT)
    _access_logger.info(
        "access",
        request_id=request.get(REQUEST_ID, "-"),
        client=ctx.client_ip if ctx else request.remote,
        method=request.method,
        host=ctx.host_header if ctx else request.headers.get("Host", ""),
        path=ctx.target.path if ctx else request.raw_path[:256],
        route=ctx.route.name if ctx else None,
        decision=ctx.decision.outcome.value if ctx and ctx.decision else None,
        status=status,
        bytes=sent,
        duration_ms=round(duration * 1000, 3),
    )


class AccessLogger(AbstractAccessLogger):
    """aiohttp calls this once the response is out, so ``bytes`` is what was really sent.

    It also sees requests the HTTP parser refused (smuggling attempts, oversized
    headers), which never reach the pipeline.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        _access_event(request, response.status, response.body_length, time)


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost stage: give the request its id; log the requests whose client went away."""
    rid = uuid.uuid4().hex
    request[REQUEST_ID] = rid
    structlog.contextvars.bind_contextvars(request_id=rid)
    started = time.perf_counter()
    try:
        return await handler(request)
    except asyncio.CancelledError:
        # Client disconnected mid-request (nginx's 499): aiohttp logs no access for it.
        if request.app[CONFIG].logging.access_log:
            _access_event(request, 499, 0, time.perf_counter() - started)
        raise


async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer names its request id, for support tickets."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
