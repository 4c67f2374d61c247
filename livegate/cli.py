"""livegate serve | token | check-config

Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage (no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from typing import Any

from livegate.config import Config, load_config
from livegate.errors import ConfigError

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
    print(f"livegate: {message}", file=sys.stderr)
    return code


def _load(path: str | None) -> Config:
    return load_config(path)


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


def _run(coro_factory: Any) -> None:
    if os.environ.get("LIVEGATE_LOOP", "uvloop") == "uvloop":
        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coro_factory())
            return
        except ImportError:
            pass
    asyncio.run(coro_factory())


def cmd_serve(args: argparse.Namespace) -> int:
    from livegate.server.lifecycle import Server
    from livegate.server.logs import setup_logging

    config = _load(args.config)
    app = _import_app(args.app) if args.app else None
    setup_logging(config.log.level, config.log.format)
    server = Server(config, app)  # builds the node: key and engine errors surface here
    try:
        _run(server.serve_forever)
    except OSError as exc:
        return _fail(f"cannot listen on {config.http_server.address}:{config.http_server.port}: {exc.strerror}", 1)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from livegate.auth import make_hmac_token

    config = _load(args.config)
    secret = config.client.token.hmac_secret_key
    if not secret:
        raise ConfigError("client.token.hmac_secret_key", "is empty: set it to sign tokens")
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


def cmd_check_config(args: argparse.Namespace) -> int:
    from livegate.server.lifecycle import build_node

    config = _load(args.file)
    build_node(config)  # keys parse, engine known
    print(f"{args.file}: ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="livegate", description="Real-time WebSocket gateway (Centrifuge protocol v2).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="serve clients")
    p.add_argument("--config", default=os.environ.get("LIVEGATE_CONFIG"), help="TOML config file")
    p.add_argument("--app", help="MODULE:ATTR of a livegate.App with RPC methods and hooks")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="print a connection (or, with --channel, subscription) token")
    p.add_argument("--user", required=True)
    p.add_argument("--ttl", type=_duration, default=3600.0, help="e.g. 1h, 30m; 0 for no exp")
    p.add_argument("--config", default=os.environ.get("LIVEGATE_CONFIG"))
    p.add_argument("--info", help="JSON for the info claim")
    p.add_argument("--channel", help="make a subscription token for this channel")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(f"config error: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
