"""The deployment files under deploy/, the Procfile and the systemd unit, tested without Docker.

No image can be built here, so the image's contents are tested instead: as deploy/Dockerfile does,
the wheels of this checkout and of its dependencies are built, deploy/install.sh (every install
step of the image) installs them offline (--wheels) into a fresh virtualenv, and that virtualenv
serves clients as the container would (ENTRYPOINT, $LIVEGATE_CONFIG, HEALTHCHECK). The compose
cluster's config runs on the real Redis and PostgreSQL, migrated by the migrate service's own
command; every metric the Grafana dashboard and the Prometheus alerts name must be in that
server's /metrics; promtool checks and unit-tests the alerts, which docs/operations.md must list
as they are; honcho runs the Procfile; systemd-analyze verifies the unit.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from conftest import DATABASE_URL, REDIS_URL, SECRET, RawPeer, scaled
from procs import free_port, wait_http

from livegate.config import Config, _env_path, load_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # noqa: E402 - scripts/ is not a package (tests/unit/test_docs.py imports it so too)

DEPLOY = ROOT / "deploy"
INSTALL_PREFIX = "/opt/livegate"  # install.sh's default prefix, the image's and the unit's
API_KEY = "deploy-test-key"


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without livegate config variables, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("LIVEGATE_") and _env_path(Config, k[9:]))}
    env.pop("LIVEGATE_CONFIG", None)
    return {**env, "PYTHONUNBUFFERED": "1", **overrides}


async def start(argv: list[str], env: dict[str, str], log: Path, wait_port: int, cwd: Path = ROOT,
                ) -> asyncio.subprocess.Process:
    """Start ``argv`` and wait until /health answers on ``wait_port``."""
    with open(log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=out, stderr=out)
    health, exited = asyncio.ensure_future(wait_http(wait_port, "/health", timeout=20)), asyncio.ensure_future(proc.wait())
    await asyncio.wait([health, exited], return_when=asyncio.FIRST_COMPLETED)
    if health.done() and health.exception() is None:
        exited.cancel()
        return proc
    health.cancel()
    if proc.returncode is None:
        proc.kill()
    await exited
    output = log.read_bytes().decode(errors="replace")  # noqa: ASYNC240 - the process is gone
    raise AssertionError(f"{argv} did not answer /health (exit code {proc.returncode}):\n{output}")


async def run(argv: list[str], env: dict[str, str], timeout: float = 60, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run ``argv`` to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def stop(proc: asyncio.subprocess.Process, timeout: float = 15) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), scaled(timeout))


# -- the image's contents: deploy/install.sh into a fresh virtualenv --------------------------------


# The first test that uses `installed` also waits for the install (about 15 s: pip wheel, a venv, pip).
INSTALLS = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv made as the Dockerfile makes it: its builder stage's `pip wheel` of the files it
    copies (livegate and its dependencies, from pip's cache where it can), then its runtime stage's
    `install.sh --wheels DIR DIR/livegate-*.whl`, offline; here at a relative --prefix."""
    tmp = tmp_path_factory.mktemp("image")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "livegate", src / "livegate", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                           "--no-build-isolation", "--wheel-dir", str(tmp / "wheels"), str(src)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp / "wheels").glob("livegate-*.whl")
    assert len(list((tmp / "wheels").glob("*.whl"))) > 10, "the dependencies' wheels are missing"
    # Nothing but that folder: no pip config (this machine's adds find-links and indexes), no index.
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    offline.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/")
    done = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--prefix", "opt-livegate", "--python", sys.executable,
                           "--wheels", "wheels", f"wheels/{wheel.name}"], cwd=tmp, env=offline, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert f"installed livegate {wheel.name.split('-')[1]}" in done.stderr
    prefix = tmp / "opt-livegate"
    # The healthcheck's interpreter is the virtualenv's, by an absolute path whatever --prefix was.
    assert (prefix / "bin" / "livegate-healthcheck").read_text().splitlines()[0] == f"#!{prefix}/bin/python"
    return prefix


@INSTALLS
def test_install_sh_installs_the_package_without_test_extras(installed):
    assert (installed / "bin" / "livegate").is_file() and os.access(installed / "bin" / "livegate-healthcheck", os.X_OK)
    out = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                         capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(out)}
    assert {"livegate", "websockets", "redis", "asyncpg", "aiohttp"} <= names
    assert not names & {"pytest", "ruff", "mypy", "coverage", "playwright", "honcho"}, names
    # Its default prefix is the image's and the unit's.
    assert f'prefix="${{LIVEGATE_PREFIX:-{INSTALL_PREFIX}}}"' in (DEPLOY / "install.sh").read_text()


def test_install_sh_refuses_bad_input(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(DEPLOY / "install.sh"), *args], capture_output=True, text=True, timeout=30)

    assert "SOURCE is missing" in run("--prefix", str(tmp_path / "p")).stderr
    done = run("--prefix", str(tmp_path / "p"), str(tmp_path / "nope.whl"))
    assert done.returncode == 1 and "no such wheel or source tree" in done.stderr
    done = run("--prefix", str(tmp_path / "p"), "--python", "no-such-python", str(ROOT))
    assert done.returncode == 1 and "no Python interpreter" in done.stderr
    assert not (tmp_path / "p").exists()
    # URLs and VCS requirements go to pip as they are, slashes and all: they get past the path check
    # and stop at the prefix (a path under a file), while a path that does not exist stops at it.
    (tmp_path / "file").write_text("")
    for requirement in ("https://example.invalid/livegate-0.1.0-py3-none-any.whl", "git+https://example.invalid/livegate",
                        "livegate @ https://example.invalid/livegate.whl", f"file://{tmp_path}/livegate.whl"):
        done = run("--prefix", str(tmp_path / "file" / "p"), requirement)
        assert done.returncode == 1 and "cannot write to" in done.stderr, (requirement, done.stderr)
    done = run("--prefix", str(tmp_path / "file" / "p"), "dist/livegate.whl")
    assert done.returncode == 1 and "no such wheel or source tree" in done.stderr


@INSTALLS
async def test_the_image_contents_serve_clients(installed, tmp_path):
    """As the container runs: ENTRYPOINT `livegate serve` with no arguments, the image's config
    (deploy/config.toml) from $LIVEGATE_CONFIG, LIVEGATE_* variables on top, the HEALTHCHECK."""
    port, api_port = free_port(), free_port()
    env = clean_env(PATH=f"{installed / 'bin'}:{os.environ['PATH']}", LIVEGATE_CONFIG=str(DEPLOY / "config.toml"),
                    LIVEGATE_HTTP_SERVER_ADDRESS="127.0.0.1", LIVEGATE_HTTP_API_ADDRESS="127.0.0.1",
                    LIVEGATE_HTTP_SERVER_PORT=str(port), LIVEGATE_HTTP_API_PORT=str(api_port),
                    LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY=SECRET)
    proc = await start(["livegate", "serve"], env, tmp_path / "serve.log", api_port, cwd=tmp_path)
    healthcheck = [str(installed / "bin" / "livegate-healthcheck")]
    try:
        assert (await run(healthcheck, env))[0] == 0
        # Environment proxies are not used (a proxy here would refuse the connection), and the
        # config is found as `livegate serve` finds it: the first argument before $LIVEGATE_CONFIG.
        assert (await run(healthcheck, {**env, "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                                        "no_proxy": "", "NO_PROXY": ""}))[0] == 0
        good, bad, here = tmp_path / "good.toml", tmp_path / "bad.toml", tmp_path / "here"
        good.write_text(f'[http_api]\naddress = "127.0.0.1"\nport = {api_port}\n')
        bad.write_text(f'[http_api]\naddress = "127.0.0.1"\nport = {free_port()}\n')
        bare = {k: v for k, v in env.items() if not k.startswith("LIVEGATE_")}
        assert (await run([*healthcheck, str(good)], {**bare, "LIVEGATE_CONFIG": str(bad)}))[0] == 0
        assert (await run(healthcheck, {**bare, "LIVEGATE_CONFIG": str(bad)}))[0] == 1
        here.mkdir()  # and ./config.toml when neither names a file
        for config, expected in ((good, 0), (bad, 1)):
            shutil.copy(config, here / "config.toml")
            assert (await run(healthcheck, bare, cwd=here))[0] == expected, config
        peer = await RawPeer.open(f"ws://127.0.0.1:{port}/connection/websocket")
        reply = await peer.connect("alice")
        assert reply["connect"]["client"], reply
        await peer.close()
    finally:
        code = await stop(proc)
    assert code == 0, (tmp_path / "serve.log").read_text()
    code, _, err = await run(healthcheck, env)
    assert code == 1 and "/health" in err, err


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_builds_with_install_sh_and_runs_unprivileged():
    steps = dockerfile_instructions()
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    assert len(stages) == 2 and steps[stages[0]][1].endswith("AS builder"), steps
    builder, runtime = steps[stages[0]:stages[1]], steps[stages[1]:]
    assert any(op == "RUN" and "pip wheel" in arg for op, arg in builder)
    runs = " ".join(arg for op, arg in runtime if op == "RUN")
    assert "install.sh" in runs and f"--prefix {INSTALL_PREFIX}" in runs
    assert not re.search(r"pip\s+install", runs), "every install step belongs in deploy/install.sh"
    users = [arg for op, arg in runtime if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(arg for op, arg in runtime if op == "ENV")
    assert "LIVEGATE_CONFIG=/etc/livegate/config.toml" in env and f"PATH={INSTALL_PREFIX}/bin:" in env
    assert ("COPY", "--chmod=0644 deploy/config.toml /etc/livegate/config.toml") in runtime
    [entrypoint] = [json.loads(arg) for op, arg in runtime if op == "ENTRYPOINT"]
    assert entrypoint == ["livegate", "serve"]
    [healthcheck] = [arg for op, arg in runtime if op == "HEALTHCHECK"]
    assert f'CMD ["{INSTALL_PREFIX}/bin/livegate-healthcheck"]' in healthcheck
    # What the COPYs take from the build context exists and is not left out by the ignore file.
    allowed = [line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for op, arg in steps:
        if op == "COPY" and "--from=" not in arg:
            for source in [w for w in arg.split() if not w.startswith("--")][:-1]:
                source = source.rstrip("/")
                assert (ROOT / source).exists(), source
                assert any(source == a or source.startswith(a + "/") for a in allowed), source


# -- systemd ------------------------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


@INSTALLS
def test_the_systemd_unit(installed, tmp_path):
    text = (DEPLOY / "livegate.service").read_text()
    unit = unit_entries(text)
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[:2] == [f"{INSTALL_PREFIX}/bin/livegate", "serve"], argv
    assert unit["User"][0] not in ("root", "0") and unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"] and int(unit["LimitNOFILE"][0]) >= 65536
    defaults = Config()
    assert float(unit["TimeoutStopSec"][0]) > defaults.http_server.shutdown_drain + defaults.websocket.write_timeout + 30
    # The flags of ExecStart are flags of this livegate's `serve`.
    help_text = subprocess.run([str(installed / "bin" / "livegate"), "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert all(flag in help_text for flag in argv[2:] if flag.startswith("--")), argv
    # systemd's own check, on a copy whose binary is the virtualenv install.sh made.
    systemd_analyze = os.environ.get("SYSTEMD_ANALYZE") or shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze is missing: run scripts/promtool.sh (make test does), or set SYSTEMD_ANALYZE"
    copy = tmp_path / "livegate.service"
    copy.write_text(text.replace(INSTALL_PREFIX, str(installed)))
    done = subprocess.run([systemd_analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "livegate.service" not in done.stderr, done.stderr


# -- the Procfile with honcho ----------------------------------------------------------------------


async def test_honcho_runs_the_procfile_and_stops_it_cleanly(tmp_path):
    port, api_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", LIVEGATE_HTTP_SERVER_PORT=str(port),
                    LIVEGATE_HTTP_API_PORT=str(api_port))
    log = tmp_path / "honcho.log"
    proc = await start([str(bin_dir / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT)],
                       env, log, api_port)
    await wait_http(port, "/health")
    code = await stop(proc)
    out = log.read_text(errors="replace")
    # honcho exits 143 after a SIGTERM; the Procfile's process itself must have exited 0.
    assert code == 143 and "web.1 stopped (rc=0)" in out and "SIGKILL" not in out, out
    assert '"msg":"stopped"' in out


# -- compose: the cluster's config on the real Redis and PostgreSQL, and /metrics -------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} (from ``environ``, else the default, else a
    placeholder) and $$ (a dollar sign)."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if (environ or {}).get(m.group(1)):
            return (environ or {})[m.group(1)]
        return m.group(3) if m.group(2) == "-" else f"<{m.group(1)}>"

    return re.sub(r"\$\$|\$\{(\w+)(?::([-?])([^}]*))?\}", one, value)


def instance_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(str(v), environ) for k, v in compose()["services"]["livegate-1"]["environment"].items()}


def test_the_compose_file():
    services = compose()["services"]
    assert {"redis", "postgres", "migrate", "livegate-1", "livegate-2", "proxy"} <= services.keys()
    migrate = services["migrate"]
    assert migrate["entrypoint"][:2] == ["sh", "-c"] and "livegate migrate" in migrate["entrypoint"][2]
    assert migrate["restart"] == "no"  # it retries by itself (its command runs in the cluster test)
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]
    # PostgreSQL is healthy once it answers over TCP: its image's first start initialises the
    # database with a server on the Unix socket only.
    pg_check = services["postgres"]["healthcheck"]["test"]
    assert pg_check[:2] == ["CMD", "pg_isready"] and pg_check[pg_check.index("-h") + 1] == "127.0.0.1"
    instances = [services["livegate-1"], services["livegate-2"]]
    # One service builds the image (migrate, which every instance waits for); the others run it.
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["migrate"], builders
    assert (DEPLOY / migrate["build"]["context"] / migrate["build"]["dockerfile"]).is_file()
    assert migrate["build"]["dockerfile"] == "deploy/Dockerfile"
    for svc in (*instances, migrate):
        assert svc["image"] == "livegate:local"
    for svc in instances:
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in svc, "only the proxy is published: the API port stays on the compose network"
    proxy = services["proxy"]
    assert proxy["image"].startswith("nginx:") and proxy["ports"]
    # nginx.conf's `server ... resolve` needs nginx 1.27.3 or newer.
    version = tuple(int(n) for n in re.match(r"nginx:(\d+(?:\.\d+)*)", proxy["image"]).group(1).split("."))
    assert version >= (1, 27, 3) or version[:2] >= (1, 28), proxy["image"]
    assert all(proxy["depends_on"][name]["condition"] == "service_healthy" for name in ("livegate-1", "livegate-2"))
    # Every file a service mounts is there.
    for svc in services.values():
        for volume in svc.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).is_file(), volume
    # The instances' environment names config keys, and their config file works with it.
    env = instance_env()
    assert all(svc["environment"] == instances[0]["environment"] for svc in (*instances, migrate))
    assert all(k == "LIVEGATE_CONFIG" or _env_path(Config, k[9:]) for k in env), env
    mounted = dict(v.split(":")[:2][::-1] for v in instances[0]["volumes"])
    config = load_config(DEPLOY / mounted[env["LIVEGATE_CONFIG"]][2:], environ=env)
    assert config.engine.type == "redis" and config.engine.redis.address == ["redis://redis:6379/0"]
    assert "@postgres:5432/" in config.persistence.dsn and config.http_api.key == "<LIVEGATE_API_KEY>"
    assert config.http_stream.enabled and config.sse.enabled and config.http_server.address == "0.0.0.0"
    # Browsers' Origin is the proxy's, on the port it is published on, whichever that is.
    assert proxy["ports"] == ["${LIVEGATE_PUBLIC_PORT:-8000}:80"]
    assert config.client.allowed_origins == ["http://localhost:8000", "http://127.0.0.1:8000"]
    moved = load_config(DEPLOY / "compose.toml", environ=instance_env({"LIVEGATE_PUBLIC_PORT": "9000"}))
    assert moved.client.allowed_origins == ["http://localhost:9000", "http://127.0.0.1:9000"]
    # The proxy sends clients to both instances' client port, finding their addresses again when
    # compose recreates them (compose's DNS, a zone for the upstream's state), on IPv4.
    nginx = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx.conf").read_text())
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\s+resolve\b", nginx, re.M)
    assert upstreams == [("livegate-1", str(config.http_server.port)), ("livegate-2", str(config.http_server.port))]
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", nginx, re.M)
    assert re.search(r"upstream livegate \{[^}]*\bzone livegate \d+k;", nginx)
    assert re.findall(r"^\s*listen\s+([^;]+);", nginx, re.M) == ["80"]


def nginx_locations() -> dict[str, str]:
    """The location blocks of deploy/nginx.conf (no nested blocks): pattern -> body."""
    text = re.sub(r"#[^\n]*", "", (DEPLOY / "nginx.conf").read_text())
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def location_for(path: str) -> str:
    for pattern, body in nginx_locations().items():
        if pattern.startswith("~ ") and re.search(pattern[2:], path) or pattern == f"= {path}":
            return body
    return nginx_locations()["/"]


def seconds(value: str) -> float:
    return float(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


def test_the_proxy_passes_what_livegate_needs():
    text = (DEPLOY / "nginx.conf").read_text()
    assert "proxy_http_version 1.1;" in text
    ping = Config().client.ping_interval
    ws = location_for("/connection/websocket")
    assert "proxy_set_header Upgrade $http_upgrade;" in ws and "proxy_set_header Connection $connection_upgrade;" in ws
    assert location_for("/connection/uni_websocket") == ws
    for path in ("/connection/http_stream", "/connection/sse", "/connection/uni_http_stream", "/connection/uni_sse"):
        body = location_for(path)
        assert "proxy_buffering off;" in body and "gzip off;" in body, path
        assert seconds(re.search(r"proxy_read_timeout (\w+);", body).group(1)) > 10 * ping, path
    assert seconds(re.search(r"proxy_read_timeout (\w+);", ws).group(1)) > 10 * ping
    assert "proxy_pass http://livegate;" in location_for("/emulation")


@pytest.fixture
async def cluster_storage(redis_client) -> AsyncIterator[tuple[str, str]]:
    """A Redis prefix and a PostgreSQL schema of our own, removed afterwards."""
    prefix, schema = f"lgdeploy-{uuid.uuid4().hex[:8]}", f"lgdeploy_{uuid.uuid4().hex[:8]}"
    yield prefix, schema
    keys = [k async for k in redis_client.scan_iter(match=f"*{prefix}*")]
    if keys:
        await redis_client.delete(*keys)
    conn = await asyncpg.connect(DATABASE_URL)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.close()


def promql_of(dashboard: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard (panel targets, template queries) and the rules."""
    exprs: list[str] = []

    def walk(node: Any) -> Iterator[Any]:
        yield node
        for child in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
            yield from walk(child)

    for node in walk(dashboard):
        if isinstance(node, dict):
            exprs += [node["expr"]] if "expr" in node else []
            exprs += [node["definition"]] if "definition" in node else []
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return exprs


def exposed(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """The sample names /metrics can have and the label names seen per sample name (the docs'
    parser of the exposition: scripts/gen_docs.py)."""
    labels: dict[str, set[str]] = {}
    for family, (kind, seen) in gen_docs.exposed_metrics(text).items():
        for suffix in ("_bucket", "_sum", "_count") if kind == "histogram" else ("",):
            labels[family + suffix] = set(seen)
    return set(labels), labels


async def test_the_cluster_config_serves_and_every_dashboard_and_alert_metric_exists(cluster_storage, tmp_path):
    """deploy/compose.toml as an instance of the compose cluster runs it (`livegate migrate`, then
    `livegate serve`, both from $LIVEGATE_CONFIG), on the real Redis and PostgreSQL; the metrics
    named by deploy/grafana/livegate.json and deploy/prometheus/alerts.yml are in its /metrics."""
    prefix, schema = cluster_storage
    port, api_port = free_port(), free_port()
    env = clean_env(LIVEGATE_CONFIG=str(DEPLOY / "compose.toml"), LIVEGATE_HTTP_SERVER_ADDRESS="127.0.0.1",
                    LIVEGATE_HTTP_API_ADDRESS="127.0.0.1", LIVEGATE_HTTP_SERVER_PORT=str(port),
                    LIVEGATE_HTTP_API_PORT=str(api_port), LIVEGATE_ENGINE_REDIS_ADDRESS=json.dumps([REDIS_URL]),
                    LIVEGATE_ENGINE_REDIS_PREFIX=prefix, LIVEGATE_PERSISTENCE_DSN=DATABASE_URL,
                    LIVEGATE_PERSISTENCE_SCHEMA=schema, LIVEGATE_CLIENT_TOKEN_HMAC_SECRET_KEY=SECRET,
                    LIVEGATE_HTTP_API_KEY=API_KEY)
    # The migrate service's command as compose runs it (`livegate` on the PATH).
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    command = [interpolate(arg) for arg in compose()["services"]["migrate"]["entrypoint"]]
    code, out, err = await run(command, env)
    assert code == 0 and "applied 001" in out, err
    proc = await start([sys.executable, "-m", "livegate.cli", "serve"], env, tmp_path / "serve.log", api_port)
    api = f"http://127.0.0.1:{api_port}"
    try:
        await wait_http(api_port, "/ready")
        # Traffic, so that the labelled series the expressions select on have samples; the token
        # from `livegate token` run as the README says (in an instance: its config and environment).
        code, token, err = await run([str(bin_dir / "livegate"), "token", "--user", "alice"], env)
        assert code == 0, err
        peer = await RawPeer.open(f"ws://127.0.0.1:{port}/connection/websocket")
        assert (await peer.connect("alice", token=token.strip()))["connect"]["client"]
        assert "subscribe" in await peer.call("subscribe", {"channel": "chat:deploy"})
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as http:
            published = await (await http.post(f"{api}/api/publish", json={"channel": "chat:deploy", "data": {"n": 1}})).json()
            assert published["result"]["offset"] == 1, published
            while "pub" not in (push := await peer.recv()).get("push", {}):
                pass
            assert push["push"]["pub"]["data"] == {"n": 1}
            failed = await (await http.post(f"{api}/api/publish", json={"channel": "nope:x", "data": {}})).json()
            assert "error" in failed
            await http.post(f"{api}/api/disconnect", json={"user": "alice"})
            assert (await peer.closed())[0] is not None
            async with http.get(f"{api}/metrics") as resp:
                metrics = await resp.text()
            # The publication reaches the archive in PostgreSQL (batched: within a flush interval).
            async with asyncio.timeout(scaled(5)):
                while (ready := await (await http.get(f"{api}/ready")).json())["archive"]["written"] < 1:
                    await asyncio.sleep(0.05)
        assert ready["postgres"] == "up", ready
    finally:
        assert await stop(proc) == 0
    names, labels = exposed(metrics)
    exprs = promql_of(json.loads((DEPLOY / "grafana" / "livegate.json").read_text()),
                      yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text()))
    assert len(exprs) > 30
    used = {name for expr in exprs for name in re.findall(r"\blivegate_[a-z_]+", expr)}
    assert used - names == set(), f"not in /metrics: {sorted(used - names)}"
    # What the brief of the dashboard asks for is on it.
    assert {"livegate_connections", "livegate_subscriptions", "livegate_publications_total", "livegate_pushes_total",
            "livegate_disconnects_total", "livegate_broker_publish_duration_seconds_bucket", "livegate_engine_up",
            "livegate_postgres_up", "livegate_archive_buffered", "livegate_archive_dropped_total",
            "livegate_outbox_executed_total", "livegate_api_requests_total"} <= used
    assert any('livegate_disconnects_total{code="3008"' in e for e in exprs)
    # Label matchers name labels the series have (job and instance are Prometheus').
    for expr in exprs:
        for name, matchers in re.findall(r"\b(livegate_[a-z_]+)\{([^}]*)\}", expr):
            wanted = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)) - {"job", "instance"}
            assert wanted <= labels.get(name, set()), (expr, name, wanted, labels.get(name))


# -- promtool --------------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_alerts():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/promtool.sh (make test does), or set PROMTOOL"
    prom = DEPLOY / "prometheus"
    for argv in (["check", "rules", "alerts.yml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *argv], cwd=prom, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    # Every alert has a unit test that makes it fire.
    rules = {r["alert"] for g in yaml.safe_load((prom / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((prom / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert rules == fired, rules ^ fired


def test_the_operations_page_lists_the_alerts_as_they_are():
    """docs/operations.md shows the rules of alerts.yml (names, expressions, for, labels; not the
    annotations), in the same order."""
    page = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"^### Recommended alerts\n.*?^```yaml\n(.*?)^```", page, re.M | re.S)
    assert block, "docs/operations.md has no yaml block under ### Recommended alerts"

    def rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v.strip() if k == "expr" else v for k, v in rule.items() if k != "annotations"}
                for group in doc["groups"] for rule in group["rules"]]

    assert rules(yaml.safe_load(block.group(1))) == rules(yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text()))
