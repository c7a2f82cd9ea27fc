"""The signed identity assertion ztproxy adds to forwarded requests, and its signing keys.

This module imports no aiohttp.
"""

from __future__ import annotations

from pydantic import Field

from ztproxy.config.values import Duration, Model

DEFAULT_ASSERTION_TTL = 60.0


class AssertionConfig(Model):
    ttl: Duration = Field(default=DEFAULT_ASSERTION_TTL, gt=0)
