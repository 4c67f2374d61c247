"""Connection tokens verified with keys from a JWKS endpoint (a real HTTP server here)."""

from __future__ import annotations

import json

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from livegate.auth import TokenVerifier
from livegate.config import TokenConfig
from livegate.errors import TokenInvalid, TokenUnverifiable


@pytest.fixture
async def jwks_url():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", use="sig", alg="RS256")

    fetches = []

    async def keys(request: web.Request) -> web.Response:
        fetches.append(1)
        return web.json_response({"keys": [public]})

    app = web.Application()
    app.router.add_get("/jwks", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/jwks", key, fetches
    await runner.cleanup()


async def test_jwks_key_verifies_and_others_fail(jwks_url):
    url, key, fetches = jwks_url
    verifier = TokenVerifier(TokenConfig(jwks_public_endpoint=url))
    good = jwt.encode({"sub": "alice", "info": {"n": 1}}, key, algorithm="RS256", headers={"kid": "k1"})
    token = await verifier.verify_connect(good)
    assert token.user == "alice" and token.info == b'{"n":1}'
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"sub": "alice"}, other, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(forged)
    unknown_kid = jwt.encode({"sub": "alice"}, key, algorithm="RS256", headers={"kid": "nope"})
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(unknown_kid)
    # Made-up kids do not refetch the key set each time: one refresh, then refused from cache.
    for n in range(20):
        with pytest.raises(TokenInvalid):
            await verifier.verify_connect(jwt.encode({"sub": "x"}, key, algorithm="RS256", headers={"kid": f"r{n}"}))
    assert len(fetches) <= 2
    hs = jwt.encode({"sub": "alice"}, "secret-that-is-long-enough-for-hs256-0123", algorithm="HS256")
    with pytest.raises(TokenInvalid):  # no HMAC key configured: the HS family is not allowed
        await verifier.verify_connect(hs)


async def test_an_unreachable_jwks_endpoint_is_temporary_not_an_invalid_token(start_server, peer_factory, caplog):
    """A key set that cannot be fetched says nothing about the token: error 100 (temporary), so
    SDKs retry, rather than 3500, after which they give up for good; and the log says why."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks"
    verifier = TokenVerifier(TokenConfig(jwks_public_endpoint=url))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = jwt.encode({"sub": "alice"}, key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(TokenUnverifiable):
        await verifier.verify_connect(tok)
    running = await start_server({"client": {"token": {"hmac_secret_key": "", "jwks_public_endpoint": url}}})
    peer = await peer_factory(running.url)
    reply = await peer.call("connect", {"token": tok})
    assert reply["error"] == {"code": 100, "message": "internal server error: cannot verify tokens right now",
                              "temporary": True}
    assert (await peer.call("connect", {"token": tok}))["error"]["code"] == 100  # still connected, may retry
    assert "JWKS endpoint unreachable" in caplog.text


async def test_subscription_tokens_from_a_jwks_endpoint_with_claim_regexes(jwks_url, start_server, peer_factory):
    """client.subscription_token with a JWKS endpoint and audience_regex / issuer_regex: subscription
    tokens are verified there (PyJWT path), connection tokens still with client.token's HMAC key."""
    url, key, _ = jwks_url

    def sub_token(channel: str, **claims) -> str:
        return jwt.encode({"sub": "alice", "channel": channel, **claims}, key, algorithm="RS256",
                          headers={"kid": "k1"})

    running = await start_server({"client": {"subscription_token": {
        "enabled": True, "jwks_public_endpoint": url, "audience_regex": "subs-(a|b)",
        "issuer_regex": r"https://auth\.example"}}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    ok = await peer.call("subscribe", {"channel": "$locked:1", "token": sub_token(
        "$locked:1", aud=["x", "subs-b"], iss="https://auth.example")})
    assert "subscribe" in ok, ok
    for n, claims in enumerate([{"aud": "subs-c", "iss": "https://auth.example"},
                                {"aud": "subs-a", "iss": "https://auth.example.evil"},
                                {"iss": "https://auth.example"}]):
        channel = f"$locked:bad{n}"
        reply = await peer.call("subscribe", {"channel": channel, "token": sub_token(channel, **claims)})
        assert reply["error"] == {"code": 103, "message": "permission denied"}, claims
