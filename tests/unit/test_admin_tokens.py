"""livegate.server.admin without a server: session tokens (signature, tampering, expiry),
the secret they are signed with, the failed-login limiter, and the [admin] config section."""

from __future__ import annotations

import base64

import pytest

from livegate.config import parse_config
from livegate.errors import ConfigError
from livegate.server.admin import (
    ADMIN_TOKEN_TTL,
    AdminPage,
    LoginLimiter,
    admin_page,
    derive_secret,
    sign_token,
    verify_token,
)

SECRET = b"unit-test-admin-secret"
NOW = 1_700_000_000.0


def config(**admin):  # noqa: ANN003, ANN201
    return parse_config({"admin": admin, "http_api": {"key": "the-api-key"}}, environ={})


# -- tokens ----------------------------------------------------------------------------------


def test_a_signed_token_verifies_until_it_expires():
    token = sign_token(SECRET, int(NOW) + 3600)
    assert verify_token(SECRET, token, NOW)
    assert verify_token(SECRET, token, NOW + 3599.9)
    assert not verify_token(SECRET, token, NOW + 3600)
    assert not verify_token(SECRET, token, NOW + 10 * 3600)


def test_a_token_is_its_expiry_and_a_signature():
    token = sign_token(SECRET, 1234567890)
    expires, signature = token.split(".")
    assert expires == "1234567890"
    assert len(base64.urlsafe_b64decode(signature + "=")) == 32  # HMAC-SHA256


def test_another_secret_does_not_verify():
    token = sign_token(SECRET, int(NOW) + 60)
    assert not verify_token(b"another-secret", token, NOW)


@pytest.mark.parametrize("tamper", [
    lambda t: str(int(t.split(".")[0]) + 3600) + "." + t.split(".")[1],   # a later expiry, same signature
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),                      # one character of the signature
    lambda t: t.split(".")[0] + ".",                                          # no signature
    lambda t: t.split(".")[0],                                                # no dot at all
    lambda t: "." + t.split(".")[1],                                          # no expiry
    lambda t: " " + t,                                                        # extra bytes
    lambda t: t + "=",
    lambda t: "+" + t,                                                        # int() would take "+123"
    lambda t: "0" + t,                                                        # the signed text differs
    lambda t: t.replace(".", ".é"),                                           # not ASCII
    lambda t: "١٢٣." + t.split(".")[1],                                       # digits, not ASCII ones
    lambda t: "",
])
def test_a_tampered_token_is_refused(tamper):
    token = sign_token(SECRET, int(NOW) + 3600)
    forged = tamper(token)
    assert forged != token
    assert not verify_token(SECRET, forged, NOW)


def test_a_token_valid_for_longer_than_the_ttl_is_refused():
    """No token signed here lives longer than ADMIN_TOKEN_TTL: one that would is refused even
    with a right signature (a minute of slack for the clock)."""
    assert verify_token(SECRET, sign_token(SECRET, int(NOW) + ADMIN_TOKEN_TTL + 30), NOW)
    assert not verify_token(SECRET, sign_token(SECRET, int(NOW) + ADMIN_TOKEN_TTL + 3600), NOW)
    assert not verify_token(SECRET, sign_token(SECRET, 10**11), NOW)


def test_the_page_issues_tokens_it_accepts_and_no_others():
    now = [NOW]
    page = AdminPage(config(enabled=True, password="pw", secret="s"), clock=lambda: now[0])
    token, expires_at = page.issue()
    assert expires_at == int(NOW) + ADMIN_TOKEN_TTL
    assert page.authorizes(f"token {token}")
    assert page.authorizes(f"Token   {token}  ")
    assert not page.authorizes(token)                    # no scheme
    assert not page.authorizes(f"apikey {token}")
    assert not page.authorizes(f"bearer {token}")
    assert not page.authorizes("token the-api-key")       # the key is not a token
    assert not page.authorizes(None) and not page.authorizes("")
    now[0] += ADMIN_TOKEN_TTL
    assert not page.authorizes(f"token {token}")


# -- the secret --------------------------------------------------------------------------------


def test_the_secret_is_admin_secret_when_set():
    assert derive_secret(config(enabled=True, password="pw", secret="my-secret")) == b"my-secret"


def test_a_derived_secret_is_stable_and_changes_with_the_password_or_key():
    first = derive_secret(config(enabled=True, password="pw"))
    assert first == derive_secret(config(enabled=True, password="pw"))  # every worker, every restart
    assert len(first) == 32
    assert first not in (b"pw", b"the-api-key")
    assert first != derive_secret(config(enabled=True, password="pw2"))
    other_key = parse_config({"admin": {"enabled": True, "password": "pw"}, "http_api": {"key": "k2"}}, environ={})
    assert first != derive_secret(other_key)


def test_tokens_of_another_password_are_refused():
    token, _ = AdminPage(config(enabled=True, password="old")).issue()
    assert not AdminPage(config(enabled=True, password="new")).authorizes(f"token {token}")
    assert AdminPage(config(enabled=True, password="old")).authorizes(f"token {token}")


def test_the_page_is_off_unless_enabled_with_something_to_log_in_with(caplog):
    assert admin_page(config()) is None
    assert admin_page(config(password="pw")) is None
    assert admin_page(config(enabled=True)) is not None  # the API key logs in
    no_secret = parse_config({"admin": {"enabled": True}}, environ={})
    with caplog.at_level("WARNING", logger="livegate.admin"):
        assert admin_page(no_secret) is None
    assert any("admin page disabled" in r.getMessage() and "admin.password" in r.getMessage() for r in caplog.records)


# -- failed logins -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_in_ten_seconds_block_the_address_until_the_oldest_is_ten_seconds_old():
    clock = Clock()
    limiter = LoginLimiter(5, 10.0, clock=clock)
    for _ in range(5):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
        clock.now += 1
    assert limiter.retry_after("10.0.0.1") == pytest.approx(5.0)  # first failure at 1000, now 1005
    assert limiter.retry_after("10.0.0.2") == 0                   # another address is not blocked
    clock.now = 1010.0
    assert limiter.retry_after("10.0.0.1") == 0                   # one failure left the window
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(1.0)


def test_failures_spread_out_never_block():
    clock = Clock()
    limiter = LoginLimiter(5, 10.0, clock=clock)
    for _ in range(50):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
        clock.now += 2.5
    assert len(limiter) == 1


def test_a_success_forgets_the_failures():
    limiter = LoginLimiter(5, 10.0, clock=Clock())
    for _ in range(4):
        limiter.failed("10.0.0.1")
    limiter.succeeded("10.0.0.1")
    for _ in range(4):
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 0


def test_ipv6_addresses_count_by_64_and_mapped_ipv4_as_ipv4():
    limiter = LoginLimiter(2, 10.0, clock=Clock())
    limiter.failed("2001:db8:1:2::1")
    limiter.failed("2001:db8:1:2:ffff::9")
    assert limiter.retry_after("2001:db8:1:2::77") > 0
    assert limiter.retry_after("2001:db8:1:3::1") == 0
    limiter.failed("::ffff:192.0.2.7")
    limiter.failed("192.0.2.7")
    assert limiter.retry_after("192.0.2.7") > 0


def test_memory_is_bounded_by_max_tracked():
    clock = Clock()
    limiter = LoginLimiter(5, 10.0, clock=clock, max_tracked=100)
    for i in range(1000):
        limiter.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    clock.now += 11
    limiter.failed("10.9.9.9")  # the stale ones are dropped first
    assert len(limiter) == 1


def test_a_missing_remote_address_is_counted_too():
    limiter = LoginLimiter(1, 10.0, clock=Clock())
    limiter.failed(None)
    assert limiter.retry_after(None) > 0


# -- config ---------------------------------------------------------------------------------------


def test_admin_defaults_follow_centrifugo():
    cfg = parse_config({}, environ={})
    assert cfg.admin.enabled is False
    assert cfg.admin.password == "" and cfg.admin.secret == ""
    assert cfg.admin.handler_prefix == "/admin"


def test_admin_secrets_are_not_in_the_repr():
    cfg = config(enabled=True, password="pw-in-repr?", secret="secret-in-repr?")
    assert "pw-in-repr?" not in repr(cfg) and "secret-in-repr?" not in repr(cfg)


@pytest.mark.parametrize(("raw", "key"), [
    ({"admin": {"enabled": "yes please"}}, "admin.enabled"),
    ({"admin": {"password": 5}}, "admin.password"),
    ({"admin": {"handler_prefix": "admin"}}, "admin.handler_prefix"),
    ({"admin": {"handler_prefix": "/"}}, "admin.handler_prefix"),
    ({"admin": {"handler_prefix": "/a/../b"}}, "admin.handler_prefix"),
    ({"admin": {"handler_prefix": "/a b"}}, "admin.handler_prefix"),
    ({"admin": {"enabled": True, "handler_prefix": "/api"}}, "admin.handler_prefix"),
    ({"admin": {"enabled": True, "handler_prefix": "/metrics/"}}, "admin.handler_prefix"),
    ({"admin": {"insecure": True}}, "admin.insecure"),
])
def test_admin_config_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert info.value.key == key and key in str(info.value)


def test_admin_from_the_environment():
    cfg = parse_config({}, environ={"LIVEGATE_ADMIN_ENABLED": "true", "LIVEGATE_ADMIN_PASSWORD": "from-env",
                                    "LIVEGATE_ADMIN_HANDLER_PREFIX": "/ops/admin"})
    assert cfg.admin.enabled and cfg.admin.password == "from-env" and cfg.admin.handler_prefix == "/ops/admin"


def test_a_disabled_page_may_share_a_prefix():
    assert parse_config({"admin": {"handler_prefix": "/api"}}, environ={}).admin.handler_prefix == "/api"

