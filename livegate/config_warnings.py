"""Settings that are valid but risky: what ``livegate check-config`` warns about.

``warnings(config)`` is pure: it looks at a parsed Config and returns ``(key, why)`` pairs, in
a fixed order, keys spelled as in config errors (``channel.namespaces[0].allow_publish_for_client``).
A warning never stops anything; the server runs with these settings as configured.
"""

from __future__ import annotations

import fnmatch
import re

from livegate.config import Channel, ChannelOptions, Config

__all__ = ["warnings", "DEMO_SECRETS", "FOREIGN_ORIGINS", "MIN_HMAC_BYTES", "MIN_PASSWORD_CHARS", "foreign_origin",
           "origin_matches"]

#: The secrets of the repository's config.toml and the README's examples: public, so no secret.
DEMO_SECRETS = frozenset({
    "demo-secret-change-me-0123456789abcdef",
    "demo-api-key-change-me",
    "demo-admin-password-change-me",
    "a-long-random-password",
})
MIN_HMAC_BYTES = 32      # HS256: a key shorter than the hash output is weaker than the signature
MIN_PASSWORD_CHARS = 16  # the API key and the admin password


def _is_demo(value: str) -> bool:
    lowered = value.lower()
    return value in DEMO_SECRETS or "change-me" in lowered or "changeme" in lowered


def _secrets(config: Config) -> list[tuple[str, str, str]]:
    """(key, value, what knowing it gives) of every secret that is set."""
    out = [
        ("client.token.hmac_secret_key", config.client.token.hmac_secret_key,
         "anyone who knows it can sign connection tokens for any user"),
        ("client.subscription_token.hmac_secret_key", config.client.subscription_token.hmac_secret_key,
         "anyone who knows it can sign subscription tokens for any channel"),
        ("http_api.key", config.http_api.key, "anyone who knows it can call every server API method"),
        ("admin.password", config.admin.password, "anyone who knows it can log in to the admin page"),
        ("admin.secret", config.admin.secret, "anyone who knows it can make admin session tokens"),
    ]
    return [(key, value, gives) for key, value, gives in out if value]


#: Origins of pages that are no one's site (``.invalid`` is reserved, RFC 2606), and ``null``,
#: the origin a page of any site can give itself (a sandboxed iframe): an allowed_origins
#: pattern that admits one of them admits the pages of every web site.
FOREIGN_ORIGINS = ("https://evil.invalid", "http://evil.invalid:1234", "null")


def origin_matches(origin: str, pattern: str) -> bool:
    """Whether one allowed_origins ``pattern`` admits a browser's ``origin``: the rule of
    livegate.server.websocket.origin_allowed (tests/unit/test_cli.py checks that they agree),
    restated here because the config layer may not import the server."""
    return pattern == "*" or fnmatch.fnmatchcase(origin.lower(), pattern.lower())


_PATTERN = re.compile(r"(?:(?P<scheme>[^:/]+)://)?(?P<host>[^:/\[\]]+?)(?::(?P<port>[0-9*?]+))?")
_WILD = "*?"


def _probes(pattern: str) -> list[str]:
    """Origins of no one's site built for one pattern of the form ``[scheme://]host[:port]``
    (none for other forms):

    - a host ending in a wildcard (``https://app.example.com*``, meant for "any port") admits
      a domain that only begins with that host: ``https://app.example.com.evil.invalid``;
    - a host beginning with a wildcard glued to a name (``https://*example.com``) admits
      ``https://evilexample.com``; before a top-level domain alone (``https://*.com``), every
      site of it. (``*.example.com`` is left alone: what it admits is example.com's.)
    """
    match = _PATTERN.fullmatch(pattern.lower())
    if match is None:
        return []
    scheme = (match["scheme"] or "https").replace("*", "x").replace("?", "x")
    port = f":{match['port'].replace('*', '1').replace('?', '1')}" if match["port"] else ""
    host = match["host"]
    out = []
    if host[-1] in _WILD:
        stem = host.replace("*", "").replace("?", "x").rstrip(".")
        if stem:
            out.append(f"{scheme}://{stem}.evil.invalid{port}")
    tail = host.lstrip(_WILD)
    if tail != host and tail and not any(c in tail for c in _WILD):
        glued = not tail.startswith(".")
        if tail.lstrip(".").count(".") <= (1 if glued else 0):
            out.append(f"{scheme}://evil{tail}{port}")
    return out


def foreign_origin(pattern: str) -> str | None:
    """An origin of no one's site that ``pattern`` admits, or None when none of those tried
    is: FOREIGN_ORIGINS, then the probes made for the pattern's form (``_probes``)."""
    for origin in (*FOREIGN_ORIGINS, *_probes(pattern)):
        if origin_matches(origin, pattern):
            return origin
    return None


def _channel_examples(channel: Channel, namespace: str) -> tuple[str | None, str | None]:
    """A private and a user-limited channel name of a namespace ("" for without_namespace),
    or None where the channel section makes no such channels."""
    local = f"{namespace}{channel.namespace_boundary}room" if namespace else "room"
    private = f"{channel.private_prefix}{local}" if channel.private_prefix else None
    user = f"{local}{channel.user_boundary}alice" if channel.user_boundary else None
    return private, user


def _permission_warnings(prefix: str, what: str, opts: ChannelOptions, channel: Channel,
                         namespace: str) -> list[tuple[str, str]]:
    private, user = _channel_examples(channel, namespace)
    out: list[tuple[str, str]] = []
    # Subscribe: a private channel always needs a subscription token (handlers/subscribe.py),
    # but "#" limits subscribers only with allow_user_limited_channels.
    if opts.allow_subscribe_for_client and user and not opts.allow_user_limited_channels:
        who = "any client, anonymous ones included," if opts.allow_subscribe_for_anonymous else "any user"
        out.append((f"{prefix}.allow_subscribe_for_client",
                    f"{who} may subscribe to every channel of {what}, and allow_user_limited_channels is off, so "
                    f"{user!r} is open to all, not only to alice (set allow_user_limited_channels = true)"))
    # Publish, presence and history: allow_<action>_for_client is checked alone, with no look
    # at the private prefix or at "#" (session/access.py).
    touched = " and ".join(f"{kind} ({name!r})" for kind, name in
                           (("private channels", private), ("user channels", user)) if name)
    if not touched:
        return out
    for action, verb in (("publish", "publish into"), ("presence", "read the presence of"),
                         ("history", "read the history of")):
        if getattr(opts, f"allow_{action}_for_client"):
            anonymous = getattr(opts, f"allow_{action}_for_anonymous")
            who = "any client, anonymous ones included," if anonymous else "any user"
            out.append((f"{prefix}.allow_{action}_for_client",
                        f"{who} may {verb} every channel of {what}, {touched} too, without subscribing "
                        f"(allow_{action}_for_subscriber grants it to subscribers only)"))
    return out


def warnings(config: Config) -> list[tuple[str, str]]:
    """Risky settings of ``config``, as ``(key, why)``; empty when there is nothing to say."""
    out: list[tuple[str, str]] = []
    for key, value, gives in _secrets(config):
        if _is_demo(value):
            out.append((key, f"is a demo value, published with livegate: {gives} "
                             "(`livegate genconfig` writes a config with fresh secrets)"))
    for key, section in (("client.token", config.client.token),
                         ("client.subscription_token", config.client.subscription_token)):
        size = len(section.hmac_secret_key.encode())
        in_use = key == "client.token" or config.client.subscription_token.enabled
        if in_use and 0 < size < MIN_HMAC_BYTES:
            out.append((f"{key}.hmac_secret_key", f"is {size} bytes: use at least {MIN_HMAC_BYTES} random bytes "
                                                  "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"))

    if config.http_server.demo:
        out.append(("http_server.demo", "the demo page signs a connection token for anyone who asks "
                                        "(POST /demo/token): never turn it on where others can reach the port"))
    if config.one_port:
        out.append(("http_api.port", "is http_server.port: the server API, /metrics (no key needed) and the admin "
                                     "page answer on the client port; keep /metrics and the admin page from the "
                                     "internet at your proxy (e.g. route only /connection/ there)"))
    client = config.client
    if client.insecure:
        out.append(("client.insecure", "every client may connect without a token, publish into and read the "
                                       "presence and history of every channel, and subscribe to every channel "
                                       "but private ones (and user channels where allow_user_limited_channels "
                                       "is on)"))
    if not client.allowed_origins:
        out.append(("client.allowed_origins", "is empty: browsers may connect only from pages served by livegate's "
                                              "own host and port (same origin); list the origins of your site, "
                                              "e.g. [\"https://app.example.com\"] (clients that are not browsers "
                                              "send no Origin and are not checked)"))
    else:
        loose = [(pattern, origin) for pattern in client.allowed_origins
                 if (origin := foreign_origin(pattern)) is not None]
        if loose:
            admits = "; ".join(f"{pattern!r} admits {origin!r}" for pattern, origin in loose)
            out.append(("client.allowed_origins", f"{admits}: pages of other web sites may connect (with the "
                                                  "tokens they get hold of); list your sites' origins exactly, "
                                                  "with wildcards only where the rest pins the site down "
                                                  "(\"https://*.example.com\")"))

    api = config.http_api
    if api.insecure:
        out.append(("http_api.insecure", "the server API answers every request without a key: whoever reaches "
                                         f"{api.address}:{api.port} may publish, disconnect users and read presence"))
    elif not api.key:
        out.append(("http_api.key", "is empty: the server API refuses every request"))
    elif len(api.key) < MIN_PASSWORD_CHARS and not _is_demo(api.key):
        out.append(("http_api.key", f"is {len(api.key)} characters: use a long random key"))

    admin = config.admin
    if admin.enabled:
        if not admin.password and not api.key:
            out.append(("admin.enabled", "the admin page stays off: neither admin.password nor http_api.key is set"))
        elif admin.password and len(admin.password) < MIN_PASSWORD_CHARS and not _is_demo(admin.password):
            out.append(("admin.password", f"is {len(admin.password)} characters and logs in to every API method: "
                                          "use a long random password"))

    channel = config.channel
    out += _permission_warnings("channel.without_namespace", "channels without a namespace",
                                channel.without_namespace, channel, "")
    for i, ns in enumerate(channel.namespaces):
        out += _permission_warnings(f"channel.namespaces[{i}]", f"namespace {ns.name!r}", ns, channel, ns.name)
    return out
