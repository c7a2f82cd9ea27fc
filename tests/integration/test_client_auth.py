"""How the proxy authenticates at the token endpoint, against IdPs that check it.

- ``private_key_jwt`` (RFC 7523) against the demo IdP (npm oidc-provider), which verifies
  the assertion with the public key registered for the client: a key it does not know is
  refused (``invalid_client``) and the user sees that sign-in is misconfigured.
- ``tls_client_auth`` (RFC 8705) against an OP whose token endpoint alias demands a client
  certificate: the proxy sends its token requests there, with its certificate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.posture import CertificateAuthority
from tests.support.rogue_op import RogueOp, start_rogue_world
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DemoIdp
from ztproxy.oidc.client_auth import JWT_BEARER

pytestmark = pytest.mark.integration


def key_pair(directory: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """A private key file for the proxy, and the public JWKS the IdP registers for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = ECKey.import_key(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, {"keys": [public.as_dict(private=False)]}


@pytest.mark.parametrize("registered", ["same", "another"])
async def test_private_key_jwt_at_a_real_idp(start_idp: IdpFactory, start_proxy: ProxyFactory,
                                             start_upstream: UpstreamFactory, tmp_path: Path,
                                             registered: str) -> None:
    key_file, jwks = key_pair(tmp_path, "proxy")
    if registered == "another":
        _, jwks = key_pair(tmp_path, "someone-else")

    async def registered_for_private_key_jwt(**kwargs: Any) -> DemoIdp:
        clients = [dataclasses.replace(client, token_endpoint_auth_method="private_key_jwt", jwks=jwks)
                   for client in kwargs["clients"]]
        return await start_idp(**{**kwargs, "clients": clients})

    world = await start_world(registered_for_private_key_jwt, start_proxy, start_upstream,
                              provider=f"    token_endpoint_auth_method: private_key_jwt\n"
                                       f"    client_assertion_key_file: {key_file}")
    async with UserAgent() as agent:
        final = await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
    if registered == "same":
        assert final.status == 200 and final.url == world.url + "/app/", final.text[:300]
    else:  # the IdP cannot verify the assertion: nobody signs in, and the page says why
        assert final.status == 503 and "Sign-in is misconfigured" in final.text, final.text[:300]


async def test_tls_client_auth_sends_the_certificate_to_the_mtls_alias(start_proxy: ProxyFactory,
                                                                      start_upstream: UpstreamFactory,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server_ca = CertificateAuthority("OP Server CA", tmp_path)
    client_ca = CertificateAuthority("OP Client CA", tmp_path)
    server = server_ca.issue(common_name="127.0.0.1", ips=["127.0.0.1"], server=True)
    client = client_ca.issue(common_name="ztproxy-client")
    monkeypatch.setenv("SSL_CERT_FILE", str(server_ca.cert_file))  # the proxy trusts the OP's server CA

    import ssl
    mtls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca.cert_file))
    mtls.load_cert_chain(server.cert_file, server.key_file)
    mtls.verify_mode = ssl.CERT_REQUIRED  # RFC 8705: no certificate, no token
    mtls_port = free_port()
    op = RogueOp(client_secret="unused-with-tls-client-auth", mtls_token_endpoint=f"https://127.0.0.1:{mtls_port}/token")
    _, proxy, runner = await start_rogue_world(
        op, start_proxy, start_upstream,
        provider=f", token_endpoint_auth_method: tls_client_auth, tls_client_cert_file: '{client.cert_file}', "
                 f"tls_client_key_file: '{client.key_file}'")
    mtls_runner = web.AppRunner(op.app(), access_log=None)
    await mtls_runner.setup()
    await web.TCPSite(mtls_runner, "127.0.0.1", mtls_port, ssl_context=mtls).start()
    try:
        async with UserAgent() as agent:
            final = await agent.navigate(proxy.url + "/app/")
        assert final.status == 200, final.text[:300]
        [request] = op.token_requests
        assert request["client_cn"] == "ztproxy-client"  # over the alias, with the proxy's certificate
        assert request["form"]["client_id"] == "ztproxy"  # RFC 8705 2.1.1
        assert "client_secret" not in request["form"] and request["authorization"] is None
        assert JWT_BEARER not in request["form"].values()
    finally:
        await mtls_runner.cleanup()
        await runner.cleanup()
