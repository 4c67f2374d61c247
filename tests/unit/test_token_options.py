"""Centrifugo v6 token options: client.disallow_anonymous_connection_tokens,
client.subscription_token (a separate verifier for subscription tokens when enabled) and
audience_regex / issuer_regex in both token sections. Config validation, the Node's verifiers,
and what a client sees through a real server (start_server, peer_factory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from conftest import SECRET, make_config, token

from livegate.auth import TokenVerifier, make_hmac_token
from livegate.config import SubscriptionTokenConfig, TokenConfig, parse_config
from livegate.errors import ConfigError, TokenInvalid
from livegate.server.lifecycle import build_node

LIVEGATE = Path(sys.executable).with_name("livegate")
SUB_SECRET = "sub-secret-for-subscription-tokens-0123456789abcdef"

PERMISSION_DENIED = (3507, "permission denied")
INVALID_TOKEN = (3500, "invalid token")
ERROR_103 = {"code": 103, "message": "permission denied"}


def sub_token(user: str, channel: str, *, secret: str = SUB_SECRET, **claims) -> str:
    return make_hmac_token(secret, user, channel=channel, **claims)


def config_error(raw: dict, environ: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ=environ or {})
    return info.value


# -- keys and defaults -----------------------------------------------------------------------


def test_defaults():
    client = parse_config({}, environ={}).client
    assert client.disallow_anonymous_connection_tokens is False
    assert client.subscription_token.enabled is False
    for section in (client.token, client.subscription_token):
        assert section.audience_regex == "" and section.issuer_regex == ""
        assert section.user_id_claim == "sub"
        assert section.hmac_secret_key == ""


def test_subscription_token_section_has_the_token_keys():
    section = parse_config({"client": {"subscription_token": {
        "enabled": True, "hmac_secret_key": SUB_SECRET, "audience_regex": "a+", "issuer": "i",
        "user_id_claim": "uid", "jwks_public_endpoint": "https://keys.example/jwks"}}}, environ={}
    ).client.subscription_token
    assert isinstance(section, TokenConfig)
    assert (section.enabled, section.audience_regex, section.issuer, section.user_id_claim) == (True, "a+", "i", "uid")
    assert SUB_SECRET not in repr(section)
    assert config_error({"client": {"subscription_token": {"enabeld": True}}}).key == "client.subscription_token.enabeld"


def test_environment_overrides():
    client = parse_config({}, environ={
        "LIVEGATE_CLIENT_DISALLOW_ANONYMOUS_CONNECTION_TOKENS": "true",
        "LIVEGATE_CLIENT_SUBSCRIPTION_TOKEN_ENABLED": "true",
        "LIVEGATE_CLIENT_SUBSCRIPTION_TOKEN_HMAC_SECRET_KEY": SUB_SECRET,
        "LIVEGATE_CLIENT_TOKEN_ISSUER_REGEX": "https://auth\\.example",
        "LIVEGATE_CLIENT_SUBSCRIPTION_TOKEN_AUDIENCE_REGEX": "subs",
    }).client
    assert client.disallow_anonymous_connection_tokens is True
    assert client.subscription_token.enabled is True
    assert client.subscription_token.hmac_secret_key == SUB_SECRET
    assert client.token.issuer_regex == "https://auth\\.example"
    assert client.subscription_token.audience_regex == "subs"


@pytest.mark.parametrize("section", ["token", "subscription_token"])
@pytest.mark.parametrize("key", ["audience_regex", "issuer_regex"])
def test_invalid_regex_is_a_config_error_naming_the_key(section, key):
    err = config_error({"client": {section: {"hmac_secret_key": SECRET, key: "(unclosed"}}})
    assert err.key == f"client.{section}.{key}"
    assert "invalid regular expression" in str(err)
    assert SECRET not in str(err)


@pytest.mark.parametrize("section", ["token", "subscription_token"])
@pytest.mark.parametrize(("exact", "regex"), [("audience", "audience_regex"), ("issuer", "issuer_regex")])
def test_exact_option_and_regex_together_is_a_config_error(section, exact, regex):
    # Centrifugo: "can not use both token_audience and token_audience_regex, configure only one of them".
    err = config_error({"client": {section: {exact: "x", regex: "x"}}})
    assert err.key == f"client.{section}.{regex}"
    assert exact in str(err)


def test_wrong_types_name_the_key():
    assert config_error({"client": {"disallow_anonymous_connection_tokens": "maybe"}}).key == \
        "client.disallow_anonymous_connection_tokens"
    assert config_error({"client": {"subscription_token": {"enabled": "maybe"}}}).key == \
        "client.subscription_token.enabled"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEGATE_")}
    return subprocess.run([str(LIVEGATE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def test_check_config_bad_regex_exits_2_naming_the_key_without_the_secret(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(f'[client.subscription_token]\nenabled = true\nhmac_secret_key = "{SUB_SECRET}"\n'
                    'issuer_regex = "[a-"\n')
    proc = run_cli("check-config", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "client.subscription_token.issuer_regex" in proc.stderr
    assert SUB_SECRET not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout


def test_check_config_bad_subscription_key_material_names_the_section(tmp_path):
    path = tmp_path / "badkey.toml"
    path.write_text('[client.subscription_token]\nenabled = true\nrsa_public_key = "not a PEM key"\n')
    proc = run_cli("check-config", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "client.subscription_token.rsa_public_key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_check_config_accepts_the_options(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(f'[client]\ndisallow_anonymous_connection_tokens = true\n'
                    f'[client.token]\nhmac_secret_key = "{SECRET}"\naudience_regex = "^app-(eu|us)$"\n'
                    f'[client.subscription_token]\nenabled = true\nhmac_secret_key = "{SUB_SECRET}"\n'
                    f'issuer = "https://auth.example"\n')
    proc = run_cli("check-config", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


# -- the node's verifiers --------------------------------------------------------------------


def test_second_verifier_only_when_enabled():
    node = build_node(make_config({"client": {"subscription_token": {"hmac_secret_key": SUB_SECRET}}}))
    assert node.sub_verifier is node.verifier  # the section's keys are not even loaded
    node = build_node(make_config({"client": {"subscription_token": {"enabled": True,
                                                                    "hmac_secret_key": SUB_SECRET}}}))
    assert node.sub_verifier is not node.verifier
    assert isinstance(node.sub_verifier, TokenVerifier)


def test_disabled_section_key_material_is_not_loaded():
    # As Centrifugo, which builds the subscription verifier only when enabled.
    build_node(make_config({"client": {"subscription_token": {"rsa_public_key": "not a PEM key"}}}))


async def test_subscription_verifier_uses_its_own_keys_and_options():
    verifier = TokenVerifier(SubscriptionTokenConfig(enabled=True, hmac_secret_key=SUB_SECRET,
                                                     audience="subs", user_id_claim="uid"),
                             section="client.subscription_token")
    tok = jwt.encode({"uid": "alice", "sub": "ignored", "channel": "$x", "aud": "subs"}, SUB_SECRET, algorithm="HS256")
    assert (await verifier.verify_subscription(tok)).user == "alice"
    for bad in (jwt.encode({"uid": "alice", "channel": "$x", "aud": "subs"}, SECRET, algorithm="HS256"),
                jwt.encode({"uid": "alice", "channel": "$x", "aud": "conn"}, SUB_SECRET, algorithm="HS256")):
        with pytest.raises(TokenInvalid) as info:
            await verifier.verify_subscription(bad)
        assert SUB_SECRET not in str(info.value) and SECRET not in str(info.value)


# -- disallow_anonymous_connection_tokens, end to end ----------------------------------------


@pytest.mark.parametrize("claims", [{"sub": ""}, {}], ids=["empty-sub", "no-sub"])
async def test_anonymous_connection_token_refused_with_3507(start_server, peer_factory, claims):
    running = await start_server({"client": {"disallow_anonymous_connection_tokens": True}})
    peer = await peer_factory(running.url)
    anonymous = jwt.encode({"exp": 2**40, **claims}, SECRET, algorithm="HS256")
    await peer.send({"id": 1, "connect": {"token": anonymous}})
    assert await peer.closed() == PERMISSION_DENIED
    assert running.node.hub.num_clients == 0
    ok = await peer_factory(running.url)  # a token with a user still connects
    assert (await ok.connect("alice"))["connect"]["client"]


async def test_disallow_anonymous_keeps_the_other_outcomes(start_server, peer_factory):
    running = await start_server({"client": {"disallow_anonymous_connection_tokens": True,
                                             "allow_anonymous_connect_without_token": True}})
    # An expired anonymous token: the verifier decides first (error 109, as Centrifugo).
    peer = await peer_factory(running.url)
    expired = await peer.call("connect", {"token": make_hmac_token(SECRET, "", ttl=-10)})
    assert expired["error"]["code"] == 109
    # A badly signed anonymous token is an invalid token (3500).
    bad = await peer_factory(running.url)
    await bad.send({"id": 1, "connect": {"token": make_hmac_token("another-secret-0123456789abcdef0123", "")}})
    assert await bad.closed() == INVALID_TOKEN
    # Connecting without a token is not a token: allow_anonymous_connect_without_token still rules.
    without = await peer_factory(running.url)
    assert "connect" in await without.call("connect", {})


async def test_anonymous_connection_token_accepted_by_default(server, peer_factory):
    peer = await peer_factory(server.url)
    reply = await peer.call("connect", {"token": token("")})
    assert reply["connect"]["client"]


# -- client.subscription_token, end to end ---------------------------------------------------


SUB_SECTION = {"client": {"subscription_token": {"enabled": True, "hmac_secret_key": SUB_SECRET}}}


async def test_subscription_tokens_use_the_subscription_section(start_server, peer_factory):
    running = await start_server(SUB_SECTION)
    peer = await peer_factory(running.url)
    await peer.connect("alice")  # connection tokens: still client.token's key
    ok = await peer.call("subscribe", {"channel": "$locked:1", "token": sub_token("alice", "$locked:1")})
    assert "subscribe" in ok, ok
    # A subscription token signed with client.token's key is not valid any more: error 103.
    wrong = await peer.call("subscribe", {"channel": "$locked:2",
                                          "token": sub_token("alice", "$locked:2", secret=SECRET)})
    assert wrong["error"] == ERROR_103
    await peer.sync()
    # A connection token signed with the subscription key is an invalid connection token.
    other = await peer_factory(running.url)
    await other.send({"id": 1, "connect": {"token": make_hmac_token(SUB_SECRET, "bob")}})
    assert await other.closed() == INVALID_TOKEN


async def test_sub_refresh_uses_the_subscription_section(start_server, peer_factory):
    running = await start_server(SUB_SECTION)
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    first = await peer.call("subscribe", {"channel": "$locked:r", "token": sub_token("alice", "$locked:r", ttl=60)})
    assert first["subscribe"]["expires"] is True
    refreshed = await peer.call("sub_refresh", {"channel": "$locked:r",
                                                "token": sub_token("alice", "$locked:r", ttl=600)})
    assert refreshed["sub_refresh"]["expires"] is True and refreshed["sub_refresh"]["ttl"] > 60
    await peer.send({"id": 99, "sub_refresh": {"channel": "$locked:r",
                                               "token": sub_token("alice", "$locked:r", secret=SECRET)}})
    assert await peer.closed() == INVALID_TOKEN


async def test_disabled_subscription_section_is_ignored(start_server, peer_factory):
    running = await start_server({"client": {"subscription_token": {"hmac_secret_key": SUB_SECRET}}})
    peer = await peer_factory(running.url)
    await peer.connect("alice")
    ok = await peer.call("subscribe", {"channel": "$locked:1", "token": sub_token("alice", "$locked:1", secret=SECRET)})
    assert "subscribe" in ok, ok
    wrong = await peer.call("subscribe", {"channel": "$locked:2", "token": sub_token("alice", "$locked:2")})
    assert wrong["error"] == ERROR_103


# -- audience_regex / issuer_regex, end to end -----------------------------------------------


async def test_connection_token_audience_regex(start_server, peer_factory):
    running = await start_server({"client": {"token": {"audience_regex": "livegate-(eu|us)"}}})
    good = await peer_factory(running.url)
    assert "connect" in await good.connect(token=token("alice", aud=["web", "livegate-us"]))
    for aud in ("livegate-us-evil", "web"):
        bad = await peer_factory(running.url)
        await bad.send({"id": 1, "connect": {"token": token("alice", aud=aud)}})
        assert await bad.closed() == INVALID_TOKEN


async def test_connection_token_issuer_regex(start_server, peer_factory):
    running = await start_server({"client": {"token": {"issuer_regex": r"https://auth\.(a|b)\.example"}}})
    good = await peer_factory(running.url)
    assert "connect" in await good.connect(token=token("alice", iss="https://auth.b.example"))
    # Refresh goes through the same verifier: a non-matching issuer closes the connection.
    await good.send({"id": 50, "refresh": {"token": token("alice", iss="https://auth.c.example")}})
    assert await good.closed() == INVALID_TOKEN
    bad = await peer_factory(running.url)
    await bad.send({"id": 1, "connect": {"token": token("alice", iss="https://auth.a.example.evil")}})
    assert await bad.closed() == INVALID_TOKEN


async def test_subscription_section_regexes(start_server, peer_factory):
    running = await start_server({"client": {
        "token": {"audience": "connections"},
        "subscription_token": {"enabled": True, "hmac_secret_key": SUB_SECRET, "audience_regex": "subs-[0-9]+",
                               "issuer_regex": "backend"}}})
    peer = await peer_factory(running.url)
    await peer.connect(token=token("alice", aud="connections"))
    ok = await peer.call("subscribe", {"channel": "$locked:1", "token": sub_token(
        "alice", "$locked:1", aud="subs-42", iss="backend")})
    assert "subscribe" in ok, ok
    for n, claims in enumerate([{"aud": "connections", "iss": "backend"}, {"aud": "subs-x", "iss": "backend"},
                                {"aud": "subs-42", "iss": "backend-2"}, {"aud": "subs-42"}]):
        channel = f"$locked:bad{n}"
        reply = await peer.call("subscribe", {"channel": channel, "token": sub_token("alice", channel, **claims)})
        assert reply["error"] == ERROR_103, claims
    await peer.sync()
