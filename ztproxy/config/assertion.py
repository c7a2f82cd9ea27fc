"""The signed identity assertion ztproxy adds to forwarded requests, and its signing keys.

How keys are stored and rotated is described in :mod:`ztproxy.assertion.keys`.
This module imports no aiohttp.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ztproxy.config.values import Duration, Model
from ztproxy.verify.verifier import DEFAULT_LEEWAY

DEFAULT_ASSERTION_TTL = 60.0
# Longer than the JWKS cache of any verifier (ztproxy.verify caches 5 minutes), so every app
# knows a new key before the first assertion signed with it arrives.
DEFAULT_PUBLISH_BEFORE_USE = 600.0
# A retired key stays published for ttl + this: the exp leeway verifiers allow.
DEFAULT_VERIFIER_LEEWAY = DEFAULT_LEEWAY


class AssertionConfig(Model):
    ttl: Duration = Field(default=DEFAULT_ASSERTION_TTL, gt=0)
    # Every *.pem in this directory is a key; `ztproxy keys rotate` adds and prunes them there.
    # None (and no key_files): an ephemeral key per process, for trying ztproxy out.
    keys_dir: str | None = None
    key_files: tuple[str, ...] = ()  # more keys, one file each (secrets mounted one by one)
    publish_before_use: Duration = Field(default=DEFAULT_PUBLISH_BEFORE_USE, gt=0)
    verifier_leeway: Duration = DEFAULT_VERIFIER_LEEWAY

    @field_validator("keys_dir")
    @classmethod
    def _check_dir(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("expected a directory path (or null)")
        return value

    @field_validator("key_files")
    @classmethod
    def _check_files(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not path.strip() for path in value):
            raise ValueError("expected file paths")
        if len(set(value)) != len(value):
            raise ValueError("a key file is listed twice")
        return value
