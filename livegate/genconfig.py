"""``livegate genconfig``: a production-leaning config.toml with fresh random secrets.

Unlike the repository's config.toml (a demo: published secrets, the demo page on), the file
written here has its own secrets, no demo settings, and a comment on every section. One
setting is left for the operator: ``client.allowed_origins`` (empty, which ``check-config``
warns about until it is filled in).
"""

from __future__ import annotations

import os
import secrets
import stat
from typing import Literal

__all__ = ["ENGINES", "render", "write", "SECRET_BYTES"]

ENGINES = ("redis", "memory")
SECRET_BYTES = 32  # each secret is secrets.token_urlsafe(32): 43 characters, 256 random bits

_HEAD = """\
# livegate configuration, written by `livegate genconfig`.
#
# The secrets below were generated for this file alone: keep it private (mode 0600) and out of
# version control, or move them to the environment (LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY,
# LIVEGATE_HTTP_API_KEY, LIVEGATE_ADMIN_PASSWORD; any key works as LIVEGATE_<SECTION>_<KEY>).
# Check it with `livegate check-config`; README.md ("Configuration") describes the keys.
"""

_SERVER = """
# Where clients connect: ws://<address>:<port>/connection/websocket. Bound to the loopback
# interface: put a TLS-terminating reverse proxy in front, or set address = "0.0.0.0" to take
# connections from other hosts directly.
[http_server]
address = "127.0.0.1"
port = 8000
"""

_CLIENT = """
# Which web pages may open connections: the origins of your site, shell-style patterns allowed,
# e.g. ["https://app.example.com", "https://*.example.com"]. Left empty, browsers are accepted
# only from pages that livegate itself serves (same host and port), which is rarely what you
# want: FILL THIS IN. Clients that are not browsers send no Origin and are not checked.
[client]
allowed_origins = []

# Connection tokens (JWT, HS256) are signed with this key by your backend (or `livegate token`).
# To verify RS256/ES256 tokens instead, set rsa_public_key, ecdsa_public_key or
# jwks_public_endpoint and remove the key.
[client.token]
hmac_secret_key = "{hmac}"
"""

_API = """
# The server API (publish, disconnect, presence, ...): POST /api/<method> with the header
# X-API-Key: <key>. Keep this port private: it is for your backend, never for browsers.
[http_api]
address = "127.0.0.1"
port = 8001
key = "{api_key}"
"""

_ADMIN = """
# The admin web page on the API port (http://127.0.0.1:8001/admin), off until enabled. Log in
# with this password (or the API key). admin.secret, the key of its session tokens, is left
# empty: it is derived from the password and the API key, so a new password ends every session.
[admin]
enabled = false
password = "{admin_password}"
"""

_REDIS = """
# Redis carries publications, history and presence between livegate instances, so several
# instances (or http_server.workers > 1) can serve the same channels. A single instance
# without Redis: type = "memory" (history and presence then live in this process only).
[engine]
type = "redis"

# The Redis server; several entries shard channels by a consistent hash of the name.
[engine.redis]
address = ["redis://127.0.0.1:6379/0"]
prefix = "livegate"
"""

_MEMORY = """
# Publications, history and presence live in this process: one instance only, and history is
# lost on restart. For several instances (or http_server.workers > 1) use type = "redis" with
# [engine.redis] address = ["redis://host:6379/0"].
[engine]
type = "memory"
"""

_LOG = """
# Logs go to stderr: JSON lines when stderr is not a terminal ("auto"), else text.
[log]
level = "info"
format = "auto"
"""

_CHANNELS = """
# Channels. With no namespace configured, clients may subscribe only with a subscription token,
# with channels granted in their connection token, or through your app's on_subscribe hook;
# they may not publish. A namespace gives channels named "<name>:..." their options, e.g.:
#
# [[channel.namespaces]]
# name = "chat"
# history_size = 100
# history_ttl = "10m"
# force_recovery = true
# allow_subscribe_for_client = true      # any user with a connection token may subscribe...
# allow_user_limited_channels = true     # ...but "chat:room#alice" only alice
# allow_publish_for_subscriber = true    # subscribers may publish
"""


def render(engine: Literal["redis", "memory"] = "redis") -> str:
    """The text of a new config file, with fresh secrets."""
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    values = {
        "hmac": secrets.token_urlsafe(SECRET_BYTES),
        "api_key": secrets.token_urlsafe(SECRET_BYTES),
        "admin_password": secrets.token_urlsafe(SECRET_BYTES),
    }
    parts = [_HEAD, _SERVER, _CLIENT.format(**values), _API.format(**values), _ADMIN.format(**values),
             _REDIS if engine == "redis" else _MEMORY, _CHANNELS, _LOG]
    return "".join(parts)


def write(path: str, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600).

    Without ``force``, raises FileExistsError when ``path`` exists (checked atomically: O_EXCL).
    With it, the text goes to a new temporary file (0600, O_EXCL) in the same directory, which
    is flushed to disk and then renamed over ``path``: a failure part-way leaves the old file as
    it was, and a symlink at ``path`` is replaced by the new file, its target left untouched. A
    regular file replaced keeps its owner and group where the caller may set them (``sudo
    livegate genconfig --force`` on a service's file leaves it readable by the service).
    """
    if not force:
        _write_new(path, text)
        return
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        old = None
    owner = (old.st_uid, old.st_gid) if old is not None and stat.S_ISREG(old.st_mode) else None
    directory = os.path.dirname(path) or "."
    base = os.path.basename(path)
    for _ in range(100):
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            _write_new(temp, text, owner)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(path)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    _fsync_directory(directory)


def _write_new(path: str, text: str, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` (it must not exist, not even as a dangling symlink) with mode 0600 (and
    ``owner``'s uid and gid, or its gid alone, where permitted), write ``text`` and fsync it; on
    a failure part-way the file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added: 0600 exactly
        if owner is not None:
            _chown(fd, owner)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if fd >= 0:
            os.close(fd)
        os.unlink(path)
        raise


def _chown(fd: int, owner: tuple[int, int]) -> None:
    for uid, gid in (owner, (-1, owner[1])):
        try:
            os.fchown(fd, uid, gid)
            return
        except PermissionError:
            continue


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (where directories can be opened: not on every platform)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
