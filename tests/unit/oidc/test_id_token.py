"""ID token validation (OIDC Core 3.1.3.7): good tokens pass, every kind of bad one is refused by name."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key, KeySet, OctKey, RSAKey

from tests.unit.oidc.helpers import (
    ALGORITHMS,
    CLIENT_ID,
    CLIENT_SECRET,
    GOOD_EC,
    GOOD_ED,
    GOOD_RSA,
    GOOD_RSA_2,
    ISSUER,
    LEEWAY,
    NONCE,
    NOW,
    ROGUE_EC,
    ROGUE_RSA,
    b64,
    check_id_token,
    hmac_signed,
    id_claims,
    keys_of,
    logout_claims,
    refusal,
    sign,
    sign_payload,
    unsigned,
    with_header,
)
from ztproxy.oidc.tokens import TokenInvalid, UnknownSigningKey

check = check_id_token


# --- good tokens ------------------------------------------------------------------------

@pytest.mark.parametrize(("alg", "key"), [("RS256", GOOD_RSA), ("PS256", GOOD_RSA), ("ES256", GOOD_EC),
                                          ("EdDSA", GOOD_ED)])
def test_a_good_token_gives_its_claims(alg: str, key: Key) -> None:
    claims = check(sign(id_claims(), key, alg))
    assert claims.sub == "248289761001"
    assert claims.iss == ISSUER
    assert claims.aud == (CLIENT_ID,)
    assert (claims.exp, claims.iat, claims.auth_time) == (NOW + 300, NOW - 5, NOW - 60)
    assert claims.nonce == NONCE
    assert (claims.acr, claims.amr, claims.sid) == ("urn:corp:mfa", ("pwd", "otp"), "08a5019c-17e1")
    assert (claims.email, claims.email_verified, claims.name) == ("ada@corp.example", True, "Ada")
    assert claims.raw["groups"] == ["staff"]


def test_optional_claims_may_be_absent_or_null() -> None:
    claims = check(sign(id_claims(auth_time=None, acr=None, amr=None, sid=None, email=None,
                                  email_verified=None, name=None) | {"acr": None, "name": None}))
    assert (claims.auth_time, claims.acr, claims.amr, claims.sid) == (None, None, (), None)
    assert (claims.email, claims.email_verified, claims.name) == (None, None, None)


def test_several_audiences_with_azp_for_us_pass() -> None:
    claims = check(sign(id_claims(aud=[CLIENT_ID, "https://api.corp.example"], azp=CLIENT_ID)))
    assert claims.aud == (CLIENT_ID, "https://api.corp.example")
    assert claims.azp == CLIENT_ID


def test_the_leeway_covers_clock_skew() -> None:
    check(sign(id_claims(exp=NOW - LEEWAY + 1, iat=NOW + LEEWAY - 1, nbf=NOW + LEEWAY - 1)))


def test_email_verified_as_the_strings_some_providers_send() -> None:
    assert check(sign(id_claims(email_verified="true"))).email_verified is True
    assert check(sign(id_claims(email_verified="false"))).email_verified is False


def test_a_typ_of_jwt_or_another_media_type_passes() -> None:
    check(sign(id_claims(), typ="JWT"))
    check(sign(id_claims(), typ="application/jwt"))


def test_unknown_non_critical_header_parameters_are_ignored() -> None:
    extension: dict[str, Any] = {"x-ext": "anything"}
    check(sign(id_claims(), **extension))  # RFC 7515 4: must be ignored unless crit


def test_without_kid_each_key_for_the_alg_is_tried() -> None:
    # Several RSA keys and no kid: joserfc alone would refuse; the second key signed it.
    check(sign(id_claims(), GOOD_RSA_2, kid=None))
    check(sign(id_claims(), GOOD_EC, "ES256", kid=None))


def test_without_kid_a_rogue_signature_is_still_refused() -> None:
    assert refusal(check, sign(id_claims(), ROGUE_RSA, kid=None)) == "signature"


def test_a_jwks_key_without_kid_verifies_a_token_without_kid() -> None:
    jwk = {name: value for name, value in GOOD_RSA.as_dict(private=False).items() if name != "kid"}
    check(sign(id_claims(), GOOD_RSA, kid=None), keys=KeySet.import_key_set({"keys": [jwk]}))


# --- at_hash ----------------------------------------------------------------------------

def _half_hash(value: str, digest: Any) -> str:
    full = digest(value.encode()).digest()
    return base64.urlsafe_b64encode(full[: len(full) // 2]).rstrip(b"=").decode()


@pytest.mark.parametrize(("alg", "key", "digest"), [("RS256", GOOD_RSA, hashlib.sha256),
                                                    ("ES256", GOOD_EC, hashlib.sha256),
                                                    ("EdDSA", GOOD_ED, hashlib.sha512)])
def test_at_hash_matching_the_access_token_passes(alg: str, key: Key, digest: Any) -> None:
    token = sign(id_claims(at_hash=_half_hash("access-token-1", digest)), key, alg)
    check(token, access_token="access-token-1")


def test_at_hash_of_another_access_token_is_refused() -> None:
    token = sign(id_claims(at_hash=_half_hash("access-token-1", hashlib.sha256)))
    assert refusal(check, token, access_token="access-token-2") == "at-hash"
    check(token)  # no access token to compare with: nothing to check


# --- algorithm, key and signature -------------------------------------------------------

@pytest.mark.parametrize("key", [ROGUE_RSA, ROGUE_EC])
def test_a_rogue_key_with_the_providers_kid_is_refused(key: Key) -> None:
    alg = "RS256" if isinstance(key, RSAKey) else "ES256"
    assert refusal(check, sign(id_claims(), key, alg)) == "signature"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused_even_when_listed(alg: str) -> None:
    assert refusal(check, unsigned(id_claims(), alg)) == "algorithm"
    assert refusal(check, unsigned(id_claims(), alg), algorithms=[*ALGORITHMS, alg]) == "algorithm"


def test_hs256_with_the_client_secret_is_refused_even_when_listed() -> None:
    token = sign(id_claims(), OctKey.import_key(CLIENT_SECRET), "HS256", kid=None)
    assert refusal(check, token) == "algorithm"
    assert refusal(check, token, algorithms=["HS256", *ALGORITHMS]) == "algorithm"


def test_hs256_keyed_with_the_rsa_public_key_is_refused() -> None:
    # RS/HS confusion: a verifier that fed the RSA public key to HMAC would accept this.
    pem = GOOD_RSA.as_pem(private=False)
    for token in (hmac_signed(id_claims(), pem, kid="rsa-1"), hmac_signed(id_claims(), pem)):
        assert refusal(check, token) == "algorithm"
        assert refusal(check, token, algorithms=["HS256", *ALGORITHMS]) == "algorithm"


def test_an_algorithm_missing_from_the_allow_list_is_refused() -> None:
    assert refusal(check, sign(id_claims(), GOOD_EC, "ES256"), algorithms=["RS256"]) == "algorithm"


def test_a_kid_naming_a_key_of_another_type_is_refused() -> None:
    # ES256 signed by the rogue, under the kid of the provider's RSA key.
    assert refusal(check, sign(id_claims(), ROGUE_EC, "ES256", kid="rsa-1")) == "algorithm"


def test_a_jwk_restricted_to_another_alg_or_use_is_not_used() -> None:
    for restriction in ({"alg": "RS256"}, {"use": "enc"}):
        keys = KeySet.import_key_set({"keys": [GOOD_RSA.as_dict() | restriction]})  # type: ignore[operator]
        assert refusal(check, sign(id_claims(), GOOD_RSA, "PS256"), keys=keys) == "algorithm"


def test_an_unknown_kid_asks_for_a_jwks_refetch() -> None:
    newcomer = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    with pytest.raises(UnknownSigningKey) as caught:
        check(sign(id_claims(), newcomer, "ES256"))
    assert (caught.value.reason, caught.value.kid) == ("unknown-key", "ec-2")
    assert isinstance(caught.value, TokenInvalid)
    check(sign(id_claims(), newcomer, "ES256"), keys=keys_of(GOOD_RSA, newcomer))  # after the refetch


def test_no_key_for_the_alg_without_kid_asks_for_a_refetch() -> None:
    p384 = ECKey.generate_key("P-384")
    with pytest.raises(UnknownSigningKey) as caught:
        check(sign(id_claims(), p384, "ES384", kid=None), algorithms=["ES384"])
    assert caught.value.kid is None


@pytest.mark.parametrize("header", [{"jwk": ROGUE_RSA.as_dict(private=False)},
                                    {"jku": "https://rogue.example/jwks.json"},
                                    {"x5u": "https://rogue.example/cert.pem"}])
def test_keys_named_in_the_header_are_never_used(header: dict[str, Any]) -> None:
    assert refusal(check, sign(id_claims(), ROGUE_RSA, **header)) == "signature"
    with pytest.raises(UnknownSigningKey):
        check(sign(id_claims(), ROGUE_RSA, kid="rogue", **header))


@pytest.mark.parametrize("header", [{"crit": ["x-ext"], "x-ext": "must-understand"},
                                    {"crit": ["exp"], "exp": int(NOW) + 300},
                                    {"crit": ["b64"], "b64": False}])
def test_a_critical_header_parameter_is_refused(header: dict[str, Any]) -> None:
    token = sign(id_claims(), **header) if "b64" not in header else \
        f"{b64({'alg': 'RS256', 'kid': 'rsa-1', **header})}.{b64(id_claims())}.{b64(b'sig')}"
    assert refusal(check, token) == "crit"


def test_a_tampered_payload_is_refused() -> None:
    header, _, signature = sign(id_claims()).split(".")
    forged = f"{header}.{b64(id_claims(sub='admin'))}.{signature}"
    assert refusal(check, forged) == "signature"


def test_a_tampered_header_is_refused() -> None:
    token = sign(id_claims())
    assert refusal(check, with_header(token, alg="PS256", kid="rsa-1")) == "signature"
    assert refusal(check, with_header(token, alg="RS256", kid="rsa-2")) == "signature"


def test_a_truncated_token_is_refused() -> None:
    token = sign(id_claims())
    assert refusal(check, token[:-8]) == "signature"
    assert refusal(check, token.rsplit(".", 1)[0]) == "malformed"
    assert refusal(check, token.split(".", 1)[0]) == "malformed"


@pytest.mark.parametrize("garbage", [
    "", ".", "..", "...", "abc", "a.b.c", "eyJ.eyJ.x", "é.é.é", "a b.c d.e f",
    f"{b64({'alg': 'RS256'})}.!!!.sig",
    f"{b64(b'not json')}.{b64(id_claims())}.sig",
    f"{b64({'kid': 'rsa-1'})}.{b64(id_claims())}.sig",  # no alg
    f"{b64(b'[' * 5000)}.{b64(id_claims())}.sig",  # nesting deep enough to exhaust recursion
    f"{b64({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.key.iv.ciphertext.tag",  # JWE: not supported
    "x" * 200_000,
])
def test_garbage_is_malformed(garbage: str) -> None:
    assert refusal(check, garbage) == "malformed"


def test_a_kid_that_is_not_a_string_is_malformed() -> None:
    assert refusal(check, with_header(sign(id_claims()), alg="RS256", kid=7)) == "malformed"


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"a string"', b"not json", b"null"])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    assert refusal(check, sign_payload(payload)) == "malformed"


# --- claims -----------------------------------------------------------------------------

@pytest.mark.parametrize("iss", ["https://rogue.example", ISSUER + "/", ISSUER.upper(), None])
def test_another_or_no_issuer_is_refused(iss: str | None) -> None:
    assert refusal(check, sign(id_claims(iss=iss))) == "issuer"


@pytest.mark.parametrize("aud", ["other-client", ["other-client", "another"], None, [], ""])
def test_an_audience_without_us_is_refused(aud: Any) -> None:
    assert refusal(check, sign(id_claims(aud=aud))) == "audience"


def test_several_audiences_without_azp_are_refused() -> None:
    assert refusal(check, sign(id_claims(aud=[CLIENT_ID, "other-client"]))) == "azp"


@pytest.mark.parametrize("aud", [CLIENT_ID, [CLIENT_ID, "other-client"]])
def test_an_azp_naming_another_client_is_refused(aud: Any) -> None:
    assert refusal(check, sign(id_claims(aud=aud, azp="other-client"))) == "azp"


def test_an_expired_or_endless_token_is_refused() -> None:
    assert refusal(check, sign(id_claims(exp=NOW - LEEWAY - 1))) == "expired"
    assert refusal(check, sign(id_claims(exp=None))) == "expired"


def test_a_token_not_yet_valid_is_refused() -> None:
    assert refusal(check, sign(id_claims(nbf=NOW + LEEWAY + 5))) == "not-yet-valid"


def test_iat_in_the_future_missing_or_too_old_is_refused() -> None:
    assert refusal(check, sign(id_claims(iat=NOW + LEEWAY + 5))) == "iat"
    assert refusal(check, sign(id_claims(iat=None))) == "iat"
    assert refusal(check, sign(id_claims(iat=NOW - 600 - LEEWAY - 1))) == "iat"
    assert refusal(check, sign(id_claims(iat=NOW - 120)), max_token_age=60) == "iat"
    check(sign(id_claims(iat=NOW - 600)))


@pytest.mark.parametrize("nonce", ["another-nonce", NONCE + "x", NONCE[:-1], "", None])
def test_a_wrong_or_missing_nonce_is_refused(nonce: str | None) -> None:
    assert refusal(check, sign(id_claims(nonce=nonce))) == "nonce"


def test_the_caller_must_give_the_nonce_it_sent() -> None:
    with pytest.raises(ValueError, match="nonce"):
        check(sign(id_claims(nonce="")), nonce="")


def test_auth_time_bounds_the_authentication_age_when_max_age_was_sent() -> None:
    check(sign(id_claims(auth_time=NOW - 900)), max_age=900)
    assert refusal(check, sign(id_claims(auth_time=NOW - 900 - LEEWAY - 1)), max_age=900) == "auth-time"
    assert refusal(check, sign(id_claims(auth_time=None)), max_age=900) == "auth-time"
    check(sign(id_claims(auth_time=NOW - 86_400)))  # no max_age sent: any age


def test_auth_time_in_the_future_is_refused() -> None:
    assert refusal(check, sign(id_claims(auth_time=NOW + LEEWAY + 5))) == "auth-time"


@pytest.mark.parametrize("sub", [None, "", "x" * 256])
def test_a_missing_empty_or_overlong_subject_is_refused(sub: str | None) -> None:
    assert refusal(check, sign(id_claims(sub=sub))) == "subject"


def test_a_255_character_subject_passes() -> None:
    assert check(sign(id_claims(sub="x" * 255))).sub == "x" * 255


@pytest.mark.parametrize(("claim", "value"), [
    ("sub", 248289761001), ("sub", ["alice"]), ("iss", [ISSUER]), ("aud", 5), ("aud", [CLIENT_ID, 5]),
    ("aud", {"client": CLIENT_ID}), ("azp", 1), ("nonce", 1), ("nonce", [NONCE]), ("acr", ["urn:corp:mfa"]),
    ("acr", 2), ("amr", "otp"), ("amr", [1]), ("amr", {"otp": True}), ("sid", {}), ("jti", 5),
    ("email", ["ada@corp.example"]), ("name", 3), ("email_verified", "yes"), ("email_verified", 1),
    ("at_hash", 0), ("exp", "soon"), ("exp", True), ("exp", [NOW]), ("iat", "now"), ("iat", False),
    ("auth_time", "yesterday"), ("nbf", {}), ("exp", float("inf")), ("exp", float("nan")),
    ("iat", float("-inf")), ("exp", 10**400), ("auth_time", 10**400),
])
def test_a_claim_of_the_wrong_type_is_malformed(claim: str, value: Any) -> None:
    assert refusal(check, sign(id_claims() | {claim: value})) == "malformed"


def test_a_logout_token_is_not_an_id_token() -> None:
    assert refusal(check, sign(logout_claims(), typ="logout+jwt")) == "type"
    assert refusal(check, sign(id_claims(), typ="application/logout+jwt")) == "type"
    assert refusal(check, sign(id_claims(), typ="at+jwt")) == "type"
    assert refusal(check, sign(logout_claims(exp=NOW + 60))) == "nonce"  # untyped: it has no nonce
    assert refusal(check, with_header(sign(id_claims()), alg="RS256", kid="rsa-1", typ=["JWT"])) == "malformed"


def test_the_message_names_the_failure_for_the_logs() -> None:
    with pytest.raises(TokenInvalid, match=r"^issuer: "):
        check(sign(id_claims(iss="https://rogue.example")))


def test_what_the_message_quotes_from_the_token_is_bounded() -> None:
    with pytest.raises(UnknownSigningKey) as caught:
        check(sign(id_claims(), kid="k" * 5000))
    assert caught.value.kid == "k" * 5000
    assert len(str(caught.value)) < 300
