"""JWT verification for connection and subscription tokens (Centrifugo claim semantics).

The algorithm family is pinned to the keys that are configured: an HMAC secret admits
HS256/384/512 only, an RSA public key RS256/384/512, an ECDSA key ES256/384/512, a JWKS
endpoint the asymmetric families. ``alg: none`` and HS/RS confusion therefore fail.
``exp`` and ``nbf`` are checked when present; ``aud`` and ``iss`` when configured (``audience``
/ ``issuer`` exactly, ``audience_regex`` / ``issuer_regex`` as a full match), after the signature.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson

from livegate.config import TokenConfig
from livegate.errors import ConfigError, TokenExpired, TokenInvalid, TokenUnverifiable

log = logging.getLogger("livegate.auth")

__all__ = ["ConnectToken", "SubscriptionToken", "TokenVerifier", "make_hmac_token"]

#: An unknown kid refreshes the JWKS key set at most this often (seconds).
JWKS_REFRESH_INTERVAL = 10.0

_HS = ("HS256", "HS384", "HS512")
_HS_DIGEST = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
_RS = ("RS256", "RS384", "RS512")
_ES = ("ES256", "ES384", "ES512")
_JWKS = _RS + _ES + ("EdDSA", "PS256", "PS384", "PS512")


@dataclass(frozen=True, slots=True)
class ConnectToken:
    user: str
    exp: int | None = None
    expire_at: int | None = None  # None: not in the token; 0: the connection never expires
    info: bytes | None = None
    channels: tuple[str, ...] = ()
    subs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def connection_expires_at(self) -> int | None:
        """When the connection itself expires (unix s), or None for never."""
        if self.expire_at is not None:
            return self.expire_at or None
        return self.exp


@dataclass(frozen=True, slots=True)
class SubscriptionToken:
    user: str
    channel: str
    client: str = ""
    exp: int | None = None
    expire_at: int | None = None
    info: bytes | None = None
    data: bytes | None = None
    override: dict[str, Any] = field(default_factory=dict)

    @property
    def subscription_expires_at(self) -> int | None:
        if self.expire_at is not None:
            return self.expire_at or None
        return self.exp


def _json_claim(claims: dict[str, Any], name: str, b64name: str) -> bytes | None:
    if b64name in claims and claims[b64name]:
        try:
            raw = base64.b64decode(claims[b64name], validate=True)
            orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise TokenInvalid(f"{b64name} must be base64 of JSON for JSON clients") from None
        return orjson.dumps(orjson.loads(raw))
    if name in claims and claims[name] is not None:
        return orjson.dumps(claims[name])
    return None


#: Times in claims are unix seconds that fit a signed 64-bit integer (as Centrifugo reads them).
_MAX_TIME = 1 << 63


def _int_claim(claims: dict[str, Any], name: str, *, numeric_date: bool = False) -> int | None:
    """An integer claim; ``numeric_date`` also admits fractions (RFC 7519 NumericDate, e.g. exp)."""
    value = claims.get(name)
    if value is None:
        return None
    allowed = (int, float) if numeric_date else (int,)
    if type(value) not in allowed or value < 0 or value != value or value >= _MAX_TIME:
        raise TokenInvalid(f"{name} must be a non-negative {'number' if numeric_date else 'integer'} "
                           f"below {_MAX_TIME}")
    return int(value)


def _key(section: str, config_key: str, prepare: Any, material: str) -> Any:
    try:
        return prepare(material.encode())
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise ConfigError(f"{section}.{config_key}", f"cannot load the key: {exc}") from None


def _regex(section: str, config_key: str, pattern: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{section}.{config_key}", f"invalid regular expression: {exc}") from None


def _claim_matches(regex: re.Pattern[str], value: str) -> bool:
    """``audience_regex`` / ``issuer_regex``: the whole claim must match (``fullmatch``)."""
    return regex.fullmatch(value) is not None


class TokenVerifier:
    """Verifies tokens against the configured keys. Keys are parsed once, here. ``section`` is
    the config section ``cfg`` came from (``client.token`` or ``client.subscription_token``):
    a ConfigError names its key there."""

    def __init__(self, cfg: TokenConfig, *, section: str = "client.token") -> None:
        self._cfg = cfg
        if cfg.audience and cfg.audience_regex:
            raise ConfigError(f"{section}.audience_regex", "cannot be used together with audience")
        if cfg.issuer and cfg.issuer_regex:
            raise ConfigError(f"{section}.issuer_regex", "cannot be used together with issuer")
        self._audience_re = _regex(section, "audience_regex", cfg.audience_regex)
        self._issuer_re = _regex(section, "issuer_regex", cfg.issuer_regex)
        self._keys: dict[str, Any] = {}
        self._hmac_secret = cfg.hmac_secret_key.encode() if cfg.hmac_secret_key else None
        if cfg.hmac_secret_key:
            for alg in _HS:
                self._keys[alg] = cfg.hmac_secret_key
        if cfg.rsa_public_key:
            rsa_key = _key(section, "rsa_public_key", jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).prepare_key,
                           cfg.rsa_public_key)
            for alg in _RS:
                self._keys[alg] = rsa_key
        if cfg.ecdsa_public_key:
            ec_key = _key(section, "ecdsa_public_key", jwt.algorithms.ECAlgorithm(jwt.algorithms.ECAlgorithm.SHA256).prepare_key,
                          cfg.ecdsa_public_key)
            for alg in _ES:
                self._keys[alg] = ec_key
        self._jwks_refreshed = float("-inf")
        self._jwks = jwt.PyJWKClient(cfg.jwks_public_endpoint, cache_keys=True, lifespan=300, timeout=5) if cfg.jwks_public_endpoint else None

    def _decode_hmac(self, secret: bytes, header_b64: str, payload_b64: str, signature_b64: str,
                     alg: str) -> dict[str, Any]:
        """HS256/384/512 without PyJWT's per-call key preparation: this is on every connect.
        Same checks as PyJWT: signature (constant time), exp, nbf, aud and iss when configured."""
        try:
            signature = _b64url(signature_b64)
            claims = orjson.loads(_b64url(payload_b64))
        except (binascii.Error, ValueError):
            raise TokenInvalid("malformed token") from None
        expected = hmac.new(secret, f"{header_b64}.{payload_b64}".encode(), _HS_DIGEST[alg]).digest()
        if not hmac.compare_digest(expected, signature):
            raise TokenInvalid("signature verification failed")
        if not isinstance(claims, dict):
            raise TokenInvalid("claims must be a JSON object")
        now = time.time()
        for name in ("exp", "nbf"):
            value = claims.get(name)
            if value is not None and (type(value) not in (int, float) or value != value):
                raise TokenInvalid(f"{name} must be a number")
        if claims.get("exp") is not None and claims["exp"] <= now:
            raise TokenExpired("token expired")
        if claims.get("nbf") is not None and claims["nbf"] > now:
            raise TokenExpired("token not yet valid")
        cfg = self._cfg
        if cfg.audience:
            aud = claims.get("aud")
            if not (aud == cfg.audience or (isinstance(aud, list) and cfg.audience in aud)):
                raise TokenInvalid("invalid audience")
        if cfg.issuer and claims.get("iss") != cfg.issuer:
            raise TokenInvalid("invalid issuer")
        return self._match_claims(claims)

    def _match_claims(self, claims: dict[str, Any]) -> dict[str, Any]:
        """``audience_regex`` and ``issuer_regex``, on claims whose signature was verified (so a
        forged token never reaches a pattern). A missing ``iss`` is the empty string and a
        missing ``aud`` has no element to match, as in Centrifugo."""
        if self._audience_re is not None:
            aud = claims.get("aud")
            values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not all(isinstance(v, str) for v in values):
                raise TokenInvalid("aud must be a string or a list of strings")
            if not any(_claim_matches(self._audience_re, v) for v in values):
                raise TokenInvalid("invalid audience")
        if self._issuer_re is not None:
            iss = claims.get("iss")
            if iss is None:
                iss = ""
            if not isinstance(iss, str):
                raise TokenInvalid("iss must be a string")
            if not _claim_matches(self._issuer_re, iss):
                raise TokenInvalid("invalid issuer")
        return claims

    async def _jwks_key(self, kid: Any) -> Any:
        """The JWKS key for ``kid``. An unknown kid refreshes the key set at most once per
        ``JWKS_REFRESH_INTERVAL``: tokens with made-up kids cannot hammer the endpoint."""
        assert self._jwks is not None
        if not isinstance(kid, str) or not kid:
            raise TokenInvalid("a token verified with JWKS needs a kid header")
        try:
            keys = await asyncio.to_thread(self._jwks.get_signing_keys)  # cached for its lifespan
            found = next((k for k in keys if k.key_id == kid), None)
            if found is None and time.monotonic() - self._jwks_refreshed >= JWKS_REFRESH_INTERVAL:
                self._jwks_refreshed = time.monotonic()
                keys = await asyncio.to_thread(self._jwks.get_signing_keys, True)
                found = next((k for k in keys if k.key_id == kid), None)
        except jwt.PyJWKClientConnectionError as exc:
            log.warning("JWKS endpoint unreachable: %s", exc, extra={"endpoint": self._cfg.jwks_public_endpoint})
            raise TokenUnverifiable() from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"no JWKS key for token: {exc}") from None
        if found is None:
            raise TokenInvalid(f"no JWKS key with kid {kid!r}")
        return found.key

    async def _decode(self, token: str) -> dict[str, Any]:
        secret = self._hmac_secret
        if secret is not None and token.count(".") == 2:
            header_b64, payload_b64, signature_b64 = token.split(".")
            try:
                header = orjson.loads(_b64url(header_b64))
            except (binascii.Error, ValueError):
                raise TokenInvalid("malformed token") from None
            alg = header.get("alg") if isinstance(header, dict) else None
            if alg in _HS_DIGEST:
                if "crit" in header or header.get("b64") is False:
                    raise TokenInvalid("unsupported critical header extension")
                return self._decode_hmac(secret, header_b64, payload_b64, signature_b64, alg)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenInvalid(f"algorithm {alg!r} not allowed by the configured keys")
        key = self._keys.get(alg)
        if key is None and self._jwks is not None and alg in _JWKS:
            key = await self._jwks_key(header.get("kid"))
        if key is None:
            raise TokenInvalid(f"algorithm {alg!r} not allowed by the configured keys")
        cfg = self._cfg
        # iat is not checked (as Centrifugo): an issuer whose clock runs ahead must not make
        # every token look "not yet valid".
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg],
                options={"verify_aud": bool(cfg.audience), "verify_iss": bool(cfg.issuer), "verify_iat": False,
                         "require": []},
                audience=cfg.audience or None, issuer=cfg.issuer or None,
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise TokenExpired("token expired") from None
        except jwt.PyJWTError as exc:
            raise TokenInvalid(str(exc) or type(exc).__name__) from None
        if not isinstance(claims, dict):
            raise TokenInvalid("claims must be a JSON object")
        return self._match_claims(claims)

    def _user(self, claims: dict[str, Any]) -> str:
        user = claims.get(self._cfg.user_id_claim, "")
        if user is None:
            user = ""
        if not isinstance(user, str):
            raise TokenInvalid(f"{self._cfg.user_id_claim} must be a string")
        return user

    async def verify_connect(self, token: str) -> ConnectToken:
        """Raises TokenExpired (error 109) or TokenInvalid (close 3500)."""
        claims = await self._decode(token)
        if "channel" in claims:
            raise TokenInvalid("a connection token must not have a channel claim")
        channels = claims.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise TokenInvalid("channels must be a list of strings")
        subs = claims.get("subs") or {}
        if not isinstance(subs, dict) or not all(isinstance(v, dict) for v in subs.values()):
            raise TokenInvalid("subs must map channels to objects")
        return ConnectToken(
            user=self._user(claims),
            exp=_int_claim(claims, "exp", numeric_date=True),
            expire_at=_int_claim(claims, "expire_at"),
            info=_json_claim(claims, "info", "b64info"),
            channels=tuple(channels),
            subs=subs,
        )

    async def verify_subscription(self, token: str) -> SubscriptionToken:
        claims = await self._decode(token)
        channel = claims.get("channel")
        if not isinstance(channel, str) or not channel:
            raise TokenInvalid("a subscription token needs a channel claim")
        client = claims.get("client", "") or ""
        if not isinstance(client, str):
            raise TokenInvalid("client must be a string")
        override = claims.get("override") or {}
        if not isinstance(override, dict):
            raise TokenInvalid("override must be an object")
        return SubscriptionToken(
            user=self._user(claims),
            channel=channel,
            client=client,
            exp=_int_claim(claims, "exp", numeric_date=True),
            expire_at=_int_claim(claims, "expire_at"),
            info=_json_claim(claims, "info", "b64info"),
            data=_json_claim(claims, "data", "b64data"),
            override=override,
        )


def make_hmac_token(secret: str, user: str, *, ttl: float | None = 3600, algorithm: str = "HS256", **claims: Any) -> str:
    """A signed token for tests, the CLI and the README tour."""
    payload: dict[str, Any] = {"sub": user, **claims}
    if ttl is not None and "exp" not in claims:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode(payload, secret, algorithm=algorithm)
