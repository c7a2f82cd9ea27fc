"""Forging tokens the way an attacker would, for negative tests: claims changed, signature kept."""

from __future__ import annotations

import base64
import json
from typing import Any


def tamper(token: str, **changes: Any) -> str:
    """The compact JWS ``token`` with ``changes`` in its payload and its old signature (which no longer fits)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"
