"""The Python examples of docs/ marked ``<!-- test: run -->`` run, as scripts, against real
``livegate serve`` processes started from the repository's config.toml (what `make run` and the
docs describe), so that they cannot rot; and /metrics of such a server shows no metric family
that docs/operations.md does not list (docs/writing-docs.md describes the conventions).

Each script runs with the virtualenv's bin/ first on PATH (``livegate token``), LIVEGATE_CONFIG
naming config.toml, and ``127.0.0.1:8000`` / ``127.0.0.1:8001`` replaced by the server's
ports; it passes when it exits with 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import scaled
from procs import clean_env, free_port
from websockets.sync.client import connect as ws_connect

from livegate.auth import make_hmac_token

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.toml"
sys.path.insert(0, str(ROOT / "scripts"))

import gen_docs  # noqa: E402

EXAMPLES = gen_docs.examples()
RUNS = [e for e in EXAMPLES if e.kind == "run"]


def _environ(**extra: str) -> dict[str, str]:
    """procs.clean_env (the examples describe config.toml as it is, whatever LIVEGATE_*
    variables this run has), with LIVEGATE_CONFIG naming it, the virtualenv first on PATH, and
    ``extra``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return clean_env(**{"PATH": path, "LIVEGATE_CONFIG": str(CONFIG), **extra})


class DocsServer:
    """``livegate serve --config config.toml [--app ...]`` on free ports, run from ``workdir``."""

    def __init__(self, workdir: Path, app: str) -> None:
        self.port, self.api_port = free_port(), free_port()
        self.log_path = workdir / f"server-{app.replace(':', '-') or 'plain'}.log"
        argv = [sys.executable, "-m", "livegate.cli", "serve", "--config", str(CONFIG)]
        if app:
            argv += ["--app", app]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=log, env=_environ(
                LIVEGATE_HTTP_SERVER_PORT=str(self.port), LIVEGATE_HTTP_API_PORT=str(self.api_port),
                LIVEGATE_LOG_FORMAT="text"))
        deadline = time.monotonic() + scaled(20)
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the docs server did not become ready:\n{self.log()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rewrite(self, code: str) -> str:
        return code.replace("127.0.0.1:8000", f"127.0.0.1:{self.port}").replace(
            "127.0.0.1:8001", f"127.0.0.1:{self.api_port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(15))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples run; the ``file`` blocks (the App modules) are written here."""
    path = tmp_path_factory.mktemp("docs-examples")
    for example in EXAMPLES:
        if example.kind == "file":
            target = path / example.name
            assert not target.exists(), f"{example.id}: a second example file named {example.name}"
            target.write_text(example.code)
    return path


@pytest.fixture(scope="module")
def docs_server(workdir: Path) -> Iterator[Callable[[str], DocsServer]]:
    """A server per ``--app`` (none, or an example's), started when first needed."""
    servers: dict[str, DocsServer] = {}

    def get(app: str) -> DocsServer:
        if app not in servers:
            servers[app] = DocsServer(workdir, app)
        return servers[app]

    yield get
    for server in servers.values():
        server.stop()


@pytest.mark.parametrize("example", RUNS, ids=[e.id for e in RUNS])
def test_docs_example_runs(example: gen_docs.Example, workdir: Path, docs_server: Callable[[str], DocsServer]) -> None:
    server = docs_server(example.app)
    script = workdir / f"example_{example.page.replace('/', '_').removesuffix('.md')}_{example.line}.py"
    script.write_text(server.rewrite(example.code))
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=workdir, env=_environ(), capture_output=True,
                              text=True, timeout=scaled(30))
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"docs/{example.id}: the example did not finish within {scaled(30):g}s:\n"
                             f"{exc.stdout}\n{exc.stderr}\n--- server log ---\n{server.log()}") from None
    assert done.returncode == 0, (f"docs/{example.id}: the example failed (exit {done.returncode}):\n"
                                  f"{done.stdout}\n{done.stderr}\n--- server log ---\n{server.log()}")


def test_the_examples_include_what_the_docs_promise() -> None:
    assert any("centrifuge" in e.code and ".publish(" in e.code for e in RUNS), "a centrifuge-python example"
    assert any("/api" in e.code for e in RUNS), "an HTTP API example"
    assert any(e.app for e in RUNS), "an embedding-API example"
    assert any("jwt.encode" in e.code for e in RUNS), "a token example"


def test_every_metric_family_of_a_real_server_is_documented(docs_server: Callable[[str], DocsServer]) -> None:
    """/metrics of a real server, with a WebSocket client connected and an API publish made (so
    that labelled families have samples): every family is in the table of docs/operations.md,
    with its type and its labels."""
    server = docs_server("")
    secret = tomllib.loads(CONFIG.read_text())["client"]["token"]["hmac_secret_key"]
    api_key = tomllib.loads(CONFIG.read_text())["http_api"]["key"]
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.api_port}/api/publish", method="POST",
        data=json.dumps({"channel": "chat:metrics", "data": {"x": 1}}).encode(),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=scaled(5)) as response:
        assert "result" in json.load(response)
    with ws_connect(f"ws://127.0.0.1:{server.port}/connection/websocket", open_timeout=scaled(5)) as ws:
        ws.send(json.dumps({"id": 1, "connect": {"token": make_hmac_token(secret, "metrics-user")}}))
        assert "connect" in json.loads(ws.recv(timeout=scaled(5)))
        with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/metrics", timeout=scaled(5)) as response:
            text = response.read().decode()
    exposed = gen_docs.exposed_metrics(text)
    documented = gen_docs.documented_metrics()
    undocumented = sorted(set(exposed) - set(documented))
    assert not undocumented, f"/metrics families missing from docs/operations.md: {undocumented}"
    for name, (kind, labels) in exposed.items():
        doc_kind, doc_labels = documented[name]
        assert kind == doc_kind, f"{name}: exposed as a {kind}, documented as a {doc_kind}"
        assert labels <= set(doc_labels), f"{name}: labels {sorted(labels)}, documented {list(doc_labels)}"
    # The traffic above gave these families samples, so their labels were compared.
    for name in ("livegate_transport_connections", "livegate_commands_total", "livegate_api_requests_total",
                 "livegate_command_duration_seconds", "livegate_broker_publish_duration_seconds"):
        assert exposed[name][1] == set(documented[name][1]), f"{name}: labels {exposed[name][1]}"
