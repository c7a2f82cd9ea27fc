"""A session's context and a request's, as the risk engine compares them: prefixes, never addresses.

The network is the client address (as ``server.trusted_proxies`` lets intake determine it)
cut to its /24 (IPv4) or /64 (IPv6) prefix: moving within one prefix (DHCP, IPv6 privacy
addresses) is no change. The browser is its family and major version, read from the
User-Agent header. :class:`RiskState` is what a session keeps, sealed with it.
Pure: no aiohttp, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

IPV4_PREFIX = 24
IPV6_PREFIX = 64
NO_BROWSER = "none"  # the family of a request without a User-Agent

# The first match names the family: browsers that also say "Chrome" or "Safari" come first.
_FAMILIES = (
    ("edge", re.compile(r"\b(?:Edg|EdgA|EdgiOS|Edge)/(\d+)")),
    ("opera", re.compile(r"\b(?:OPR|Opera)/(\d+)")),
    ("samsung", re.compile(r"\bSamsungBrowser/(\d+)")),
    ("firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("chrome", re.compile(r"\b(?:HeadlessChrome|Chrome|Chromium|CriOS)/(\d+)")),
    ("safari", re.compile(r"\bVersion/(\d+)[^ ]* (?:Mobile/\S+ )?Safari/")),
)
_PRODUCT = re.compile(r"\s*([A-Za-z][A-Za-z0-9._-]{0,40})(?:/(\d+))?")


def network_of(address: str) -> str | None:
    """The /24 or /64 prefix ``address`` belongs to (``"192.0.2.0/24"``), None for no address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    length = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{length}", strict=False))


@dataclass(frozen=True, slots=True)
class Browser:
    family: str  # "firefox", "chrome"... or the product of a non-browser ("curl"), or "none"
    major: int | None = None

    def __str__(self) -> str:
        return self.family if self.major is None else f"{self.family} {self.major}"


def browser_of(user_agent: str | None) -> Browser:
    """The browser family and major version a User-Agent header names."""
    if not user_agent:
        return Browser(NO_BROWSER)
    for family, pattern in _FAMILIES:
        found = pattern.search(user_agent)
        if found is not None:
            return Browser(family, int(found.group(1)))
    if user_agent.startswith("Mozilla/"):
        return Browser("other-browser")
    product = _PRODUCT.match(user_agent)
    if product is None:
        return Browser("other")
    major = product.group(2)
    return Browser(product.group(1).lower(), int(major) if major else None)


@dataclass(frozen=True, slots=True)
class Seen:
    """What a request shows of its context."""

    network: str | None
    browser: Browser
    device: str | None  # the device id a posture provider gave, if any


@dataclass(frozen=True, slots=True)
class Noted:
    """A signal the session gave, with the action taken and when (Unix seconds)."""

    signal: str
    action: str
    at: float


@dataclass(frozen=True, slots=True)
class RiskState:
    """The session's context and recent risk, sealed with the session (prefixes only)."""

    signed_in_from: str | None  # the network at sign-in
    browser: Browser
    device: str | None = None  # the first device the session was served from, once known
    network: str | None = None  # the network in use (the latest change)
    previous_network: str | None = None  # the one before it
    moved_at: float | None = None  # when the first request from ``network`` came
    signals: tuple[Noted, ...] = ()  # recent ones, oldest first
    locked_until: float | None = None
    device_known: bool = field(default=False)  # a device was recorded (``None`` after it is a change)

    @classmethod
    def at_sign_in(cls, seen: Seen) -> RiskState:
        return cls(signed_in_from=seen.network, browser=seen.browser, network=seen.network,
                   device=seen.device, device_known=seen.device is not None)

    def changed(self, **changes: Any) -> RiskState:
        return replace(self, **changes)

    def to_data(self) -> dict[str, Any]:
        return {
            "signed_in_from": self.signed_in_from, "browser": [self.browser.family, self.browser.major],
            "device": self.device, "device_known": self.device_known, "network": self.network,
            "previous_network": self.previous_network, "moved_at": self.moved_at,
            "signals": [[noted.signal, noted.action, noted.at] for noted in self.signals],
            "locked_until": self.locked_until,
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RiskState:
        """Raises TypeError, KeyError or ValueError for data of another shape."""
        family, major = data["browser"]
        return cls(
            signed_in_from=_text(data["signed_in_from"]),
            browser=Browser(str(family), None if major is None else int(major)),
            device=_text(data["device"]), device_known=bool(data["device_known"]), network=_text(data["network"]),
            previous_network=_text(data["previous_network"]), moved_at=_number(data["moved_at"]),
            signals=tuple(Noted(str(signal), str(action), float(at)) for signal, action, at in data["signals"]),
            locked_until=_number(data["locked_until"]),
        )


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
