"""The posture provider Protocol, the registry of built-in providers, and the configured chain.

Per request the pipeline builds a :class:`PostureQuery` and asks :meth:`Posture.device_for`
for the :class:`~ztproxy.policy.model.Device` to put into the policy facts. The providers
run in a fixed order, each refining what the previous ones said:

1. ``client_certificate`` establishes the device id from the verified TLS client certificate;
2. ``signed`` adds the posture of a signed token from the endpoint agent (bound to that id);
3. ``inventory`` adds what the inventory file says about the id (or revokes it);
4. ``http`` adds what the MDM/EDR endpoint says about the id (or revokes it);
5. ``custom`` providers, in the order listed.

Errors fail closed: a provider that raises ends the chain with the device reduced to its id
(no posture attribute, so every device criterion fails), and nothing reaches the pipeline.
This module imports no aiohttp: the providers that do HTTP are imported by name, when built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, cast, runtime_checkable

import structlog

from ztproxy.config.schema import Config
from ztproxy.errors import ConfigError, ConfigIssue
from ztproxy.imports import resolve
from ztproxy.policy.model import Device

log = structlog.get_logger("ztproxy.posture")


@dataclass(frozen=True, slots=True)
class PostureQuery:
    """What the pipeline extracts from a request for the providers (no aiohttp types)."""

    peer_certificate: bytes | None  # DER of the client certificate TLS verified (see client_cert)
    headers: Mapping[str, str]  # the request headers; lookups must be case-insensitive
    subject: str | None  # the signed-in user, if any (for custom providers keyed by user)
    now: datetime  # aware; the only clock providers look at for validity and cache expiry

    def __post_init__(self) -> None:
        if self.now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")


@runtime_checkable
class PostureProvider(Protocol):
    """One source of device identity or posture."""

    async def start(self) -> None:
        """Open what the provider needs (HTTP client, file watcher); called once, in the loop."""

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        """Establish or refine the device. Return ``device`` unchanged when there is nothing to
        add, a new Device to refine it, None to drop the identity (revoked, expired). Never raise:
        a failing backend gives ``without_posture(device)``."""

    async def close(self) -> None:
        """Release what ``start`` opened; safe to call twice, or without ``start``."""


# Built from its section of `devices:` and the whole configuration (e.g. server.tls).
ProviderFactory = Callable[[Any, Config], PostureProvider]

# Short name (the key under `devices:`) -> factory, in chain order. Imported when a
# configuration uses them, so this module stays free of aiohttp.
BUILTIN_PROVIDERS: Mapping[str, str] = {
    "client_certificate": "ztproxy.posture.client_cert:ClientCertificateProvider.from_config",
    "signed": "ztproxy.posture.signed:SignedPostureProvider.from_config",
    "inventory": "ztproxy.posture.inventory:InventoryProvider.from_config",
    "http": "ztproxy.posture.http:HttpPostureProvider.from_config",
}


def without_posture(device: Device | None) -> Device | None:
    """The device as known when its posture cannot be told: its id, nothing else (fail closed)."""
    return None if device is None else Device(id=device.id)


def build_providers(config: Config) -> list[tuple[str, PostureProvider]]:
    """The configured providers, named for logs, in chain order."""
    devices = config.devices
    providers: list[tuple[str, PostureProvider]] = []
    for name, target in BUILTIN_PROVIDERS.items():
        settings = getattr(devices, name)
        if settings is not None:
            factory = cast("ProviderFactory", resolve(target))
            providers.append((name, factory(settings, config)))
    for index, entry in enumerate(devices.custom):
        path = f"devices.custom[{index}].provider"
        try:
            provider = cast("Callable[..., object]", resolve(entry.provider))(**entry.options)
        except Exception as exc:  # a custom class refusing its options: a configuration error
            raise ConfigError([ConfigIssue(path, f"{entry.provider}: {type(exc).__name__}: {exc}")]) from None
        if not isinstance(provider, PostureProvider):
            raise ConfigError([ConfigIssue(path, f"{entry.provider} does not implement PostureProvider "
                                                 "(async start, observe and close)")])
        providers.append((entry.provider, provider))
    return providers


class Posture:
    """The configured chain of providers. ``async with Posture.from_config(config) as posture``."""

    def __init__(self, providers: Sequence[tuple[str, PostureProvider]]) -> None:
        self._providers = tuple(providers)

    @classmethod
    def from_config(cls, config: Config) -> Posture:
        """Raises ConfigError for a provider that cannot be built (e.g. a custom one's options)."""
        return cls(build_providers(config))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._providers)

    async def start(self) -> None:
        for _, provider in self._providers:
            await provider.start()

    async def close(self) -> None:
        for _, provider in self._providers:
            try:
                await provider.close()
            except Exception:  # closing the others matters more than this one's failure
                log.exception("posture_provider_close_failed")

    async def __aenter__(self) -> Posture:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def device_for(self, query: PostureQuery) -> Device | None:
        """The device the request comes from, with its posture; None when none is known."""
        device: Device | None = None
        for name, provider in self._providers:
            try:
                device = await provider.observe(query, device)
            except Exception:
                # Fail closed and stop: a later provider must not restore trust this one
                # might have withdrawn (a revocation it could not report).
                log.exception("posture_provider_failed", provider=name)
                return without_posture(device)
        return device
