"""DPoP proofs (RFC 9449): a caller proving it holds the key its access token is bound to.

Pure functions: the proof, the request it came with and the clock come in as arguments;
remembering each proof's ``jti`` (single use, on every replica) is the caller's part. Every
refusal is a :class:`~ztproxy.oidc.tokens.TokenInvalid` with reason ``dpop`` (or
``dpop-nonce`` when only a fresh server nonce is missing). Nonces (RFC 9449 8) are HMACs of
the time window, so every process holding the same secret makes and accepts the same ones.

This module imports no aiohttp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry

from ztproxy.oidc.tokens import ASYMMETRIC_ALGORITHMS, TokenInvalid

_TYPE = "dpop+jwt"
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_PROOF = 8192
_MAX_HEADER = 4096
_NONCE_WINDOW = 300.0  # a nonce is good for this window and the next


@dataclass(frozen=True, slots=True)
class DpopProof:
    jkt: str  # the RFC 7638 SHA-256 thumbprint of the proof's key: what cnf.jkt must say
    jti: str
    iat: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """``ath`` (RFC 9449 4.2): base64url of the SHA-256 of the access token."""
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def _same_uri(htu: str, url: str) -> bool:
    # RFC 9449 4.3 (9): the URI without query and fragment; scheme and host compare case-insensitively.
    try:
        a, b = urlsplit(htu), urlsplit(url)
        return (a.scheme.lower(), a.hostname, a.port, a.path or "/") == \
            (b.scheme.lower(), b.hostname, b.port, b.path or "/")
    except ValueError:
        return False


def validate_dpop_proof(proof: str, *, method: str, url: str, access_token: str, now: float, max_age: float,
                        leeway: float, nonces: tuple[str, ...] = ()) -> DpopProof:
    """The proof of a request (RFC 9449 4.3) for ``access_token``, or TokenInvalid.

    ``nonces``: when the server asks for nonces, the ones it accepts now; the proof must carry one.
    """
    if not proof or len(proof) > _MAX_PROOF or not proof.isascii() or proof.count(".") != 2:
        raise TokenInvalid("dpop", "the DPoP proof is not a compact JWT")
    registry = JWSRegistry(algorithms=sorted(ASYMMETRIC_ALGORITHMS))
    registry.max_header_length = _MAX_HEADER  # an RSA key in the header is past joserfc's 512 bytes
    try:
        header = jws.extract_compact(proof.encode("ascii"), registry=registry).headers()
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenInvalid("dpop", "the DPoP proof is not a compact JWS") from exc
    if str(header.get("typ", "")).lower() != _TYPE:
        raise TokenInvalid("dpop", "the DPoP proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if alg not in ASYMMETRIC_ALGORITHMS:  # RFC 9449 4.3 (5): never none, never a MAC
        raise TokenInvalid("dpop", f"the DPoP proof's algorithm {alg!r} is not accepted")
    public = header.get("jwk")
    if not isinstance(public, dict) or _PRIVATE_MEMBERS & set(public):  # 4.3 (7): a public key only
        raise TokenInvalid("dpop", "the DPoP proof carries no public key")
    try:
        key = JWKRegistry.import_key(public)
        claims = dict(jwt.decode(proof, key, algorithms=[alg], registry=registry).claims)
    except (JoseError, ValueError, TypeError) as exc:
        raise TokenInvalid("dpop", "the DPoP proof's signature does not verify with its key") from exc
    jti, htm, htu, iat = claims.get("jti"), claims.get("htm"), claims.get("htu"), claims.get("iat")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise TokenInvalid("dpop", "the DPoP proof has no jti")
    if htm != method:
        raise TokenInvalid("dpop", "the DPoP proof is for another method")
    if not isinstance(htu, str) or not _same_uri(htu, url):
        raise TokenInvalid("dpop", "the DPoP proof is for another URL")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or not math.isfinite(iat) \
            or not now - max_age - leeway <= iat <= now + leeway:
        raise TokenInvalid("dpop", "the DPoP proof is too old or from the future")
    if not hmac.compare_digest(str(claims.get("ath", "")), access_token_hash(access_token)):
        raise TokenInvalid("dpop", "the DPoP proof is for another access token")
    if nonces and claims.get("nonce") not in nonces:
        raise TokenInvalid("dpop-nonce", "the DPoP proof needs the server's nonce")
    return DpopProof(jkt=key.thumbprint(), jti=jti, iat=float(iat))


def dpop_nonces(secret: bytes, now: float) -> tuple[str, str]:
    """(the nonce to hand out now, the previous window's): both accepted."""
    window = int(now // _NONCE_WINDOW)

    def nonce(at: int) -> str:
        return _b64(hmac.new(secret, f"dpop-nonce:{at}".encode(), hashlib.sha256).digest()[:18])

    return nonce(window), nonce(window - 1)


def certificate_thumbprint(der: bytes) -> str:
    """``x5t#S256`` (RFC 8705 3.1): base64url of the SHA-256 of the DER certificate."""
    return _b64(hashlib.sha256(der).digest())
