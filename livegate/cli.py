"""livegate serve | token | migrate | check-config | genconfig

Every command but genconfig reads its config from ``--config FILE``, else ``$LIVEGATE_CONFIG``,
else ``./config.toml`` when the current directory has one, else the built-in defaults, and says
which it used: ``serve`` in its log (a record of the logger ``livegate.config``, JSON when the
log is), the other commands in a line on stderr. ``LIVEGATE_<PATH>`` variables apply on top in
every case.

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from livegate import genconfig
from livegate.config import Config, load_config
from livegate.errors import BrokerUnavailable, ConfigError, LivegateError

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
    print(f"livegate: {message}", file=sys.stderr)
    return code


#: The file looked for in the current directory when neither --config nor $LIVEGATE_CONFIG names one.
DEFAULT_CONFIG = "config.toml"


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Which config file a command reads (None: the built-in defaults), and why."""

    path: str | None
    origin: str

    def describe(self) -> str:
        return f"{self.path} ({self.origin})" if self.path is not None else f"none ({self.origin})"


def discover_config(explicit: str | None, environ: Mapping[str, str] | None = None,
                    cwd: str | None = None, given: str = "from --config") -> ConfigSource:
    """``--config FILE`` (``given`` says how it came), else ``$LIVEGATE_CONFIG``, else
    ``./config.toml`` when it exists, else none. A file named by the first two must exist
    (loading it says so); the third is looked for only."""
    environ = os.environ if environ is None else environ
    if explicit:
        return ConfigSource(explicit, given)
    if environ.get("LIVEGATE_CONFIG"):
        return ConfigSource(environ["LIVEGATE_CONFIG"], "from $LIVEGATE_CONFIG")
    if os.path.isfile(os.path.join(cwd or os.getcwd(), DEFAULT_CONFIG)):
        return ConfigSource(f"./{DEFAULT_CONFIG}", "found in the current directory")
    return ConfigSource(None, f"built-in defaults; no --config, no $LIVEGATE_CONFIG, no ./{DEFAULT_CONFIG}; "
                              "`livegate genconfig` writes one")


def _announce(source: ConfigSource) -> None:
    """The config line on stderr, for a command that does not log (and for serve, whose log is
    not set up yet, when its config cannot be loaded)."""
    if not os.environ.get("LIVEGATE_WORKER"):  # a supervisor's worker: the supervisor said it already
        print(f"livegate: config: {source.describe()}", file=sys.stderr)


def _load(explicit: str | None, given: str = "from --config", *, announce: bool = True) -> tuple[Config, ConfigSource]:
    """The config and where it came from. With ``announce`` off (serve), the stderr line is
    printed only when loading fails: otherwise the caller logs the source (``log_config_source``)."""
    source = discover_config(explicit, given=given)
    if announce:
        _announce(source)
        return load_config(source.path), source
    try:
        return load_config(source.path), source
    except ConfigError:
        _announce(source)
        raise


def log_config_source(source: ConfigSource) -> None:
    """Say in the log which config file serve read: ``config_file`` (null: the built-in
    defaults) and ``config_found`` (how it was found), as fields of a JSON log line."""
    if os.environ.get("LIVEGATE_WORKER"):  # the supervisor logged it
        return
    import logging

    logging.getLogger("livegate.config").info(
        "config: %s", source.describe(), extra={"config_file": source.path, "config_found": source.origin})


def _duration(text: str) -> float:
    from livegate.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _import_app(spec: str) -> Any:
    from livegate.app import App

    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ConfigError("--app", "expected MODULE:ATTR, e.g. myapp:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError("--app", f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise ConfigError("--app", f"{spec!r} is not a livegate.App")
    return app


def _run(coro_factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    if os.environ.get("LIVEGATE_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coro_factory())
            return
        except ImportError:
            pass
    asyncio.run(coro_factory())


def worker_argv(config_path: str | None, app: str | None) -> list[str]:
    """The command line of a supervisor's worker: the config file the supervisor found, made
    absolute, so that a worker reads the same file whatever told the supervisor about it."""
    argv = [sys.executable, "-m", "livegate.cli", "serve"]
    if config_path is not None:
        argv += ["--config", os.path.abspath(config_path)]
    if app:
        argv += ["--app", app]
    return argv


def _supervise(config: Config, argv: list[str], source: ConfigSource) -> int:
    """``http_server.workers = N``: N full instances sharing the ports (SO_REUSEPORT).

    Signals are forwarded to the workers; a worker that dies unexpectedly is restarted
    (at most once per second); the supervisor exits 0 when every worker exited after a
    signal."""
    import shutil
    import signal
    import subprocess
    import tempfile
    import time

    from livegate.server.logs import setup_logging

    setup_logging(config.log.level, config.log.format)
    log_config_source(source)
    log = __import__("logging").getLogger("livegate.supervisor")
    metrics_dir = tempfile.mkdtemp(prefix="livegate-metrics-")

    def spawn(i: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LIVEGATE_WORKER": str(i), "LIVEGATE_WORKER_METRICS_DIR": metrics_dir}
        return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl

    workers = {i: spawn(i) for i in range(config.http_server.workers)}
    stopping = False

    # A worker still running this long after the signal is killed (its own shutdown is bounded
    # well below this: drain window, then a bounded stop).
    kill_after = config.http_server.shutdown_drain + config.websocket.write_timeout + 30.0
    deadline = float("inf")

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping, deadline
        stopping = True
        deadline = min(deadline, time.monotonic() + kill_after)
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("supervising workers", extra={"workers": len(workers), "pids": [p.pid for p in workers.values()]})
    last_restart = 0.0
    try:
        while True:
            alive = False
            for i, proc in list(workers.items()):
                code = proc.poll()
                if code is None:
                    alive = True
                elif not stopping and time.monotonic() - last_restart > 1.0:
                    log.warning("worker exited; restarting", extra={"worker": i, "code": code})
                    last_restart = time.monotonic()
                    workers[i] = spawn(i)
                    alive = True
                elif not stopping:
                    alive = True
            if not alive:
                break
            if time.monotonic() > deadline:
                for i, proc in workers.items():
                    if proc.poll() is None:
                        log.error("worker did not stop; killing it", extra={"worker": i, "pid": proc.pid})
                        proc.kill()
                deadline = float("inf")
            time.sleep(0.1)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if all(p.returncode == 0 for p in workers.values()) else 1


def _die_with_parent() -> None:
    """In a worker, before exec: the kernel sends it SIGTERM when the supervisor dies (Linux's
    PR_SET_PDEATHSIG), so a killed supervisor never leaves workers holding the port."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's forwarding and kill deadline still apply


def cmd_serve(args: argparse.Namespace) -> int:
    from livegate.server.lifecycle import Server
    from livegate.server.logs import setup_logging

    # No line on stderr: the log (JSON where stderr is not a terminal) says which config it is.
    config, source = _load(args.config, announce=False)
    app = _import_app(args.app) if args.app else None
    if config.http_server.workers > 1 and not os.environ.get("LIVEGATE_WORKER"):
        return _supervise(config, worker_argv(source.path, args.app), source)
    setup_logging(config.log.level, config.log.format)
    log_config_source(source)
    server = Server(config, app)  # builds the node: key and engine errors surface here
    try:
        _run(server.serve_forever)
    except OSError as exc:
        return _fail(f"cannot listen on {config.http_server.address}:{config.http_server.port} "
                     f"or {config.http_api.address}:{config.http_api.port}: {exc.strerror}", 1)
    except BrokerUnavailable as exc:
        return _fail(f"engine unavailable: {exc}", 1)
    except LivegateError as exc:  # PostgreSQL unreachable, or its schema older than this livegate needs
        return _fail(str(exc), 1)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from livegate.auth import make_hmac_token

    config, source = _load(args.config)
    # A subscription token is signed with client.subscription_token's key when that section is on.
    section, tokens = ("client.token", config.client.token)
    if args.channel and config.client.subscription_token.enabled:
        section, tokens = ("client.subscription_token", config.client.subscription_token)
    secret = tokens.hmac_secret_key
    if not secret:
        hint = "" if source.path else " (`livegate genconfig` writes a config.toml with fresh secrets)"
        raise ConfigError(f"{section}.hmac_secret_key", f"is empty: set it to sign tokens{hint}")
    claims: dict[str, Any] = {}
    if args.info:
        try:
            claims["info"] = json.loads(args.info)
        except json.JSONDecodeError as exc:
            return _fail(f"--info: not JSON: {exc}")
    if args.channel:
        claims["channel"] = args.channel
    print(make_hmac_token(secret, args.user, ttl=args.ttl or None, **claims))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from livegate.persistence import migrate as m

    config, _ = _load(args.config)
    dsn, schema = config.persistence.dsn, config.persistence.schema_name
    if not dsn:
        raise ConfigError("persistence.dsn", "is empty: set it (or LIVEGATE_PERSISTENCE_DSN) to migrate")
    try:
        if args.status:
            rows = asyncio.run(m.status(dsn, schema, timeout=config.persistence.connect_timeout))
            for migration, applied_at in rows:
                state = f"applied {applied_at:%Y-%m-%d %H:%M:%S}" if applied_at else "pending"
                print(f"{migration.version:03d} {migration.name:<30} {state}")
            return 0
        applied = asyncio.run(m.migrate(dsn, schema, timeout=config.persistence.connect_timeout))
    except (OSError, TimeoutError) as exc:
        return _fail(f"cannot reach PostgreSQL: {exc}", 1)
    except Exception as exc:  # asyncpg errors: bad credentials, missing database, ...
        return _fail(f"migration failed: {type(exc).__name__}: {exc}", 1)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:03d} {migration.name}")
    else:
        print(f"schema {schema!r} is up to date (version {m.LATEST})")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from livegate.config_warnings import warnings
    from livegate.node import build_node

    if args.file and args.config and args.file != args.config:
        return _fail(f"check-config: two files given ({args.file} and --config {args.config}): give one")
    if args.file:
        config, source = _load(args.file, "given on the command line")
    else:
        config, source = _load(args.config)
    build_node(config)  # keys parse, engine known
    found = warnings(config)
    for key, why in found:
        print(f"livegate: warning: {key}: {why}", file=sys.stderr)
    name = source.path if source.path is not None else "built-in defaults"
    print(f"{name}: ok" + (f" ({len(found)} warning{'s' if len(found) != 1 else ''})" if found else ""))
    return 0


def cmd_genconfig(args: argparse.Namespace) -> int:
    text = genconfig.render(args.engine)
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        genconfig.write(args.file, text, force=args.force)
    except FileExistsError:
        return _fail(f"genconfig: {args.file} exists; not overwriting it (--force replaces it)")
    except OSError as exc:
        return _fail(f"genconfig: cannot write {args.file}: {exc.strerror}", 1)
    print(f"livegate: wrote {args.file} (mode 0600) with fresh secrets; fill in client.allowed_origins, "
          f"then run `livegate check-config {args.file}`", file=sys.stderr)
    return 0


_CONFIG_HELP = ("TOML config file (default: $LIVEGATE_CONFIG, else ./config.toml if present, "
                "else built-in defaults)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livegate", description="Real-time WebSocket gateway (Centrifuge protocol v2).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve clients")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--app", help="MODULE:ATTR of a livegate.App with RPC methods and hooks")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="print a connection (or, with --channel, subscription) token")
    p.add_argument("--user", required=True)
    p.add_argument("--ttl", type=_duration, default=3600.0, help="e.g. 1h, 30m; 0 for no exp")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--info", help="JSON for the info claim")
    p.add_argument("--channel", help="make a subscription token for this channel")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("migrate", help="apply pending PostgreSQL migrations (persistence.dsn)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.add_argument("--status", action="store_true", help="list applied and pending migrations")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check-config", help="validate a config file; warn about risky settings")
    p.add_argument("file", nargs="?", help="the file (default: as --config)")
    p.add_argument("--config", help=_CONFIG_HELP)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("genconfig", help="write a production-leaning config with fresh random secrets")
    p.add_argument("file", nargs="?", default=DEFAULT_CONFIG, help="where to write it (default: config.toml; - for stdout)")
    p.add_argument("--engine", choices=genconfig.ENGINES, default="redis",
                   help="redis (default: several instances share channels) or memory (one instance)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_genconfig)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
