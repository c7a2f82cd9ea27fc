"""Device posture providers: which ones run, and how they are reached.

This module imports no aiohttp.
"""

from __future__ import annotations

from ztproxy.config.values import Model


class DevicesConfig(Model):
    """No provider configured: requests carry no device, and device criteria fail closed."""
