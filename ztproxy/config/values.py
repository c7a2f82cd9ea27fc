"""Configuration value types: the scalar parsers and validators, and the base :class:`Model`.

Durations, byte sizes, listen addresses, URLs, CIDRs, path prefixes, names and the like,
each an ``Annotated`` type whose validator raises a plain-worded ``ValueError``. The
:class:`Model` every config model derives from forbids unknown keys and reads a key
``foo_file`` next to a string field ``foo`` from that file (for secrets).
This module imports no aiohttp.
"""

from __future__ import annotations

import ipaddress
import math
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, get_origin

from annotated_types import MinLen
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainValidator, model_validator
from yarl import URL

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_BYTES_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
                "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}
_BYTES_RE = re.compile(r"(\d+)\s*([a-z]*)")
_HOST_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
# RFC 3986 3.3 pchar and "/": the characters ztproxy.routing keeps as they are in a canonical path.
_PATH_RE = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
# RFC 9110 5.6.2: a method is a token.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CLOCK_RE = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d|24:00")
_VERSION_RE = re.compile(r"\d+(?:\.\d+)*")


# Validators raise ValueError even for a wrong type: pydantic reports a ValueError as a
# validation error, while a TypeError would escape as a crash.
def parse_duration(value: Any) -> float:
    """``90``, ``"500ms"``, ``"15m"``, ``"1h30m"`` -> seconds. Bare numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m or 12h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if not text:
            raise ValueError("expected a duration such as 30s, 15m or 12h, got an empty string")
        parts = _DURATION_RE.findall(text)
        if "".join(n + u for n, u in parts) != text:
            if re.fullmatch(r"\d+(\.\d+)?", text):
                seconds = float(text)
                parts = []
            else:
                raise ValueError(f"invalid duration {value!r}: use a number with a unit "
                                 "ms, s, m, h or d, e.g. 30s, 15m, 1h30m")
        else:
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30s, 15m or 12h")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_byte_size(value: Any) -> int:
    """``1048576``, ``"64KiB"``, ``"10MB"`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _BYTES_RE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _BYTES_UNITS:
            raise ValueError(f"invalid size {value!r}: use a number with a unit B, KiB, MiB or GiB")
        size = int(match.group(1)) * _BYTES_UNITS[match.group(2)]
    else:
        raise ValueError("expected a size such as 64KiB or 10MiB")
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def split_listen(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` -> (host, port)."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"invalid listen address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"invalid port {number} in {address!r}")
    return host, number


def _check_listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    split_listen(value)
    return value


def _check_http_url(value: Any) -> str:
    return _check_issuer_url(value).rstrip("/")


def _check_issuer_url(value: Any) -> str:
    """An http(s) URL kept as written, a trailing "/" included (an issuer is compared exactly)."""
    if not isinstance(value, str):
        raise ValueError("expected a URL such as http://127.0.0.1:8000")
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"invalid URL {value!r}: scheme must be http or https")
    if not url.host:
        raise ValueError(f"invalid URL {value!r}: a host is required")
    try:
        url.port  # noqa: B018 -- raises on an out-of-range port
    except ValueError as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.user or url.password:
        raise ValueError(f"invalid URL {value!r}: credentials in URLs are not allowed")
    if url.query_string or url.fragment:
        raise ValueError(f"invalid URL {value!r}: no query or fragment allowed")
    return value


def _check_cidr(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR {value!r}: expected e.g. 10.0.0.0/8 or 192.0.2.7") from None



def _check_path_prefix(value: str) -> str:
    # Only paths ztproxy.routing treats as already canonical; ";" params count for dot
    # segments because servlet containers strip them ("/..;/admin").
    if not _PATH_RE.fullmatch(value) or "//" in value \
            or any(seg.partition(";")[0] in (".", "..") for seg in value.split("/")):
        raise ValueError(f"invalid path prefix {value!r}: a plain path starting with '/', "
                         "without '.', '..' segments, '//', '?', '#', '%', spaces or non-ASCII")
    return value


def _check_method(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"invalid HTTP method {value!r}: expected a name such as GET or POST")
    return value.upper()


def is_host_name(name: str) -> bool:
    """A DNS name of letter-digit-hyphen labels, as a lowercase string without a trailing dot."""
    return bool(name) and len(name) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in name.split("."))


def _check_email_domain(value: Any) -> str:
    domain = value.strip().lower().rstrip(".") if isinstance(value, str) else ""
    if not is_host_name(domain):
        raise ValueError(f"invalid email domain {value!r}: expected a domain such as corp.example (no '@')")
    return domain


def _check_name(value: Any) -> str:
    """A user, group or platform name: a non-empty string as written (YAML may give numbers)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"expected a non-empty name, got {value!r}")
    return str(value).strip()


def _check_clock(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 17:30 as the base-60 number 1050.
        raise ValueError(f"write times in quotes, e.g. \"17:30\" (YAML read this one as the number {value})")
    if not isinstance(value, str) or not _CLOCK_RE.fullmatch(value.strip()):
        raise ValueError(f"invalid time {value!r}: expected \"HH:MM\" from 00:00 to 24:00")
    return value.strip()


def _check_weekday(value: Any) -> str:
    day = value.strip().lower() if isinstance(value, str) else ""
    if day not in WEEKDAYS:
        raise ValueError(f"invalid day {value!r}: expected one of {', '.join(WEEKDAYS)}")
    return day


def _check_platform(value: Any) -> str:
    return _check_name(value).lower()


def _check_timezone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected an IANA time zone name such as Europe/Paris or UTC")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}: expected an IANA name such as Europe/Paris or UTC") from None
    return value


def _check_os_version(value: Any) -> str:
    if isinstance(value, float):
        # YAML reads 14.10 as the number 14.1: only a string keeps every component.
        raise ValueError(f"write versions in quotes, e.g. \"14.2\" (YAML read this one as the number {value})")
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not _VERSION_RE.fullmatch(text):
        raise ValueError(f"invalid version {value!r}: expected numbers separated by dots, e.g. \"14.2\"")
    return text


def _check_claim_value(value: Any) -> str | int | bool:
    if not isinstance(value, (str, int)):  # bool is an int
        raise ValueError(f"expected a string, a whole number or true/false, got {value!r}")
    return value


def _positive(value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise ValueError("must be longer than 0s")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
ListenAddress = Annotated[str, BeforeValidator(_check_listen)]
HttpUrl = Annotated[str, BeforeValidator(_check_http_url)]
IssuerUrl = Annotated[str, BeforeValidator(_check_issuer_url)]
Cidr = Annotated[str, BeforeValidator(_check_cidr)]
Name = Annotated[str, BeforeValidator(_check_name)]
NonEmpty = MinLen(1)
Method = Annotated[str, BeforeValidator(_check_method)]
PathPrefix = Annotated[str, AfterValidator(_check_path_prefix)]
EmailDomain = Annotated[str, BeforeValidator(_check_email_domain)]
ClockTime = Annotated[str, BeforeValidator(_check_clock)]
Weekday = Annotated[str, BeforeValidator(_check_weekday)]
TimeZoneName = Annotated[str, BeforeValidator(_check_timezone)]
OsVersion = Annotated[str, BeforeValidator(_check_os_version)]
Platform = Annotated[str, BeforeValidator(_check_platform)]
MaxAge = Annotated[Duration | None, AfterValidator(_positive)]
ClaimValue = Annotated[str | int | bool, PlainValidator(_check_claim_value)]


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys are errors, ``*_file`` secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _read_file_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        resolved = dict(data)
        for key in list(data):
            if not isinstance(key, str) or not key.endswith("_file") or key in fields:
                continue
            target = key[: -len("_file")]
            if target not in fields:
                continue
            if target in data:
                raise ValueError(f"give either {target} or {key}, not both")
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"{key}: expected a file path")
            try:
                text = Path(data[key]).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{key}: cannot read {data[key]!r}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise ValueError(f"{key}: cannot read {data[key]!r}: not UTF-8 text") from None
            if get_origin(fields[target].annotation) in (tuple, list):
                # A list from a file: one value per line (secrets, newest first), blank lines skipped.
                resolved[target] = [line.strip() for line in text.splitlines() if line.strip()]
            else:
                resolved[target] = text.rstrip("\r\n")
            del resolved[key]
        return resolved
