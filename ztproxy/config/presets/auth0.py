"""Auth0: an issuer that ends with "/", groups only in a custom claim of your own, MFA in ``amr``.

Auth0's ``iss`` is ``https://{tenant domain}/``, slash included, and is compared as written.
Auth0 has no groups claim: an Action adds one (``api.idToken.setCustomClaim``), under a name of
your choosing, namespaced by a URL of yours so that it cannot clash with a standard claim; so
``groups_claim`` must be given. Step-up asks for
``http://schemas.openid.net/pape/policies/2007/06/multi-factor`` and the ID token then carries
``amr: [mfa]``. No aiohttp, no I/O.
"""

from __future__ import annotations

from typing import Any

from ztproxy.config.presets import Entry, Preset, Problem, issuer_url

MFA_ACR = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"


def _defaults(_: Entry) -> dict[str, Any]:
    return {"scopes": ["openid", "email", "profile", "offline_access"],
            "mfa": {"acr_values": [MFA_ACR], "accepted_amr": ["mfa"]}}


def _check(effective: Entry, written: Entry) -> list[Problem]:
    problems: list[Problem] = []
    url = issuer_url(effective)
    if url is not None and (url.path != "/" or not str(effective["issuer"]).endswith("/")):
        problems.append(("issuer", f"Auth0's issuer is the tenant's domain with a trailing slash, e.g. "
                                   f"https://{url.host}/ (the iss of its tokens, compared exactly)"))
    if "groups_claim" not in written:
        problems.append(("groups_claim", "preset auth0 needs groups_claim: Auth0 puts groups only in a custom "
                                         "claim that an Action of yours adds, e.g. https://corp.example/groups"))
    return problems


AUTH0 = Preset(name="auth0", defaults=_defaults, check=_check, keep_issuer_slash=True)
