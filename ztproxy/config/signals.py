"""Security signals: the transmitters (IdP, EDR, MDM) whose events end or weaken access at once,
and the receivers (the apps behind ztproxy) told when ztproxy ends a session.

Each transmitter speaks the OpenID Shared Signals Framework: ztproxy creates (or updates) its
stream at start, with push delivery (RFC 8935) to ``{public_url}/.ztproxy/ssf/events``. Each
receiver gets CAEP ``session-revoked`` events pushed to its endpoint. Plain ``http`` only for
loopback addresses (tests, a sidecar); ``https`` otherwise.

This module imports no aiohttp.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, field_validator
from yarl import URL

from ztproxy.config.identity import (
    DEFAULT_ALGORITHMS,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_METADATA_TTL,
    IdentityProviderConfig,
)
from ztproxy.config.values import Duration, HttpUrl, Model

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _https_unless_loopback(value: str) -> str:
    """SSF 1.0 and RFC 8935 4.1: events travel over TLS; plain http only on this machine."""
    url = URL(value)
    if url.scheme == "https":
        return value
    host = url.host or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{value!r}: use https (plain http only for a loopback address)")
    return value


SignalsUrl = Annotated[HttpUrl, AfterValidator(_https_unless_loopback)]


def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"invalid {what} name {value!r}: use up to 32 lowercase letters, digits, '_', '-'")
    return value


class TransmitterConfig(Model):
    name: str
    issuer: SignalsUrl  # the iss of its SETs
    audience: str  # what ztproxy expects in their aud
    # push (RFC 8935: the transmitter POSTs each SET here) or poll (RFC 8936: ztproxy asks for them).
    delivery: Literal["push", "poll"] = "push"
    poll_interval: Duration = 2.0  # poll delivery: the wait between polls that found nothing
    # The transmitter's stream management API bearer token (better bearer_token_file).
    bearer_token: str | None = None
    # Whose users the events' subjects name (an identity provider's name); default the first.
    identity_provider: str | None = None
    # The SSF configuration document; default {issuer host}/.well-known/ssf-configuration{issuer path}.
    configuration_url: SignalsUrl | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    http_timeout: Duration = DEFAULT_HTTP_TIMEOUT
    metadata_ttl: Duration = DEFAULT_METADATA_TTL

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_name(value, "transmitter")

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return IdentityProviderConfig.check_algorithms(value)


class ReceiverConfig(Model):
    """An app told when ztproxy ends a session (CAEP session-revoked, pushed as RFC 8935 has it)."""

    name: str
    url: SignalsUrl  # its push endpoint
    # The route the app is behind: the SETs carry that route's audience (aud) and the sid its
    # assertions carry, so the app matches them to its own sessions.
    route: str
    # Sent as the Authorization header of each push (better authorization_header_file or ${ENV}).
    authorization_header: str | None = None
    events: tuple[Literal["session-revoked"], ...] = ("session-revoked",)
    http_timeout: Duration = DEFAULT_HTTP_TIMEOUT

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_name(value, "receiver")


class SignalsConfig(Model):
    transmitters: tuple[TransmitterConfig, ...] = ()
    receivers: tuple[ReceiverConfig, ...] = ()
