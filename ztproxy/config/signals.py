"""Security signals: the transmitters (IdP, EDR, MDM) whose events end or weaken access at once.

Each transmitter speaks the OpenID Shared Signals Framework: ztproxy creates (or updates) its
stream at start, with push delivery (RFC 8935) to ``{public_url}/.ztproxy/ssf/events``.

This module imports no aiohttp.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from ztproxy.config.identity import (
    DEFAULT_ALGORITHMS,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_METADATA_TTL,
    IdentityProviderConfig,
)
from ztproxy.config.values import Duration, HttpUrl, Model

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class TransmitterConfig(Model):
    name: str
    issuer: HttpUrl  # the iss of its SETs
    audience: str  # what ztproxy expects in their aud
    # push (RFC 8935: the transmitter POSTs each SET here) or poll (RFC 8936: ztproxy asks for them).
    delivery: Literal["push", "poll"] = "push"
    poll_interval: Duration = 2.0  # poll delivery: the wait between polls that found nothing
    # The transmitter's stream management API bearer token (better bearer_token_file).
    bearer_token: str | None = None
    # Whose users the events' subjects name (an identity provider's name); default the first.
    identity_provider: str | None = None
    # The SSF configuration document; default {issuer host}/.well-known/ssf-configuration{issuer path}.
    configuration_url: HttpUrl | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    http_timeout: Duration = DEFAULT_HTTP_TIMEOUT
    metadata_ttl: Duration = DEFAULT_METADATA_TTL

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(f"invalid transmitter name {value!r}: use up to 32 lowercase letters, digits, '_', '-'")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return IdentityProviderConfig.check_algorithms(value)


class SignalsConfig(Model):
    transmitters: tuple[TransmitterConfig, ...] = ()
