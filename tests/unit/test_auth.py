"""livegate.auth: JWT verification with Centrifugo claim semantics (protocol.md 4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from livegate.auth import ConnectToken, SubscriptionToken, TokenVerifier, make_hmac_token
from livegate.config import TokenConfig
from livegate.errors import ConfigError, TokenExpired, TokenInvalid

SECRET = "unit-secret-0123456789abcdef0123456789abcdef"


def _pem_public(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def hs_verifier(**cfg) -> TokenVerifier:
    return TokenVerifier(TokenConfig(hmac_secret_key=SECRET, **cfg))


def hs(claims: dict, alg: str = "HS256", secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def future(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_hs256(claims: dict, key: bytes) -> str:
    """An HS256 token signed by hand (PyJWT refuses to HMAC with a PEM key)."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


# -- algorithms --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_hmac_algorithms(alg):
    tok = await hs_verifier().verify_connect(hs({"sub": "alice", "exp": future()}, alg))
    assert tok.user == "alice"


async def test_wrong_hmac_secret_is_invalid():
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(hs({"sub": "alice"}, secret="another-secret-0123456789abcdef01234"))


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512"])
async def test_rsa_algorithms(rsa_key, alg):
    verifier = TokenVerifier(TokenConfig(rsa_public_key=_pem_public(rsa_key)))
    tok = await verifier.verify_connect(jwt.encode({"sub": "bob", "exp": future()}, rsa_key, algorithm=alg))
    assert tok.user == "bob"
    assert tok.exp is not None


async def test_rsa_signed_by_another_key_is_invalid(rsa_key):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    verifier = TokenVerifier(TokenConfig(rsa_public_key=_pem_public(rsa_key)))
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(jwt.encode({"sub": "bob"}, other, algorithm="RS256"))


@pytest.mark.parametrize("alg", ["ES256"])
async def test_ecdsa(ec_key, alg):
    verifier = TokenVerifier(TokenConfig(ecdsa_public_key=_pem_public(ec_key)))
    tok = await verifier.verify_connect(jwt.encode({"sub": "carol", "exp": future()}, ec_key, algorithm=alg))
    assert tok.user == "carol"


async def test_family_pinned_to_configured_keys(rsa_key, ec_key):
    # Only an HMAC secret: an RS256 token is refused whatever its signature.
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(jwt.encode({"sub": "x"}, rsa_key, algorithm="RS256"))
    # Only RSA: HS256 and ES256 are refused.
    verifier = TokenVerifier(TokenConfig(rsa_public_key=_pem_public(rsa_key)))
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(hs({"sub": "x"}))
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(jwt.encode({"sub": "x"}, ec_key, algorithm="ES256"))


async def test_all_families_together(rsa_key, ec_key):
    verifier = TokenVerifier(TokenConfig(hmac_secret_key=SECRET, rsa_public_key=_pem_public(rsa_key),
                                         ecdsa_public_key=_pem_public(ec_key)))
    for tok in (hs({"sub": "a"}), jwt.encode({"sub": "a"}, rsa_key, algorithm="RS512"),
                jwt.encode({"sub": "a"}, ec_key, algorithm="ES256")):
        assert (await verifier.verify_connect(tok)).user == "a"


async def test_no_keys_rejects_every_token():
    with pytest.raises(TokenInvalid):
        await TokenVerifier(TokenConfig()).verify_connect(hs({"sub": "a"}))


async def test_alg_none_rejected():
    tok = jwt.encode({"sub": "mallory"}, None, algorithm="none")
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(tok)
    # Also with a forged "none" header and an empty signature.
    head = b64url(b'{"alg":"none","typ":"JWT"}')
    body = b64url(b'{"sub":"mallory"}')
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(f"{head}.{body}.")


async def test_hs_rs_confusion_rejected(rsa_key):
    pem = _pem_public(rsa_key)
    forged = forge_hs256({"sub": "mallory", "exp": future()}, pem.encode())
    with pytest.raises(TokenInvalid):
        await TokenVerifier(TokenConfig(rsa_public_key=pem)).verify_connect(forged)
    # Even with an HMAC secret configured too, the public PEM is not the HMAC key.
    with pytest.raises(TokenInvalid):
        await TokenVerifier(TokenConfig(hmac_secret_key=SECRET, rsa_public_key=pem)).verify_connect(forged)


@pytest.mark.parametrize("garbage", ["", "a", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"])
async def test_malformed_tokens(garbage):
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(garbage)


async def test_tampered_payload_is_invalid():
    tok = hs({"sub": "alice"})
    head, _, sig = tok.split(".")
    evil = f"{head}.{b64url(json.dumps({'sub': 'admin'}).encode())}.{sig}"
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(evil)


@pytest.mark.parametrize("key", ["rsa_public_key", "ecdsa_public_key"])
@pytest.mark.parametrize("material", ["not a key", "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"])
def test_bad_key_material_is_a_config_error_naming_the_key(key, material):
    # build_node maps key loading problems to ConfigError("client.token", ...).
    from livegate.config import parse_config
    from livegate.server.lifecycle import build_node

    cfg = parse_config({"client": {"token": {key: material}}}, environ={})
    with pytest.raises(ConfigError) as info:
        build_node(cfg)
    assert info.value.key.startswith("client.token")


def test_rsa_key_given_as_ecdsa_key_is_a_config_error(rsa_key):
    from livegate.config import parse_config
    from livegate.server.lifecycle import build_node

    cfg = parse_config({"client": {"token": {"ecdsa_public_key": _pem_public(rsa_key)}}}, environ={})
    with pytest.raises(ConfigError):
        build_node(cfg)


# -- time claims -------------------------------------------------------------------------


async def test_expired_token():
    with pytest.raises(TokenExpired):
        await hs_verifier().verify_connect(hs({"sub": "alice", "exp": int(time.time()) - 10}))


async def test_not_before_in_future_counts_as_expired():
    with pytest.raises(TokenExpired):
        await hs_verifier().verify_connect(hs({"sub": "alice", "nbf": future(60), "exp": future()}))


async def test_nbf_in_past_ok():
    assert (await hs_verifier().verify_connect(hs({"sub": "a", "nbf": int(time.time()) - 5}))).user == "a"


async def test_no_exp_is_accepted_and_never_expires():
    tok = await hs_verifier().verify_connect(hs({"sub": "alice"}))
    assert tok.exp is None and tok.expire_at is None
    assert tok.connection_expires_at is None


async def test_float_exp_is_a_valid_numeric_date():
    # RFC 7519 NumericDate may be fractional; `time.time() + 3600` is what many backends put there.
    exp = time.time() + 3600
    tok = await hs_verifier().verify_connect(hs({"sub": "alice", "exp": exp}))
    assert tok.user == "alice"
    assert tok.connection_expires_at == pytest.approx(exp, abs=1)


# -- aud / iss ---------------------------------------------------------------------------


async def test_aud_iss_ignored_when_not_configured():
    tok = await hs_verifier().verify_connect(hs({"sub": "a", "aud": "someone-else", "iss": "whoever"}))
    assert tok.user == "a"


async def test_audience_checked_when_configured():
    verifier = hs_verifier(audience="livegate")
    assert (await verifier.verify_connect(hs({"sub": "a", "aud": "livegate"}))).user == "a"
    assert (await verifier.verify_connect(hs({"sub": "a", "aud": ["x", "livegate"]}))).user == "a"
    for claims in ({"sub": "a", "aud": "other"}, {"sub": "a"}, {"sub": "a", "aud": ["x"]}):
        with pytest.raises(TokenInvalid):
            await verifier.verify_connect(hs(claims))


async def test_issuer_checked_when_configured():
    verifier = hs_verifier(issuer="https://auth.example")
    assert (await verifier.verify_connect(hs({"sub": "a", "iss": "https://auth.example"}))).user == "a"
    for claims in ({"sub": "a", "iss": "https://evil.example"}, {"sub": "a"}):
        with pytest.raises(TokenInvalid):
            await verifier.verify_connect(hs(claims))


# audience_regex / issuer_regex: the claim must match the whole pattern; a list aud needs one
# element that does. Checked on both paths: the HS fast path (_decode_hmac) and PyJWT's.

_AUD_RE = r"livegate-(eu|us)"
_ISS_RE = r"https://auth\.(a|b)\.example"


def _sign_with(path: str, rsa_key, claims: dict, alg: str = "HS256") -> tuple[TokenVerifier, str]:
    """A verifier for ``path`` ("hmac": HS fast path, "rsa": PyJWT) and a token signed for it."""
    options = {"audience_regex": _AUD_RE, "issuer_regex": _ISS_RE}
    payload = json.dumps(claims).encode()  # signed as is: PyJWT's encode refuses e.g. a non-string iss
    if path == "hmac":
        return hs_verifier(**options), jwt.api_jws.encode(payload, SECRET, algorithm=alg)
    verifier = TokenVerifier(TokenConfig(rsa_public_key=_pem_public(rsa_key), **options))
    return verifier, jwt.api_jws.encode(payload, rsa_key, algorithm="RS256")


_GOOD_ISS = "https://auth.b.example"


@pytest.mark.parametrize("path", ["hmac", "rsa"])
@pytest.mark.parametrize("aud", ["livegate-eu", "livegate-us", ["other", "livegate-us"]])
async def test_audience_regex_accepts_a_full_match(path, aud, rsa_key):
    verifier, tok = _sign_with(path, rsa_key, {"sub": "a", "aud": aud, "iss": _GOOD_ISS})
    assert (await verifier.verify_connect(tok)).user == "a"


@pytest.mark.parametrize("path", ["hmac", "rsa"])
@pytest.mark.parametrize("aud", [
    "livegate-xx", "xlivegate-eu", "livegate-eu-evil", "livegate-", "", ["other", "livegate-eux"], [],
    None, 5, ["livegate-eu", 5], {"aud": "livegate-eu"},
])
async def test_audience_regex_refuses_anything_else(path, aud, rsa_key):
    claims: dict = {"sub": "a", "iss": _GOOD_ISS}
    if aud is not None:
        claims["aud"] = aud
    verifier, tok = _sign_with(path, rsa_key, claims)
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(tok)


@pytest.mark.parametrize("path", ["hmac", "rsa"])
@pytest.mark.parametrize("iss", ["https://auth.c.example", "https://auth.a.example/", "xhttps://auth.a.example",
                                 "https://authXa.example", "", None, 7, ["https://auth.a.example"]])
async def test_issuer_regex_refuses_anything_but_a_full_match(path, iss, rsa_key):
    claims: dict = {"sub": "a", "aud": "livegate-eu"}
    if iss is not None:
        claims["iss"] = iss
    verifier, tok = _sign_with(path, rsa_key, claims)
    with pytest.raises(TokenInvalid):
        await verifier.verify_connect(tok)
    verifier, tok = _sign_with(path, rsa_key, {**claims, "iss": "https://auth.a.example"})
    assert (await verifier.verify_connect(tok)).user == "a"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_claim_regexes_on_the_hmac_fast_path_without_pyjwt(alg, monkeypatch):
    # The hand-written HS path must apply the regexes itself: PyJWT is not called at all.
    def no_pyjwt(*args, **kwargs):
        raise AssertionError("the HS fast path must not call jwt.decode")

    verifier = hs_verifier(audience_regex=_AUD_RE, issuer_regex=_ISS_RE)
    good = hs({"sub": "a", "aud": ["x", "livegate-us"], "iss": _GOOD_ISS}, alg)
    bad_aud = hs({"sub": "a", "aud": "livegate-usa", "iss": _GOOD_ISS}, alg)
    bad_iss = hs({"sub": "a", "aud": "livegate-us", "iss": _GOOD_ISS + ".evil"}, alg)
    monkeypatch.setattr(jwt, "decode", no_pyjwt)
    assert (await verifier.verify_connect(good)).user == "a"
    for tok in (bad_aud, bad_iss):
        with pytest.raises(TokenInvalid):
            await verifier.verify_connect(tok)


async def test_issuer_regex_sees_a_missing_iss_as_empty():
    # As Centrifugo: a missing iss is the empty string, so only a pattern that matches "" admits it.
    assert (await hs_verifier(issuer_regex=r"(https://auth\.example)?").verify_connect(hs({"sub": "a"}))).user == "a"
    with pytest.raises(TokenInvalid):
        await hs_verifier(issuer_regex=r"https://auth\.example").verify_connect(hs({"sub": "a"}))


async def test_claim_regexes_apply_to_subscription_tokens(rsa_key):
    for path in ("hmac", "rsa"):
        verifier, tok = _sign_with(path, rsa_key, {"sub": "a", "channel": "$x", "aud": "livegate-eu",
                                                     "iss": _GOOD_ISS})
        assert (await verifier.verify_subscription(tok)).channel == "$x"
        verifier, tok = _sign_with(path, rsa_key, {"sub": "a", "channel": "$x", "aud": "livegate-e",
                                                     "iss": _GOOD_ISS})
        with pytest.raises(TokenInvalid):
            await verifier.verify_subscription(tok)


async def test_claim_regexes_are_checked_after_the_signature():
    # A forged token is refused for its signature, whatever its claims; a valid signature with a
    # non-matching claim is refused for the claim. Neither message carries the secret.
    verifier = hs_verifier(audience_regex=_AUD_RE)
    forged = hs({"sub": "a", "aud": "livegate-eu"}, secret="another-secret-0123456789abcdef01234")
    with pytest.raises(TokenInvalid, match="signature") as forged_info:
        await verifier.verify_connect(forged)
    with pytest.raises(TokenInvalid, match="audience") as aud_info:
        await verifier.verify_connect(hs({"sub": "a", "aud": "nope"}))
    for info in (forged_info, aud_info):
        assert SECRET not in str(info.value)


def test_claim_regex_given_with_the_exact_option_is_a_config_error():
    # TokenConfig refuses it (see test_token_options for the key named); a TokenVerifier built
    # from an unvalidated TokenConfig refuses it too.
    for exact, regex in (("audience", "audience_regex"), ("issuer", "issuer_regex")):
        cfg = TokenConfig.model_construct(**{**TokenConfig().model_dump(), "hmac_secret_key": SECRET,
                                             exact: "x", regex: "x"})
        with pytest.raises(ConfigError) as info:
            TokenVerifier(cfg, section="client.subscription_token")
        assert info.value.key == f"client.subscription_token.{regex}"
        assert SECRET not in str(info.value)


def test_invalid_claim_regex_in_an_unvalidated_config_is_a_config_error():
    cfg = TokenConfig.model_construct(**{**TokenConfig().model_dump(), "issuer_regex": "(unclosed"})
    with pytest.raises(ConfigError) as info:
        TokenVerifier(cfg)
    assert info.value.key == "client.token.issuer_regex"


async def test_custom_user_id_claim():
    tok = await hs_verifier(user_id_claim="uid").verify_connect(hs({"uid": "u42", "sub": "ignored"}))
    assert tok.user == "u42"


# -- connection token claims -------------------------------------------------------------


async def test_connection_token_with_channel_claim_is_invalid():
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(hs({"sub": "alice", "channel": "chat:1"}))


async def test_anonymous_connection_token():
    tok = await hs_verifier().verify_connect(hs({"sub": ""}))
    assert tok.user == ""
    assert (await hs_verifier().verify_connect(hs({"exp": future()}))).user == ""


async def test_connection_claims_parsed():
    exp, expire_at = future(100), future(5000)
    tok = await hs_verifier().verify_connect(hs({
        "sub": "alice", "exp": exp, "expire_at": expire_at, "info": {"name": "Alice", "n": [1, 2]},
        "channels": ["chat:1", "news"], "subs": {"feed:1": {"info": {"x": 1}, "data": "d"}},
        "meta": {"secret": True},
    }))
    assert tok == ConnectToken(user="alice", exp=exp, expire_at=expire_at, info=b'{"name":"Alice","n":[1,2]}',
                               channels=("chat:1", "news"), subs={"feed:1": {"info": {"x": 1}, "data": "d"}})
    assert tok.connection_expires_at == expire_at


async def test_expire_at_zero_means_never():
    tok = await hs_verifier().verify_connect(hs({"sub": "a", "exp": future(), "expire_at": 0}))
    assert tok.expire_at == 0
    assert tok.connection_expires_at is None


async def test_exp_is_the_connection_expiry_without_expire_at():
    exp = future(77)
    assert (await hs_verifier().verify_connect(hs({"sub": "a", "exp": exp}))).connection_expires_at == exp


async def test_b64info_wins_over_info_and_is_compacted():
    raw = base64.b64encode(b'{ "b" : 2 }').decode()
    tok = await hs_verifier().verify_connect(hs({"sub": "a", "info": {"a": 1}, "b64info": raw}))
    assert tok.info == b'{"b":2}'


@pytest.mark.parametrize("b64info", ["***", base64.b64encode(b"not json").decode(), 12])
async def test_bad_b64info(b64info):
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(hs({"sub": "a", "b64info": b64info}))


async def test_info_null_means_no_info():
    assert (await hs_verifier().verify_connect(hs({"sub": "a", "info": None}))).info is None


@pytest.mark.parametrize("claims", [
    {"sub": 42},
    {"sub": ["a"]},
    {"sub": "a", "exp": "tomorrow"},
    {"sub": "a", "expire_at": "soon"},
    {"sub": "a", "expire_at": -1},
    {"sub": "a", "expire_at": True},
    {"sub": "a", "expire_at": 1.5},
    {"sub": "a", "channels": "chat:1"},
    {"sub": "a", "channels": ["chat:1", 2]},
    {"sub": "a", "subs": ["chat:1"]},
    {"sub": "a", "subs": {"chat:1": "yes"}},
])
async def test_wrong_connection_claim_types(claims):
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_connect(hs(claims))


# -- subscription tokens -----------------------------------------------------------------


async def test_subscription_token_claims():
    exp = future(300)
    tok = await hs_verifier().verify_subscription(hs({
        "sub": "alice", "channel": "$chat:1", "client": "c1", "exp": exp, "info": {"role": "mod"},
        "data": {"hello": 1}, "override": {"presence": {"value": True}},
    }))
    assert tok == SubscriptionToken(user="alice", channel="$chat:1", client="c1", exp=exp, expire_at=None,
                                    info=b'{"role":"mod"}', data=b'{"hello":1}',
                                    override={"presence": {"value": True}})
    assert tok.subscription_expires_at == exp


async def test_subscription_b64data_and_expire_at():
    expire_at = future(50)
    tok = await hs_verifier().verify_subscription(hs({
        "sub": "a", "channel": "x", "b64data": base64.b64encode(b"[1, 2]").decode(), "expire_at": expire_at,
        "exp": future(10)}))
    assert tok.data == b"[1,2]"
    assert tok.subscription_expires_at == expire_at
    assert tok.client == ""


@pytest.mark.parametrize("claims", [{"sub": "a"}, {"sub": "a", "channel": ""}, {"sub": "a", "channel": 5}])
async def test_subscription_token_requires_channel(claims):
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_subscription(hs(claims))


@pytest.mark.parametrize("claims", [
    {"sub": "a", "channel": "x", "client": 5},
    {"sub": "a", "channel": "x", "override": ["presence"]},
    {"sub": 1, "channel": "x"},
    {"sub": "a", "channel": "x", "expire_at": "later"},
    {"sub": "a", "channel": "x", "b64data": "%%%"},
])
async def test_wrong_subscription_claim_types(claims):
    with pytest.raises(TokenInvalid):
        await hs_verifier().verify_subscription(hs(claims))


async def test_expired_subscription_token():
    with pytest.raises(TokenExpired):
        await hs_verifier().verify_subscription(hs({"sub": "a", "channel": "x", "exp": int(time.time()) - 1}))


# -- make_hmac_token ---------------------------------------------------------------------


def test_make_hmac_token():
    before = int(time.time())
    tok = make_hmac_token(SECRET, "alice", ttl=60, info={"a": 1})
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["info"] == {"a": 1}
    assert before + 59 <= claims["exp"] <= int(time.time()) + 60
    assert "exp" not in jwt.decode(make_hmac_token(SECRET, "a", ttl=None), SECRET, algorithms=["HS256"])
    assert jwt.get_unverified_header(make_hmac_token(SECRET, "a", algorithm="HS512"))["alg"] == "HS512"
