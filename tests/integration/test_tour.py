"""README.md's "A five-minute tour", run as written, and the genconfig block of
docs/getting-started.md.

The commands come from the files themselves, so the test breaks when they drift: the server
command from the Makefile's ``run`` target, the token command, the centrifuge-python snippet
and the genconfig block from the tour. They run in a temporary directory holding a copy of the repository's
config.toml and a ``.venv`` link to the repository's, so ``.venv/bin/livegate ...`` works as
typed there. Only the ports differ from a fresh clone (``LIVEGATE_HTTP_SERVER_PORT`` /
``LIVEGATE_HTTP_API_PORT`` for the server, free ones, as 8000/8001 may be taken while the suite
runs); the token command gets no --config and no LIVEGATE_* variable (procs.clean_env): it must
find ./config.toml by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path

import jwt
from conftest import scaled
from procs import clean_env, free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
TOKEN_PLACEHOLDER = '"<token from livegate token>"'
CLIENT_URL = "ws://127.0.0.1:8000/connection/websocket"
FINAL_SLEEP = "await asyncio.sleep(60)"


def tour_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## A five-minute tour\n(.*?)^## ", text, re.S | re.M)
    assert match, "README.md has no section '## A five-minute tour'"
    return match.group(1)


def blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.S | re.M)


def first_block(section: str, lang: str) -> str:
    found = blocks(section, lang)
    assert found, f"the tour has no ```{lang} block"
    return found[0]


def commands(block: str) -> list[str]:
    """The shell lines of a block, their trailing comments cut off."""
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def serve_command() -> str:
    """The Makefile's ``run`` recipe line, with $(BIN) spelled out."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^run:.*\n\t(.*)$", makefile, re.M)
    assert match, "the Makefile has no run target"
    return match.group(1).replace("$(BIN)", ".venv/bin")


def token_command(section: str) -> str:
    lines = [line for line in commands(first_block(section, "sh")) if "livegate token" in line]
    assert len(lines) == 1, lines
    return lines[0]


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), scaled(10))
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_the_five_minute_tour_works_as_written(tmp_path):
    section = tour_section()
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")

    # `make run`
    serve = serve_command()
    assert serve == ".venv/bin/livegate serve --config config.toml"
    port, api_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = await asyncio.create_subprocess_exec(
            *shlex.split(serve), cwd=tmp_path, stdout=log, stderr=log,
            env=clean_env(LIVEGATE_HTTP_SERVER_PORT=str(port), LIVEGATE_HTTP_API_PORT=str(api_port)))
    try:
        try:
            await wait_http(api_port, "/ready", timeout=15)
        except TimeoutError:
            raise AssertionError(f"the server did not become ready:\n{log_path.read_text()}") from None
        # Its stderr is not a terminal: JSON log lines from the first on, the first saying which config.
        first = log_path.read_text().splitlines()[0]
        record = json.loads(first)
        assert (record["logger"], record["config_file"], record["config_found"]) == \
            ("livegate.config", "config.toml", "from --config"), first

        # `.venv/bin/livegate token --user alice`, in the directory of config.toml, nothing else said
        command = token_command(section)
        assert command == ".venv/bin/livegate token --user alice"
        made = await asyncio.create_subprocess_shell(command, cwd=tmp_path, env=clean_env(),
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(made.communicate(), scaled(15))
        assert made.returncode == 0, err.decode()
        assert "livegate: config: ./config.toml (found in the current directory)" in err.decode()
        token = out.decode().strip()
        assert jwt.decode(token, options={"verify_signature": False})["sub"] == "alice"

        # The centrifuge-python snippet, with that token and the server's port.
        snippet = first_block(section, "python")
        for needle in (TOKEN_PLACEHOLDER, CLIENT_URL, FINAL_SLEEP):
            assert needle in snippet, f"the tour's Python snippet no longer has {needle!r}"
        snippet = (snippet.replace(TOKEN_PLACEHOLDER, repr(token))
                   .replace(CLIENT_URL, CLIENT_URL.replace("8000", str(port)))
                   # It is stopped once it printed; the sleep only bounds it if it never does.
                   .replace(FINAL_SLEEP, f"await asyncio.sleep({scaled(20)})"))
        (tmp_path / "tour.py").write_text(snippet)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "tour.py", cwd=tmp_path, env=clean_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        printed: list[str] = []
        try:
            async with asyncio.timeout(scaled(15)):
                assert client.stdout is not None
                while line := (await client.stdout.readline()).decode():
                    printed.append(line)
                    if "hello" in line:
                        break
        except TimeoutError:
            pass
        finally:
            await stop(client)
        # Printer.on_publication: print(ctx.pub.offset, ctx.pub.data), the first publication of chat:lobby
        assert printed and printed[-1] == "1 {'text': 'hello'}\n", "".join(printed) + log_path.read_text()
    finally:
        await stop(server)
    assert server.returncode == 0, log_path.read_text()


async def test_the_tours_production_config_commands_work_as_written(tmp_path):
    """The tour's genconfig block, run where the demo config.toml is (as in a fresh clone): it
    writes its own file, which checks with the allowed_origins warning only."""
    (block,) = [b for b in blocks(tour_section(), "sh") if "livegate genconfig" in b]
    lines = commands(block)
    assert [line.split()[1] for line in lines] == ["genconfig", "check-config"], lines
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    results = []
    for command in lines:
        proc = await asyncio.create_subprocess_shell(command, cwd=tmp_path, env=clean_env(),
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), scaled(15))
        assert proc.returncode == 0, (command, err.decode())
        results.append((out.decode(), err.decode()))
    out, err = results[-1]
    assert out.endswith(": ok (1 warning)\n"), out
    assert [line.split(": ")[2] for line in err.splitlines() if line.startswith("livegate: warning: ")] == \
        ["client.allowed_origins"]
    assert (tmp_path / "config.toml").read_bytes() == (ROOT / "config.toml").read_bytes()  # the demo one is untouched


def getting_started_genconfig_block() -> list[str]:
    text = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    match = re.search(r"^## Your own config file\n(.*?)^## ", text, re.S | re.M)
    assert match, "docs/getting-started.md has no section '## Your own config file'"
    (block,) = [b for b in blocks(match.group(1), "sh") if "livegate genconfig" in b]
    return commands(block)


async def test_the_getting_started_genconfig_block_works_in_a_checkout(tmp_path):
    """docs/getting-started.md's genconfig commands, run as typed (``livegate`` on PATH, as in an
    activated virtualenv) beside the demo config.toml of a checkout: every one exits 0, the
    files they name are written with mode 0600, and the demo config is left alone."""
    lines = getting_started_genconfig_block()
    assert lines and all(line.startswith("livegate ") for line in lines), lines
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command in lines:
        proc = await asyncio.create_subprocess_shell(command, cwd=tmp_path, env=env,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), scaled(15))
        assert proc.returncode == 0, (command, err.decode())
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "config.toml")
    assert written, "the block writes no file"
    for name in written:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert (tmp_path / "config.toml").read_bytes() == (ROOT / "config.toml").read_bytes()
