"""Device posture: which device a request comes from, and what state it is in.

Providers behind one small Protocol (:class:`PostureProvider`), chained in a fixed order by
:class:`Posture` as the ``devices:`` configuration section chooses them: client_certificate,
signed, inventory, http, then custom ones (``package.module:Class``). See ``provider.py``.
"""

from __future__ import annotations

from ztproxy.posture.client_cert import peer_certificate
from ztproxy.posture.provider import BUILTIN_PROVIDERS, Posture, PostureProvider, PostureQuery, without_posture
from ztproxy.posture.record import PostureRecord

__all__ = [
    "BUILTIN_PROVIDERS",
    "Posture",
    "PostureProvider",
    "PostureQuery",
    "PostureRecord",
    "peer_certificate",
    "without_posture",
]
