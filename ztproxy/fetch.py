"""Small documents over HTTP (IdP answers, MDM answers, JWKS): read to the end, bounded, errors in words.

An answer arrives in as many TCP segments as the network makes of it; a single
``content.read(n)`` returns what happens to be buffered, not the body. ``read_bounded``
reads to the end and stops at a size limit, so a slow or hostile peer can neither cut an
answer short unnoticed nor make the proxy buffer without end.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from yarl import URL

_CHUNK = 16 * 1024


class FetchFailed(Exception):
    """The document could not be fetched; the message says why, in words fit for a log."""


class BodyTooLarge(FetchFailed):
    """The answer is larger than the limit set for it."""


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The whole body of ``response``, however it was segmented; BodyTooLarge past ``max_bytes``."""
    length = response.content_length
    if length is not None and length > max_bytes:
        raise BodyTooLarge(f"the answer is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(f"the answer is larger than {max_bytes} bytes")
    return bytes(body)


def json_client(timeout: float) -> aiohttp.ClientSession:
    """A client for ``get_json``: every request within ``timeout``, no cookies, no proxy from the env."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), cookie_jar=aiohttp.DummyCookieJar(),
                                 trust_env=False)


async def get_json(session: aiohttp.ClientSession, url: str | URL, *, max_bytes: int,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, parsed body) for a 200, (status, None) for any other status; never follows redirects."""
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status != 200:
                return response.status, None
            body = await read_bounded(response, max_bytes)
    except TimeoutError:
        raise FetchFailed(f"no answer within {session.timeout.total or 0:g}s") from None
    except aiohttp.ClientError as exc:
        raise FetchFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        return 200, json.loads(body)
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FetchFailed(f"invalid JSON: {exc}") from None
