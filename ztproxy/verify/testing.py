"""Mint assertions in your app's tests, with a throwaway key, without running ztproxy.

    issuer = TestIssuer(audience="https://wiki.corp.example")
    verifier = issuer.verifier()                 # trusts only this throwaway key
    token = issuer.mint(sub="alice", email="alice@corp.example", groups=["staff"])
    request.headers["X-Ztproxy-Jwt-Assertion"] = token
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from ztproxy.verify.verifier import Verifier

DEFAULT_TEST_ISSUER = "https://ztproxy.test"


class TestIssuer:
    """A stand-in for the proxy's signing side, for tests only (the key lives in memory)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, audience: str, issuer: str = DEFAULT_TEST_ISSUER) -> None:
        self.issuer = issuer
        self.audience = audience
        self._key = ECKey.generate_key("P-256", parameters={"kid": f"test-{uuid.uuid4().hex[:8]}"}, private=True)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._key.as_dict(private=False)]}

    def verifier(self) -> Verifier:
        return Verifier(issuer=self.issuer, audience=self.audience, jwks=self.jwks)

    def mint(self, *, sub: str = "test-user", lifetime: float = 60.0, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": sub, "iat": now, "nbf": now,
                                "exp": now + int(lifetime), "jti": uuid.uuid4().hex, **claims}
        return jwt.encode({"alg": "ES256", "kid": self._key.kid, "typ": "JWT"}, body, self._key)
