"""Configuration: the frozen schema and the loader that validates YAML files against it.

``load(path)`` / ``load_text(text)`` return a :class:`Config` or raise one
:class:`~ztproxy.errors.ConfigError` listing every problem with its YAML path and line.
"""

from __future__ import annotations

from ztproxy.config.loader import load, load_text
from ztproxy.config.rules import Rule
from ztproxy.config.schema import (
    Config,
    LimitsConfig,
    LoggingConfig,
    RouteConfig,
    ServerConfig,
    TlsConfig,
)

__all__ = [
    "Config",
    "LimitsConfig",
    "LoggingConfig",
    "RouteConfig",
    "Rule",
    "ServerConfig",
    "TlsConfig",
    "load",
    "load_text",
]
