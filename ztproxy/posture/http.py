"""The ``http`` provider: device posture from an MDM/EDR endpoint, asked by device id.

``GET url`` (with ``{device_id}`` replaced, percent-encoded) with an optional bearer token:

- 200 with a JSON posture record (``ztproxy.posture.record``): its fields refine the device;
  ``revoked: true`` gives no device at all;
- 404: the endpoint does not know the device: it stays as the earlier providers described it;
- anything else (timeout, connection error, another status, a body that is not a valid
  record): fail closed, the device keeps its id and loses every posture attribute, and a
  ``device_posture_unavailable`` event says why. Never an exception into the pipeline.

Answers are cached per device id for ``cache_ttl`` (failures for at most 5 seconds, so a
failing endpoint is not hammered), in a cache bounded to ``cache_size`` ids, least recently
used out first. A device that falls out of compliance is seen within ``cache_ttl``.
Concurrent requests for the same id share one call to the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from ztproxy.config.devices import HttpPostureConfig
from ztproxy.config.schema import Config
from ztproxy.fetch import FetchFailed, get_json, json_client
from ztproxy.policy.model import Device
from ztproxy.posture.provider import PostureQuery, without_posture
from ztproxy.posture.record import PostureRecord, parse_record

log = structlog.get_logger("ztproxy.posture")

_FAILURE_TTL = 5.0
_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Answer:
    record: PostureRecord | None  # None: unknown to the endpoint (404) or failed
    failed: bool
    asked: float  # POSIX time
    ttl: float

    def fresh(self, now: float) -> bool:
        return 0 <= now - self.asked < self.ttl  # a clock set back does not stretch the TTL


class HttpPostureProvider:
    def __init__(self, *, url: str, token: str | None, timeout: float, cache_ttl: float, cache_size: int) -> None:
        self._url = url
        self._headers = {"Accept": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = timeout
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._pending: dict[str, asyncio.Task[_Answer]] = {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, settings: HttpPostureConfig, config: Config) -> HttpPostureProvider:
        return cls(url=settings.url, token=settings.token, timeout=settings.timeout,
                   cache_ttl=settings.cache_ttl, cache_size=settings.cache_size)

    async def start(self) -> None:
        self._session = json_client(self._timeout)

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        if device is None:
            return None
        now = query.now.timestamp()
        answer = self._cache.get(device.id)
        if answer is not None and answer.fresh(now):
            self._cache.move_to_end(device.id)
        else:
            answer = await self._shared_fetch(device.id, now)
        if answer.failed:
            return without_posture(device)
        return device if answer.record is None else answer.record.apply(device)

    async def _shared_fetch(self, device_id: str, now: float) -> _Answer:
        task = self._pending.get(device_id)
        if task is None:
            task = asyncio.create_task(self._fetch(device_id, now))
            self._pending[device_id] = task
            task.add_done_callback(lambda _: self._pending.pop(device_id, None))
        # A request that goes away must not cancel the call others are waiting for.
        return await asyncio.shield(task)

    async def _fetch(self, device_id: str, now: float) -> _Answer:
        try:
            record = await self._ask(device_id)
        except Exception as exc:  # FetchFailed, or a surprise: either way fail closed, never raise
            if isinstance(exc, FetchFailed):
                log.warning("device_posture_unavailable", device_id=device_id, error=str(exc))
            else:
                log.exception("device_posture_unavailable", device_id=device_id, error=type(exc).__name__)
            answer = _Answer(None, failed=True, asked=now, ttl=min(self._cache_ttl, _FAILURE_TTL))
        else:
            answer = _Answer(record, failed=False, asked=now, ttl=self._cache_ttl)
        self._cache[device_id] = answer
        self._cache.move_to_end(device_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return answer

    async def _ask(self, device_id: str) -> PostureRecord | None:
        if self._session is None:
            raise FetchFailed("the provider is not started")
        # Sent as built: the id is escaped here, the rest is the configured template.
        url = URL(self._url.replace("{device_id}", quote(device_id, safe="")), encoded=True)
        status, data = await get_json(self._session, url, headers=self._headers, max_bytes=_MAX_BODY)
        if status == 404:
            return None
        if status != 200:
            raise FetchFailed(f"the endpoint answered {status}")
        try:
            return parse_record(data)
        except ValueError as exc:
            raise FetchFailed(f"invalid posture: {exc}") from None
