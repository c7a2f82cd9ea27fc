"""Telemetry: structlog configured once, JSON lines on stdout, one access event per request.

Events are snake_case names with key=value fields; the request id travels in
contextvars so every event logged while serving a request carries it.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web
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


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost stage: give the request its id, then log one access event when it ends."""
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 499  # the client went away before an answer (nginx's convention)
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        if request.app[CONFIG].logging.access_log:
            ctx = request.get(CONTEXT)
            _access_logger.info(
                "access",
                client=ctx.client_ip if ctx else request.remote,
                method=request.method,
                host=ctx.host_header if ctx else request.headers.get("Host", ""),
                path=ctx.target.path if ctx else request.raw_path[:256],
                route=ctx.route.name if ctx else None,
                decision=ctx.decision.outcome.value if ctx and ctx.decision else None,
                status=status,
                # A streamed response has been written by now; a plain one is about to be.
                bytes=(response.body_length or response.content_length or 0) if response is not None else 0,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )


async def add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer names its request id, for support tickets."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
